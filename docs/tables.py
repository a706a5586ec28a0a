"""The benchmark figures that README.md and the documentation quote, regenerated from their JSON records.

Convention (checked by ``tests/test_docs.py``):

* Every table of benchmark figures in ``README.md`` or ``docs/**/*.md`` sits between two markers::

      <!-- table: NAME -->
      | ... the table, as ``TABLES[NAME]()`` writes it ... |
      <!-- /table -->

  and ``TABLES[NAME]`` builds it from the JSON under ``bench/results/`` (and the paper's published figures,
  which live in ``gcl_zoo.model_card.PAPER_TOP1`` and ``PAPER_BASELINES`` below).
* Every benchmark figure quoted in running text is listed in ``QUOTES``: the file, and the phrase as it must appear
  there, formatted from the JSON.

When a record changes, ``python docs/tables.py --write`` rewrites every marked table in place; a phrase in
``QUOTES`` that no longer matches is reported, to be reworded by hand. ``python docs/tables.py`` (no flag) only
checks and exits 1 on any difference.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WEIGHTS = ROOT / "gcl_zoo" / "weights"

# top-1 (%) of the CE baselines published in the paper (CE + mixup, CE + mixup + cRT), ResNet-32, per ratio
PAPER_BASELINES = {
    "cifar10_lt": {200: (65.84, 73.06), 100: (72.96, 79.15), 50: (79.48, 84.21)},
    "cifar100_lt": {200: (35.84, 41.73), 100: (40.01, 45.12), 50: (45.16, 50.86)},
}
DATASET_NAMES = {"cifar10_lt": "CIFAR-10-LT", "cifar100_lt": "CIFAR-100-LT"}

MARKER = re.compile(r"<!-- table: (?P<name>[a-z0-9_]+) -->\n(?P<body>.*?)<!-- /table -->", re.S)


def load(rel: str):
    return json.loads((RESULTS / rel).read_text())


def jsonl(rel: str) -> list[dict]:
    return [json.loads(line) for line in (RESULTS / rel).read_text().splitlines() if line.strip()]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def f(x, digits: int = 2, none: str = "n/a") -> str:
    """A figure as the docs print it: fixed digits, thousands separated."""
    return none if x is None else f"{x:,.{digits}f}"


def pct(x: float, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f}%"


# ----------------------------------------------------------------------------------------------------- the zoo
def shipped() -> list[str]:
    """Shipped checkpoints (weights in the package, record under bench/results), CIFAR-10 first, ratio 200 to 50."""
    names = [p.name[:-len(".json")] for p in WEIGHTS.glob("*.json") if not p.name.endswith(".int8.json")]
    key = lambda n: (list(DATASET_NAMES).index(dataset_ratio(n)[0]), -dataset_ratio(n)[1])  # noqa: E731
    return sorted((n for n in names if (RESULTS / n / "eval.json").exists()), key=key)


def dataset_ratio(name: str) -> tuple[str, int]:
    base, tag = name.split(".")
    return base.split("_", 2)[2], int(tag[2:])


def train_minutes(rel_dir: str) -> float:
    run = load(f"{rel_dir}/run.json")
    parse = lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%S%z")  # noqa: E731
    return (parse(run["finished"]) - parse(run["started"])).total_seconds() / 60


def machine_of(name: str) -> str:
    return json.loads((WEIGHTS / f"{name}.json").read_text())["device"]


def shots(rec: dict) -> str:
    return " / ".join(f(rec[k]) for k in ("many", "medium", "few") if rec.get(k) is not None)


def seed_spread(name: str) -> str:
    """Mean +- std over the seeds recorded for an entry (bench/seed_spread.py), or a dash for a single seed."""
    spread = load("seeds/spread.json").get(name)
    return "-" if spread is None else f"{f(spread['mean'])} ± {f(spread['std'])} ({len(spread['seeds'])} seeds)"


def zoo() -> str:
    """README's and the zoo page's table: one row per shipped entry, with the seed spread where one is recorded."""
    from gcl_zoo.model_card import PAPER_TOP1
    rows = []
    for name in shipped():
        ds, ratio = dataset_ratio(name)
        cal = load(f"{name}/calibration.json")
        rows.append([f"`{name}`", DATASET_NAMES[ds], str(ratio), f(PAPER_TOP1[name]), f"**{f(cal['after']['top1'])}**",
                     f(cal["previous"]["top1"]), seed_spread(name), f"{f(cal['after']['ece'])}%"])
    return table(["zoo entry", "data set", "imbalance ratio", "paper top-1 (best epoch)",
                  "ours top-1 (final epoch, balanced answer)", "temperature only", "over seeds (temperature only)",
                  "ECE"], rows)


def zoo_detail() -> str:
    rows = []
    for name in shipped():
        ev = load(f"{name}/eval.json")
        metrics = jsonl(f"{name}/metrics.jsonl")
        stage1 = [m for m in metrics if m["stage"] == 1 and "top1" in m][-1]
        stage2 = [m for m in metrics if m["stage"] == 2 and "top1" in m]
        rows.append([f"`{name}`", f(ev["top1"]), shots(ev), f(stage1["top1"]),
                     " / ".join(f(m["top1"]) for m in stage2[-2:]), f(train_minutes(name), 1), machine_of(name)])
    return table(["zoo entry", "top-1 (temperature only)", "many / medium / few", "stage 1 alone (last stage-1 evaluation)",
                  "stage 2 at epochs 20 / 30 (in training)", "training minutes", "machine"], rows)


def baselines() -> str:
    from gcl_zoo.model_card import PAPER_TOP1
    rows = []
    for rel in sorted(RESULTS.glob("baseline_ce_mixup_crt_*"), reverse=True):
        s = load(f"{rel.name}/summary.json")
        final, stage1 = s["final"], s["stage1"]
        ds, ratio = final["dataset"], int(final["imb_ratio"])
        paper_ce, paper_crt = PAPER_BASELINES[ds][ratio]
        gcl = load(f"gcl_resnet32_{ds}.ir{ratio}/eval.json")
        rows.append([DATASET_NAMES[ds], str(ratio), f"{f(paper_ce)} / {f(paper_crt)}",
                     f"{f(stage1['top1'])} / **{f(final['top1'])}**", shots(final),
                     f"{f(PAPER_TOP1[f'gcl_resnet32_{ds}.ir{ratio}'])} / {f(gcl['top1'])}", shots(gcl),
                     f(final["train_minutes"], 1), final["device"]])
    return table(["data set", "ratio", "paper: CE + mixup / + cRT", "ours: CE + mixup / + cRT (final epoch)",
                  "ours, + cRT: many / medium / few", "GCL: paper / ours", "GCL: many / medium / few",
                  "baseline training minutes", "machine"], rows)


def calibration() -> str:
    rows = []
    for name in shipped():
        c = load(f"{name}/calibration.json")
        b, a = c["before"], c["after"]
        prev = c.get("previous")
        cv = c.get("cross_validated_balanced_nll")
        rows.append([f"`{name}`", c.get("method_key", "temperature"),
                     " / ".join(f(cv[m], 3) for m in ("temperature", "bcts", "vector")) if cv else "-",
                     f"{b['logit_scale']:g} -> {round(a['logit_scale'], 2):g}",
                     f"{f(prev['top1'])} -> {f(a['top1'])}" if prev else "-",
                     f"{f(prev['ece'])}% -> {f(a['ece'])}%" if prev else f"{f(b['ece'])}% -> {f(a['ece'])}%",
                     f"{f(prev['nll'], 3)} -> {f(a['nll'], 3)}" if prev else f"{f(b['nll'], 3)} -> {f(a['nll'], 3)}",
                     str(c["validation_images"])])
    return table(["checkpoint", "method kept", "cross-validated NLL: temperature / BCTS / vector",
                  "scale (trained -> fitted)", "test top-1: temperature only -> now",
                  "test ECE: temperature only -> now", "test NLL: temperature only -> now", "validation images"], rows)


SADE_SETS = ["forward-50", "forward-10", "uniform", "backward-10", "backward-50"]


def _prior_rows(d: dict[str, Any], sets: list[str], methods: list[tuple[str, str]]) -> list[list[str]]:
    rows = []
    for name in sorted(d, reverse=True):
        for key, label in methods:
            if all(d[name][s].get(key) is None for s in sets):
                continue
            rows.append([f"`{name}`", label] + [f(d[name][s][key]) for s in sets])
    return rows


def _prior_results() -> dict[str, Any]:
    """The offline prior-shift rows, with the row measured online through the server beside them."""
    d = load("prior_shift.json")["results"]
    online = load("prior_shift_online.json")
    for name, row in online["results"].items():
        d[online["model"]][name]["EM, online through the server"] = row["EM, online through the server"]
    return d


def prior_shift() -> str:
    """Test-agnostic rows beside TADE (itself test-agnostic); the known-prior row is an oracle, in its own table."""
    d = _prior_results()
    methods = [("none", "GCL, balanced answer (no prior)"), ("EM, plain (whole set)", "GCL, plain EM, whole set"),
               ("EM, regularised (whole set)", "GCL, regularised EM, whole set"),
               ("EM, regularised (256 images)", "GCL, regularised EM from 256 images"),
               ("EM, regularised (1024 images)", "GCL, regularised EM from 1,024 images"),
               ("EM, online through the server", "GCL, online through the server"),
               ("TADE (paper, test-agnostic)", "TADE (three experts, paper; test-agnostic)")]
    return table(["checkpoint", "top-1 (%), prior unknown"] + SADE_SETS, _prior_rows(d, SADE_SETS, methods))


def prior_shift_oracle() -> str:
    """The known prior (an oracle no test-agnostic method has) and the sets the SADE protocol lacks."""
    d = _prior_results()
    name = next(iter(d))
    sets = [s for s in d[name] if s not in SADE_SETS]
    methods = [("none", "no prior"), ("known prior", "known prior (oracle)"),
               ("EM, plain (whole set)", "plain EM"), ("EM, regularised (whole set)", "regularised EM"),
               ("EM, online through the server", "online through the server")]
    known = table(["checkpoint", "top-1 (%), prior known"] + SADE_SETS,
                  _prior_rows(d, SADE_SETS, [("none", "no prior"), ("known prior", "known prior (oracle)")]))
    return known + "\n\n" + table(["checkpoint", "top-1 (%)"] + sets, _prior_rows(d, sets, methods))


# ------------------------------------------------------------------------------------------------- speed
TRAIN_SPEED_MACHINES = {  # file -> the machine, as the records' cpu_model / cpu_capability describe it
    "train_speed_cpu.json": "AMD EPYC, AVX-512 with bf16 units",
    "train_speed_cpu_bf16.json": "AMD EPYC, AVX-512 with bf16 units",
    "train_speed_cpu_avx2.json": "AMD EPYC, AVX2 only",
    "train_speed_cpu_avx2_bf16.json": "AMD EPYC, AVX2 only",
    "train_speed_cpu_xeon.json": "Intel Xeon, AVX-512 + bf16, no AMX",
    "train_speed_cpu_xeon_bf16.json": "Intel Xeon, AVX-512 + bf16, no AMX",
    "train_speed_cpu_xeon_compile.json": "Intel Xeon, AVX-512 + bf16, no AMX",
}


def hours(seconds: float) -> str:
    return f"about {seconds / 3600:.0f} h" if seconds >= 36000 else f"about {seconds / 3600:.1f} h"


def train_speed() -> str:
    rows = []
    for rel, machine in TRAIN_SPEED_MACHINES.items():
        d = load(rel)
        settings = "bf16 autocast + channels_last" if d["fast_path_bf16_channels_last"] else "float32"
        if d["compile"]:
            settings += f" + `--compile` (same run, not compiled: {f(d['fast_eager']['seconds_per_epoch'], 1)})"
        rows.append([machine, settings, f(d["loader"]["seconds_per_epoch"], 1), f(d["fast"]["seconds_per_epoch"], 1),
                     f"{d['speedup']:.2f}x", f(d["fast_stage2"]["seconds_per_epoch"], 1),
                     hours(d["estimated_full_recipe_seconds"]["fast"]), f"`{rel}`"])
    return table(["machine (2 cores)", "fast path settings", "DataLoader + PIL (s/epoch)", "fast path (s/epoch)",
                  "speed-up", "fast stage 2 (s/epoch)", "200 + 30 epochs, fast path (extrapolated)", "record"], rows)


SERVE_RUNTIME_RECORDS = {  # record -> the machine it ran on
    "serve_runtimes.json": "AMD EPYC, AVX-512 with bf16 units",
    "serve_runtimes_xeon/serve_runtimes.json": "Intel Xeon, AVX-512 + bf16, no AMX",
    "serve_runtimes_avx2/serve_runtimes.json": "AMD EPYC, AVX2 only",
}
RUNTIME_LABELS = {
    "torch (TorchScript)": "PyTorch TorchScript (`--runtime torch`)",
    "openvino (default precision)": "**OpenVINO (the CPU default)**",
    "openvino (auto precision)": "**OpenVINO (the CPU default)**",
    "openvino f32": "OpenVINO `--precision f32`", "onnxruntime": "ONNX Runtime",
    "openvino int8": "OpenVINO `--precision int8`", "onnxruntime int8": "ONNX Runtime `--precision int8`",
}


def serve_runtimes() -> str:
    rows = []
    for rel, machine in SERVE_RUNTIME_RECORDS.items():
        for key, c in load(rel)["configs"].items():
            ms = c["server_cpu_ms_per_image"]
            rest = ms["total"] - ms["model"] - ms["decode_resize"]
            rows.append([machine, RUNTIME_LABELS[key], c["precision"], f(c["raw_images_per_s_median"], 0),
                         f(c["served_images_per_s_median"], 0), f"{c['served_vs_torchscript_served']:.2f}x",
                         pct(c["served_share_of_raw"]), pct(c["top1_agreement_vs_pytorch_f32"], 2).replace(".00%", "%"),
                         f"{ms['model']:.2f} / {ms['decode_resize']:.2f} / {rest:.2f}"])
    return table(["machine (2 cores)", "runtime", "precision", "raw images/s", "served images/s",
                  "served vs TorchScript served", "served / raw", "top-1 agreement",
                  "server CPU ms per image: model / decode + resize / rest"], rows)


def serve_profile() -> str:
    rel = "serve_runtimes_xeon/serve_runtimes.json"
    rows = []
    for key, c in load(rel)["configs"].items():
        ms = c["server_cpu_ms_per_image"]
        rows.append([SERVE_RUNTIME_RECORDS[rel], RUNTIME_LABELS[key], c["precision"]] + [
            f"{ms[k]:.3f}" for k in ("total", "model", "decode_resize", "collate_normalize", "multipart", "answer",
                                     "http_loop_threads")])
    return table(["machine (2 cores)", "runtime", "precision", "total", "model", "decode + resize", "collate",
                  "multipart", "answer", "HTTP, loop and threads"], rows)


def int8_accuracy() -> str:
    d = load("int8_accuracy.json")
    machine = "Intel Xeon, AVX-512 + bf16, no AMX" if "Xeon" in d["machine"]["cpu"] else d["machine"]["cpu"]
    rows = [[f"`{c['name']}`", machine, f(c["float32"]["top1"]), f(c["int8"]["top1"]), pct(c["test_top1_agreement"], 2),
             pct(c["export_check"]["top1_agreement_vs_float32"], 2)] for c in d["checkpoints"]]
    return table(["checkpoint", "machine (2 cores)", "float32 top-1", "int8 top-1", "test labels int8 keeps",
                  "export check (500 held-out training images)"], rows)


def serve_load() -> str:
    d = load("serve_load.json")
    machine = f"{d['machine']['cpu']}, {d['machine']['cores']} cores"
    rows = [[machine, str(c["images_per_request"]), str(c["concurrency"]), f"{c['images_per_s']:.0f}",
             f"{c['p50_ms']:.0f}", f"{c['p99_ms']:.0f}", f"{c['mean_batch']:.1f}", str(c["rejected_503"])]
            for c in d["cells"]]
    return table(["machine", "images/request", "clients", "images/s", "p50 ms", "p99 ms", "mean batch", "503s"], rows)


def serve_load_raw() -> str:
    d = load("serve_load.json")
    machine = f"{d['machine']['cpu']}, {d['machine']['cores']} cores"
    names = {"eager/1t": "eager, 1 thread", "eager/2t": "eager, 2 threads", "trace/1t": "traced, 1 thread",
             "trace/2t": "traced, 2 threads", "trace/2x1t": "traced, 2 streams x 1 thread (the server's layout)"}
    raw = d["raw_images_per_s"]
    rows = [[machine, label, f(raw["before"][k], 0), f(raw["after"][k], 0)] for k, label in names.items()]
    return table(["machine", "raw forward pass, batch 64", "images/s before the server", "after the server"], rows)


def soak() -> str:
    d = load("soak_serve.json")
    m = d["minutes"]
    good = sum(x["statuses"].get("200", 0) for x in m) / d["requests"]
    p50, p99 = [x["p50_ms"] for x in m], [x["p99_ms"] for x in m]
    row = [f"{d['machine']['cpu']}, {d['machine']['cores']} cores",
           f"{d['server']['runtime']} {d['server']['precision']}", str(d["clients"]), f"{d['seconds'] / 60:.0f}",
           f(d["requests"], 0), pct(good), str(len(d["wrong"])), str(d["server_tracebacks"]),
           f"{min(p50):.0f}-{max(p50):.0f} / {min(p99):.0f}-{max(p99):.0f}",
           f"{f(m[1]['rss_mb_median'], 0)} -> {f(m[-1]['rss_mb_median'], 0)}",
           f"+{pct(d['rss_growth_after_minute_1'], 1)}"]
    return table(["machine", "server", "clients", "minutes", "requests", "good (200)", "wrong status",
                  "server errors", "p50 / p99 ms of the good ones, per minute", "median resident MB, minute 2 -> last minute",
                  "growth after minute 1"], [row])


def fuzz() -> str:
    d = load("fuzz_schema.json")
    rows = [[str(r["seed"]), "yes" if r["api_key"] else "no", f(r["generated"], 0), f(r["passed"], 0),
             str(r["exit_code"])] for r in d["runs"]]
    rows.append(["all", "", f(sum(r["generated"] for r in d["runs"]), 0), f(sum(r["passed"] for r in d["runs"]), 0),
                 f"server tracebacks: {d['server_tracebacks']}"])
    return table(["seed", "API key", "generated requests", "passed", "exit status"], rows)


def stage2_study() -> str:
    """Stage-2 variants on CIFAR-100-LT r100, validation split only, mean over the stage-1 models studied."""
    d = load("stage2_study/r100.json")
    rows = [[r["variant"], str(r["runs"]), f(r["mean"]["top1"]),
             " / ".join(f(r["mean"][k]) for k in ("many", "medium", "few")), f(r["mean"]["nll"], 3),
             f"{f(r['mean']['ece'])}%"] for r in d["variants"]]
    return table(["variant", "stage-1 models", "val top-1", "val many / medium / few", "val NLL (calibrated)",
                  "val ECE (calibrated)"], rows)


def stage1_noise_files() -> list[Path]:
    """The stage-1 study's paired comparisons, by ratio (final models, then stage-1 models)."""
    return sorted((RESULTS / "stage1_noise").glob("r*.json"), key=lambda p: (int(p.stem[1:].split("_")[0]), p.stem))


def stage1_noise_decisive() -> list[dict]:
    """The comparisons the rule reads: each ratio's final noise-1.0 model against its recipe pair."""
    return [m["against_base"] for path in stage1_noise_files() if not path.stem.endswith("_stage1")
            for m in json.loads(path.read_text())["models"][1:] if m["name"].startswith("noise 1.0")]


def stage1_noise_summed() -> tuple[int, int, float]:
    """The decisive comparisons' discordant pairs summed over the ratios, and their McNemar p."""
    from gcl_zoo.metrics import mcnemar_p
    decisive = stage1_noise_decisive()
    base_only, this_only = (sum(a[k] for a in decisive) for k in ("base_right_only", "this_right_only"))
    return base_only, this_only, mcnemar_p(base_only, this_only)


def stage1_noise() -> str:
    """The paper's noise multiplier in stage 1 against the recipe's, paired on each ratio's validation split; with
    more than one ratio, the discordant pairs of the final models summed over the ratios."""
    rows = []
    for path in stage1_noise_files():
        d = json.loads(path.read_text())
        base = d["models"][0]
        for m in d["models"][1:]:
            a = m["against_base"]
            low, high = a["bootstrap_95"]
            rows.append([f"{d['imb_ratio']:g}", m["name"], base["name"], f"{f(base['top1'])} -> {f(m['top1'])}",
                         f"{a['top1_difference']:+.2f} [{low:+.2f}, {high:+.2f}]",
                         f"{a['base_right_only']} / {a['this_right_only']}", f"{a['mcnemar_p']:.2f}",
                         f"{f(base['few'])} -> {f(m['few'])}"])
    if len(stage1_noise_decisive()) > 1:
        base_only, this_only, p = stage1_noise_summed()
        rows.append(["all", "noise 1.0, final models", "the recipe, final models", "", "",
                     f"{base_only} / {this_only}", f"{p:.3f}", ""])
    return table(["ratio", "model", "against", "val top-1", "difference [95% bootstrap]",
                  "right only: against / model", "McNemar p", "val few-shot"], rows)


TABLES: dict[str, Callable[[], str]] = {
    "zoo": zoo, "zoo_detail": zoo_detail, "baselines": baselines, "calibration": calibration,
    "prior_shift": prior_shift, "prior_shift_oracle": prior_shift_oracle, "train_speed": train_speed, "serve_runtimes": serve_runtimes,
    "serve_profile": serve_profile, "int8_accuracy": int8_accuracy, "serve_load": serve_load,
    "serve_load_raw": serve_load_raw, "soak": soak, "fuzz": fuzz,
    "stage2_study": stage2_study, "stage1_noise": stage1_noise,
}


# ------------------------------------------------------------------------------------- figures in running text
def _xeon_runtime(key: str, rel: str = "serve_runtimes_xeon/serve_runtimes.json") -> dict:
    return load(rel)["configs"][key]


def _ov_int8_shares() -> tuple[str, ...]:
    ms = _xeon_runtime("openvino int8")["server_cpu_ms_per_image"]
    t = ms["total"]
    small = ms["collate_normalize"] + ms["multipart"] + ms["answer"]
    return (f"{t:.2f}", pct(ms["model"] / t, 1), pct(ms["decode_resize"] / t, 1),
            pct(ms["http_loop_threads"] / t, 1), pct(small / t, 1))


def _fixed_bf16() -> tuple[str, ...]:
    c = load("serve_runtimes_xeon_fixed_bf16/serve_runtimes.json")["configs"]
    return (f"{c['openvino (default precision)']['raw_images_per_s_median'] / c['openvino f32']['raw_images_per_s_median']:.2f}x",
            f"{c['openvino (default precision)']['served_vs_torchscript_served']:.2f}x")


def _xeon_previous() -> tuple[str, ...]:
    c = load("serve_runtimes_xeon_previous/serve_runtimes.json")["configs"]
    onnx = [c[k]["server_cpu_ms_per_image"]["http_loop_threads"] for k in c if k != "torch (TorchScript)"]
    now = load("serve_runtimes_xeon/serve_runtimes.json")["configs"]
    onnx_now = [now[k]["server_cpu_ms_per_image"]["http_loop_threads"] for k in now if k != "torch (TorchScript)"]
    return (f"{c['openvino int8']['served_vs_torchscript_served']:.2f}x", f"{min(onnx):.2f}-{max(onnx):.2f}",
            f"{min(onnx_now):.2f}-{max(onnx_now):.2f}")


def _head_to_head() -> tuple[str, ...]:
    d = load("serve_load.json")
    h = d["head_to_head"]
    pairs = ", ".join(f"{s:.0f} / {r:.0f}" for s, r in zip(h["server_images_per_s"], h["raw_images_per_s"]))
    return (pairs, pct(h["median_ratio"]), pct(d["best_server"]["ratio_to_best_raw"]),
            f"{d['best_server']['images_per_s']:.0f} / {d['best_raw']['images_per_s']:.0f}")


def _load_previous() -> tuple[str, ...]:
    d = load("serve_load_previous.json")
    return pct(d["head_to_head"]["median_ratio"]), pct(d["best_server"]["ratio_to_best_raw"])


def _bf16_gain() -> tuple[str, ...]:
    c = load("serve_runtimes.json")["configs"]["openvino (default precision)"]
    return (f"{c['served_vs_torchscript_served']:.2f}x", pct(1 - c["top1_agreement_vs_pytorch_f32"], 2),
            f"{c['max_abs_prob_diff']:.3f}")


def _xeon_auto_speeds() -> tuple[str, ...]:
    s = _xeon_runtime("openvino (auto precision)")["precision_speeds"]
    return (f"{s['bf16']:.0f}", f"{s['f32']:.0f}")


def _compile() -> tuple[str, ...]:
    return (f"{load('train_speed_cpu_xeon_compile.json')['compile_speedup']:.2f}x",)


def _avx2_bf16_slowdown() -> tuple[str, ...]:
    return (f"{load('train_speed_cpu_avx2.json')['fast']['seconds_per_epoch']:.1f}",
            f"{load('train_speed_cpu_avx2_bf16.json')['fast']['seconds_per_epoch']:.1f}")


def _emulated_bf16() -> tuple[str, ...]:
    f32, bf16 = load("train_speed_cpu_avx2.json"), load("train_speed_cpu_avx2_bf16.json")
    ratios = [bf16[k]["seconds_per_epoch"] / f32[k]["seconds_per_epoch"] for k in ("fast", "fast_stage2")]
    return (f"{min(ratios):.0f}", f"{max(ratios):.0f}")


def _two_streams() -> tuple[str, ...]:
    after = load("serve_load.json")["raw_images_per_s"]["after"]
    return (pct(after["trace/2x1t"] / after["trace/2t"] - 1),)


def _training_hours() -> tuple[str, ...]:
    """The shipped ratio-100 runs' wall time, beside the speed benchmark's extrapolation for the recipe alone."""
    alone = load("train_speed_cpu_bf16.json")["estimated_full_recipe_seconds"]["fast"]
    return (f(train_minutes("gcl_resnet32_cifar10_lt.ir100") / 60, 1), hours(alone),
            f(train_minutes("gcl_resnet32_cifar100_lt.ir100") / 60, 1))


def _cifar100_seed_spread() -> tuple[str, ...]:
    spread = load("seeds/spread.json")["gcl_resnet32_cifar100_lt.ir100"]
    return f(spread["mean"]), f(spread["std"])


def _stage2_study() -> tuple[str, ...]:
    rows = {r["variant"]: r["mean"]["top1"] for r in load("stage2_study/r100.json")["variants"]}
    recipe = [top1 for name, top1 in rows.items() if name.startswith("recipe")]
    fresh = [top1 for name, top1 in rows.items() if name.startswith("fresh head")]
    kept = [top1 for name, top1 in rows.items() if not name.startswith(("recipe", "fresh head"))]
    mean = sum(recipe) / len(recipe)
    return (str(len(recipe)), f(min(recipe)), f(max(recipe)), f(min(kept)), f(max(kept)),
            f"{mean - max(fresh):.2f}", f"{mean - min(fresh):.2f}")


def _stage1_noise_r100() -> tuple[str, ...]:
    base, seed0, noise1 = load("stage1_noise/r100.json")["models"]
    a = noise1["against_base"]
    return (f"{a['top1_difference']:.2f}", f"{noise1['few'] - base['few']:.2f}",
            f"{seed0['against_base']['top1_difference']:.2f}", f"{a['mcnemar_p']:.2f}")


def _stage1_noise_r200() -> tuple[str, ...]:
    a = load("stage1_noise/r200.json")["models"][1]["against_base"]
    summed = stage1_noise_summed()[2]
    return f"{-a['top1_difference']:.2f}", f"{a['mcnemar_p']:.2f}", f"{summed:.3f}"


def _cifar100_against_baseline() -> tuple[str, ...]:
    gcl = load("gcl_resnet32_cifar100_lt.ir100/eval.json")
    ce = load("baseline_ce_mixup_crt_resnet32_cifar100_lt.ir100/summary.json")["final"]
    paper_crt = PAPER_BASELINES["cifar100_lt"][100][1]
    from gcl_zoo.model_card import PAPER_TOP1
    return (f"{round(gcl['top1'], 2) - ce['top1']:.2f}", f"{PAPER_TOP1['gcl_resnet32_cifar100_lt.ir100'] - paper_crt:.2f}",
            f"{round(gcl['few'], 2) - ce['few']:.2f}", f(gcl["few"]), f(ce["few"]),
            f"{round(gcl['medium'], 2) - ce['medium']:.2f}", f"{ce['many'] - round(gcl['many'], 2):.2f}")


def _baselines_vs_paper() -> tuple[str, ...]:
    out = []
    for ds in ("cifar10_lt", "cifar100_lt"):
        s = load(f"baseline_ce_mixup_crt_resnet32_{ds}.ir100/summary.json")
        paper = PAPER_BASELINES[ds][100]
        out += [f"{s['stage1']['top1'] - paper[0]:.2f}", f"{s['final']['top1'] - paper[1]:.2f}"]
    return tuple(out)


def _stage2_moves() -> tuple[str, ...]:
    few, many = [], []
    for ratio in (200, 100, 50):
        m = jsonl(f"gcl_resnet32_cifar100_lt.ir{ratio}/metrics.jsonl")
        s1 = [x for x in m if x["stage"] == 1 and "top1" in x][-1]
        s2 = [x for x in m if x["stage"] == 2 and "top1" in x][-1]
        few.append(s2["few"] - s1["few"])
        many.append(s1["many"] - s2["many"])
    return (f"{min(few):.0f}", f"{max(few):.0f}", f"{sum(many) / len(many):.0f}")


def _paper_baselines() -> tuple[str, ...]:
    return tuple(f"{PAPER_BASELINES[ds][r][0]:.2f} / {PAPER_BASELINES[ds][r][1]:.2f}"
                 for ds in ("cifar10_lt", "cifar100_lt") for r in (200, 50))


def _soak_drift() -> tuple[str, ...]:
    m = load("soak_serve.json")["minutes"]
    return (f"{(m[-1]['rss_mb_median'] - m[1]['rss_mb_median']) / (len(m) - 2):.0f}",)


def _xeon_bf16() -> tuple[str, ...]:
    f32, bf16 = load("train_speed_cpu_xeon.json"), load("train_speed_cpu_xeon_bf16.json")
    return (pct(bf16["fast"]["seconds_per_epoch"] / f32["fast"]["seconds_per_epoch"] - 1),)


def _cifar10_prior() -> tuple[str, ...]:
    r = load("prior_shift.json")["results"]["gcl_resnet32_cifar10_lt.ir100"]
    shifts = ["forward-50", "forward-10", "uniform", "backward-10", "backward-50"]
    return (" / ".join(f(r[s]["known prior"]) for s in shifts), " / ".join(f(r[s]["none"]) for s in shifts))


def _fuzz_total() -> tuple[str, ...]:
    return (f(sum(r["generated"] for r in load("fuzz_schema.json")["runs"]), 0),)


def _soak_total() -> tuple[str, ...]:
    return (f(load("soak_serve.json")["requests"], 0),)


def _ab(record: str) -> Callable[[], tuple[str, ...]]:
    """A before/after serving record's best served windows: medians, their ratio, the range of adjacent pairs."""
    def figures() -> tuple[str, ...]:
        best = load(record)["summary"]["best_served_images_per_s"]
        pairs = best["after_over_before_per_pair"]
        return (f(best["after"]["median"], 0), f(best["before"]["median"], 0), f(best["after_over_before"]),
                f(min(pairs)), f(max(pairs)))
    return figures


# (file, phrase with {0}, {1}... placeholders, the values) -- the phrase, filled in, must appear in the file
QUOTES: list[tuple[str, str, Callable[[], tuple[str, ...]]]] = [
    ("docs/training.md", "`torch.compile` buys nothing there ({0} against the uncompiled fast path", _compile),
    ("docs/training.md", "the fast path runs at {1} s an epoch in bf16 against {0} in float32", _avx2_bf16_slowdown),
    ("docs/training.md", "the fast path runs {0}-{1}x slower than in float32", _emulated_bf16),
    ("docs/training.md", "the fast path runs {0} slower in bf16 than in float32", _xeon_bf16),
    ("docs/zoo.md", "land {0} (CE + mixup) and {1} (+ cRT) points above the paper's figures on CIFAR-10-LT, {2} and "
                    "{3} on CIFAR-100-LT", _baselines_vs_paper),
    ("docs/zoo.md", "it moves {0}-{1} points onto the few-shot classes for about {2} points of many-shot accuracy",
     _stage2_moves),
    ("docs/zoo.md", "CIFAR-10-LT {0} (ratio 200) and {1} (ratio 50); CIFAR-100-LT {2} (ratio 200) and {3} (ratio 50)",
     _paper_baselines),
    ("docs/benchmarks.md", "a slow drift of about {0} MB a minute", _soak_drift),
    ("docs/zoo.md", "the shipped ratio-100 run took {0} h while a second run shared the machine; alone, the "
                    "training-speed benchmark extrapolates the recipe to {1}", _training_hours),
    ("docs/zoo.md", "the shipped ratio-100 run took {2} h alone on the Xeon's two cores", _training_hours),
    ("docs/research.md", "the recipe itself, run {0} times with other random draws, spans {1}-{2} on validation; "
                         "the other variants that keep the stage-1 head land at {3}-{4}, and a fresh head costs "
                         "{5}-{6} points", _stage2_study),
    ("docs/research.md", "the paper's multiplier gains {0} points of validation top-1 over the recipe with the "
                         "same seed ({1} on\nthe few-shot classes), but two seeds of the recipe already differ by {2} "
                         "on the same images, and the paired interval\nstill reaches below zero (McNemar p {3})",
     _stage1_noise_r100),
    ("docs/research.md", "At ratio 200 it loses {0} points\nagainst the shipped checkpoint (McNemar p {1}), and summed "
                         "over both ratios p is {2}", _stage1_noise_r200),
    ("docs/zoo.md", "Nor is it the seed: at ratio 100 three seeds give {0} ± {1}", _cifar100_seed_spread),
    ("docs/zoo.md", "GCL gains {0} points of top-1 where the paper reports {1}, and its gain sits where the method aims "
                    "it: {2} points on the few-shot classes ({3} against {4}) and {5} on the medium ones, for {6} of "
                    "many-shot accuracy", _cifar100_against_baseline),
    ("docs/design.md", "two single-threaded streams of the traced ResNet-32 run about {0} faster than one stream",
     _two_streams),
    ("docs/serving.md", "On that machine it served {0} what TorchScript serves, at the cost of about {1} of top-1 "
                        "labels (near-ties; probabilities move by at most {2})", _bf16_gain),
    ("docs/serving.md", "OpenVINO's bf16 ran at {0} its float32 there (the fixed bf16 default then served {1} "
                        "TorchScript)", _fixed_bf16),
    ("docs/serving.md", "measured {0} images/s in bf16 against {1} in float32 at start-up", _xeon_auto_speeds),
    ("docs/benchmarks.md", "its CPU time per image is {0} ms: the model {1}, decoding {2}, HTTP, the event loop and "
                           "the hand-offs between threads {3}, and multipart parsing, collation and the answer {4} "
                           "together", _ov_int8_shares),
    ("docs/benchmarks.md", "had OpenVINO int8 at {0} and HTTP, loop and threads at {1} ms an image for the ONNX "
                           "runtimes ({2} now)", _xeon_previous),
    ("docs/benchmarks.md", "server / raw = {0} images/s, a median of **{1}**; the best served window is **{2}** of "
                           "the best raw window of the run ({3} images/s)", _head_to_head),
    ("docs/benchmarks.md", "measured {0} head to head and {1} best to best", _load_previous),
    ("docs/benchmarks.md", "the known prior gives {0} against {1} unadjusted", _cifar10_prior),
    ("docs/serving.md", "({0} requests over three seeds", _fuzz_total),
    ("docs/serving.md", "{0} requests of mixed good and bad input", _soak_total),
    ("docs/benchmarks.md", "a median of {0} images/s after against {1} before (after / before {2}); the six adjacent "
                           "pairs range from {3} to {4}", _ab("serve_refactor_ab.json")),
    ("docs/benchmarks.md", "a median of {0} images/s after against {1} before (after / before {2}); the three adjacent "
                           "pairs range from {3} to {4}", _ab("serve_seams_ab.json")),
]


# ---------------------------------------------------------------------------------------------------- driver
def doc_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def check(write: bool = False) -> list[str]:
    """Every difference between the docs and the records, as messages; with ``write``, tables are rewritten."""
    problems = []
    for path in doc_files():
        text = path.read_text()
        rel = path.relative_to(ROOT).as_posix()

        def regenerate(m: re.Match, rel: str = rel) -> str:
            name = m["name"]
            if name not in TABLES:
                problems.append(f"{rel}: unknown table '{name}' (known: {', '.join(TABLES)})")
                return m.group(0)
            fresh = TABLES[name]()
            if m["body"] != fresh:
                problems.append(f"{rel}: table '{name}' differs from bench/results; run python docs/tables.py --write")
            return f"<!-- table: {name} -->\n{fresh}<!-- /table -->"

        new = MARKER.sub(regenerate, text)
        if write and new != text:
            path.write_text(new)
    for rel, phrase, values in QUOTES:  # compared with runs of white space (line breaks too) taken as one space
        expected = phrase.format(*values())
        if " ".join(expected.split()) not in " ".join((ROOT / rel).read_text().split()):
            problems.append(f"{rel}: no longer says '{expected}' (the figure moved in bench/results: reword it)")
    return problems


if __name__ == "__main__":
    write = "--write" in sys.argv[1:]
    found = check(write=write)
    if write:
        found = check()
    print("\n".join(found) or "every quoted benchmark figure matches bench/results")
    sys.exit(1 if found else 0)
