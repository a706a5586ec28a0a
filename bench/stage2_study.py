"""Stage-2 (classifier re-training) variants on CIFAR-100-LT, judged on the validation split only.

Stage 2 needs only the frozen stage-1 model, so each variant is a ``gcl-zoo train --stage 2 --no-test`` run of
minutes from a stage-1 folder (a full run's ``stage1/``, which holds the stage-1 head). Every variant runs from every
given stage-1 folder (different seeds), and the table averages them: with 20 validation images per class one
model's validation top-1 moves about 1.1 points by chance. The test set is never read here; the chosen rule is then
applied and tested once per reported model.

    python bench/stage2_study.py --stage1 RUN_SEED1/stage1 --stage1 RUN_SEED2/stage1 --cores 0,1 --out runs/stage2

Resumable: a variant whose run folder holds ``eval.json`` is read, not re-run. Results go to
``bench/results/stage2_study/<ratio>.json`` after every finished run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "stage2_study"
RUNTIME = ["--device", "cpu", "--fast", "on", "--amp", "on", "--channels-last", "on", "--no-progress", "--no-test",
           "--eval-every", "5"]
SMOKE = ["--max-per-class", "30", "--val-per-class", "5", "--test-per-class", "5", "--stage2.epochs", "1",
         "--workers", "0"]
# the recipe's stage 2 (cRT from the stage-1 head, lr 0.002, CBEN, 30 epochs) and one change at a time around it
VARIANTS: dict[str, list[str]] = {
    "recipe (lr 0.002, stage-1 head, cben, 30 ep)": [],
    "recipe, seed 1": ["--seed", "1"],  # the recipe again with other random draws: one run's noise, measured
    "recipe, seed 2": ["--seed", "2"],
    "lr 0.004": ["--stage2.lr", "0.004"],
    "lr 0.008": ["--stage2.lr", "0.008"],
    "fresh head, lr 0.002": ["--stage2.fresh-head", "true"],
    "fresh head, lr 0.004": ["--stage2.fresh-head", "true", "--stage2.lr", "0.004"],
    "fresh head, lr 0.008": ["--stage2.fresh-head", "true", "--stage2.lr", "0.008"],
    "sampler cben_paper": ["--stage2.sampler", "cben_paper"],
    "sampler class_balanced": ["--stage2.sampler", "class_balanced"],
    "15 epochs": ["--stage2.epochs", "15"],
    "60 epochs": ["--stage2.epochs", "60"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def variant_command(stage1: Path, ratio: int, data_root: str, flags: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "train", "--recipe", "cifar100_lt", "--imb-ratio", str(ratio), "--stage", "2",
            "--stage1-checkpoint", str(stage1), "--data-root", data_root, "--out", str(out), *RUNTIME, *flags]


def read_result(out: Path) -> dict[str, float]:
    """Final-epoch validation figures of a finished variant, with the calibrated NLL and ECE."""
    report = json.loads((out / "eval.json").read_text())
    assert report["split"] == "val", f"{out} read the test set"
    calibration = json.loads((out / "config.json").read_text())["calibration"]
    row = {key: report[key] for key in ("top1", "many", "medium", "few")}
    row.update(nll=calibration["after"]["nll"], ece=calibration["after"]["ece"])
    return row


Job = tuple[str, Path, list[str], Path]  # variant, stage-1 folder, command, run folder


def run_all(jobs: list[Job], cores: list[int], on_finished: Callable[[], None]) -> None:
    """Run the unfinished jobs, one per core, each with one thread pinned to its core; ``on_finished`` after each."""
    pending = [job for job in jobs if not (job[3] / "eval.json").is_file()]
    running: dict[int, subprocess.Popen] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    while pending or running:
        for core in cores:
            if core not in running and pending:
                name, _, command, out = pending.pop(0)
                if out.exists():  # an interrupted variant starts over: it takes minutes
                    shutil.rmtree(out)
                out.parent.mkdir(parents=True, exist_ok=True)
                log = open(f"{out}.log", "w")
                running[core] = subprocess.Popen(["taskset", "-c", str(core), *command], stdout=log,
                                                 stderr=subprocess.STDOUT, env=env)
                print(f"core {core}: {name} <- {command[command.index('--stage1-checkpoint') + 1]}", flush=True)
        time.sleep(2)
        for core in [core for core, proc in running.items() if proc.poll() is not None]:
            proc = running.pop(core)
            if proc.returncode != 0:
                raise SystemExit(f"a variant failed (exit {proc.returncode}): {' '.join(proc.args)}")
            on_finished()


def mean_of(values: list[float | None]) -> float | None:
    """The mean, or None where a group (many/medium/few) has no class at this ratio."""
    return None if None in values else statistics.fmean(values)


def summarise(jobs: list[Job], ratio: int) -> dict:
    rows = []
    for name, flags in VARIANTS.items():
        results = [read_result(out) for n, _, _, out in jobs if n == name and (out / "eval.json").is_file()]
        if not results:
            continue
        mean = {key: mean_of([r[key] for r in results]) for key in results[0]}
        rows.append({"variant": name, "flags": flags, "runs": len(results), "mean": mean, "each": results})
    return {"dataset": "cifar100_lt", "imb_ratio": ratio, "split": "val", "test_set_read": False,
            "stage1": sorted({str(stage1) for _, stage1, _, _ in jobs}), "runtime": RUNTIME, "variants": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage1", type=Path, action="append", required=True, help="a stage-1 model folder")
    parser.add_argument("--imb-ratio", type=int, default=100)
    parser.add_argument("--data-root", default=os.environ.get("GCL_ZOO_DATA", "../shared/data") +
                        "/cifar100/cifar100.zip")
    parser.add_argument("--out", type=Path, required=True, help="folder for the variants' run folders")
    parser.add_argument("--cores", default="0", help="comma-separated CPU cores, one variant on each at a time")
    parser.add_argument("--only", action="append", help="run only these variants (names as in the table)")
    parser.add_argument("--smoke", action="store_true", help="a few images and one epoch: try the script out")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the summary JSON")
    args = parser.parse_args()
    unknown = set(args.only or ()) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    jobs = []
    for name, flags in VARIANTS.items():
        for i, stage1 in enumerate(args.stage1):
            if not args.only or name in args.only:
                out = args.out / f"r{args.imb_ratio}" / f"{slug(name)}_{i}"
                flags = [*flags, *(SMOKE if args.smoke else [])]
                jobs.append((name, stage1, variant_command(stage1, args.imb_ratio, args.data_root, flags, out), out))
    result_file = args.results / f"r{args.imb_ratio}.json"

    def write_summary() -> None:
        args.results.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(summarise(jobs, args.imb_ratio), indent=2))

    run_all(jobs, [int(c) for c in args.cores.split(",")], write_summary)
    write_summary()
    summary = json.loads(result_file.read_text())
    print(f"{'variant':46s} {'runs':>4s} {'top1':>6s} {'many':>6s} {'medium':>6s} {'few':>6s} {'nll':>6s} {'ece':>6s}")
    for row in summary["variants"]:
        m = row["mean"]
        groups = " ".join("   n/a" if m[key] is None else f"{m[key]:6.2f}" for key in ("many", "medium", "few"))
        print(f"{row['variant']:46s} {row['runs']:4d} {m['top1']:6.2f} {groups} {m['nll']:6.3f} {m['ece']:5.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
