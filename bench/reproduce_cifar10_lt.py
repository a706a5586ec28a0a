"""Reproduce the paper's CIFAR-10-LT table (ResNet-32) with the trainer: GCL + CBEN cRT and the CE baselines.

Runs every configuration as its own ``python -m train`` process on the fast path, several at a time on one device
(``--jobs``), then collects each run's final-epoch ``eval.json`` into one JSON and prints it beside the paper's
numbers (best epoch, as published). ``--smoke`` shrinks every run to a few steps, to try the whole script on a CPU
before spending GPU time.

    python bench/reproduce_cifar10_lt.py --data-root ../shared/data/cifar10/cifar10.zip --jobs 6 --out-dir runs/repro
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

# top-1 %, paper Table 1 (CIFAR-10-LT, best epoch as published)
PAPER = {
    ("gcl", 200): 79.03, ("gcl", 100): 82.68, ("gcl", 50): 85.46,
    ("ce_mixup", 200): 65.84, ("ce_mixup", 100): 72.96, ("ce_mixup", 50): 79.48,
    ("ce_mixup_crt", 200): 73.06, ("ce_mixup_crt", 100): 79.15, ("ce_mixup_crt", 50): 84.21,
}
CE = ["--loss", "ce", "--head", "linear", "--s", "1"]
METHODS = {
    "gcl": [],                                                      # the recipe: GCL stage 1, GCL + CBEN cRT stage 2
    "ce_mixup": [*CE, "--stage", "1"],                              # one stage
    "ce_mixup_crt": [*CE, "--stage2.loss", "ce", "--stage2.s", "1", "--stage2.sampler", "class_balanced"],
}
SMOKE = ["--epochs", "1", "--warmup-epochs", "1", "--decay-epochs", "--stage2.epochs", "1", "--max-per-class", "100",
         "--val-per-class", "10", "--test-per-class", "20"]


def plan(ratios: List[int], seeds: List[int], extra_ratio_seeds: List[int]) -> List[Dict]:
    """GCL and both baselines at ratio 100 for every seed; GCL alone at the other ratios."""
    runs = []
    for seed in seeds:
        for method in METHODS:
            runs.append({"method": method, "ratio": 100, "seed": seed})
    for ratio in ratios:
        if ratio != 100:
            runs += [{"method": "gcl", "ratio": ratio, "seed": s} for s in extra_ratio_seeds]
    return runs


def command(run: Dict, data_root: str, out: Path, device: str, smoke: bool, compile_model: bool) -> List[str]:
    return [sys.executable, "-m", "train", "--recipe", "cifar10_lt", "--imb-ratio", str(run["ratio"]),
            "--seed", str(run["seed"]), "--out", str(out), "--data-root", data_root, "--device", device,
            "--fast", "on", "--no-progress", "--eval-every", "10", *METHODS[run["method"]],
            *(["--compile"] if compile_model else []), *(SMOKE if smoke else [])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("GCL_ZOO_DATA", "../shared/data") + "/cifar10/cifar10.zip")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/reproduce_cifar10_lt"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=4, help="runs sharing the device at once")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--ratios", type=int, nargs="+", default=[100, 50, 200])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny runs, to try the script on a CPU")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/reproduce_cifar10_lt.json)")
    args = parser.parse_args()
    runs = plan(args.ratios, args.seeds, args.seeds[:1])
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    pending, active, began = list(runs), [], time.perf_counter()
    while pending or active:
        while pending and len(active) < args.jobs:
            run = pending.pop(0)
            run["dir"] = str(args.out_dir / f"{run['method']}_ir{run['ratio']}_seed{run['seed']}")
            log = open(Path(run["dir"] + ".log"), "w")
            run["started"] = time.perf_counter()
            proc = subprocess.Popen(command(run, args.data_root, Path(run["dir"]), args.device, args.smoke,
                                            args.compile), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            active.append((run, proc, log))
        time.sleep(1)
        for item in list(active):
            run, proc, log = item
            if proc.poll() is not None:
                log.close()
                run["exit_code"] = proc.returncode
                run["wall_seconds"] = time.perf_counter() - run.pop("started")
                report_file = Path(run["dir"]) / "eval.json"
                if proc.returncode == 0 and report_file.is_file():
                    report = json.loads(report_file.read_text())
                    run.update({k: report.get(k) for k in ("top1", "many", "medium", "few", "per_class")})
                print(f"{Path(run['dir']).name}: exit {proc.returncode}, top-1 {run.get('top1')}, "
                      f"{run['wall_seconds']:.0f} s", flush=True)
                active.remove(item)
    total = time.perf_counter() - began
    print(f"\n{'method':<14}{'ratio':>6}{'seed':>5}{'top-1':>8}{'many':>7}{'medium':>8}{'few':>6}{'paper':>7}")
    for run in runs:
        cells = [run.get(k) for k in ("top1", "many", "medium", "few")]
        text = "".join(f"{c:>{w}.2f}" if c is not None else f"{'-':>{w}}" for c, w in zip(cells, (8, 7, 8, 6)))
        paper = PAPER.get((run["method"], run["ratio"]))
        print(f"{run['method']:<14}{run['ratio']:>6}{run['seed']:>5}{text}{paper if paper else '-':>7}")
    import torch

    out = args.out or RESULTS / "reproduce_cifar10_lt.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                               "smoke": args.smoke, "jobs": args.jobs, "wall_seconds": total,
                               "paper_top1_best_epoch": {f"{m}@{r}": v for (m, r), v in PAPER.items()},
                               "runs": runs}, indent=2))
    print(f"all runs: {total:.0f} s; wrote {out}")
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
