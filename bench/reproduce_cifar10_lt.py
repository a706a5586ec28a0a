"""Reproduce the paper's CIFAR-10-LT table (ResNet-32) with the trainer: GCL + CBEN cRT and the CE baselines.

Runs every configuration as its own ``python -m train`` process on the fast path, several at a time on one device
(``--jobs``), each in its own folder under ``--out-dir``, and prints each run's final-epoch top-1 beside the
paper's numbers (best epoch, as published). The results JSON is rewritten as each run starts and ends.

A call may be given ``--time-limit``: at the limit its runs are stopped with a checkpoint and the ones not started
wait; the next call with the same ``--out-dir`` skips the finished runs, resumes the stopped ones and starts the
rest, so a table too long for one sitting is finished over several. ``--smoke`` shrinks every run to a few steps,
to try the whole script on a CPU before spending GPU time.

    python bench/reproduce_cifar10_lt.py --data-root ../shared/data/cifar10/cifar10.zip --jobs 6 --out-dir runs/repro
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _train_runs import SMOKE, TrainRun, is_finished, progress, recipe_flags, write_json  # noqa: E402

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


def plan(ratios: list[int], seeds: list[int], extra_ratio_seeds: list[int], methods: list[str]) -> list[dict]:
    """``methods`` at ratio 100 for every seed; GCL alone (if asked for) at the other ratios."""
    runs = []
    for seed in seeds:
        runs += [{"method": method, "ratio": 100, "seed": seed} for method in methods]
    for ratio in ratios:
        if ratio != 100 and "gcl" in methods:
            runs += [{"method": "gcl", "ratio": ratio, "seed": s} for s in extra_ratio_seeds]
    return runs


def train_args(run: dict, data_root: str, device: str, smoke: bool, compile_model: bool) -> list[str]:
    return ["--recipe", "cifar10_lt", "--imb-ratio", str(run["ratio"]), "--seed", str(run["seed"]),
            "--data-root", data_root, "--device", device, "--fast", "on", "--eval-every", "10",
            *METHODS[run["method"]], *(["--compile"] if compile_model else []), *(recipe_flags(SMOKE) if smoke else [])]


def print_table(runs: list[dict]) -> None:
    print(f"\n{'method':<14}{'ratio':>6}{'seed':>5}{'status':>10}{'top-1':>8}{'many':>7}{'medium':>8}{'few':>6}"
          f"{'paper':>7}")
    for run in runs:
        cells = [run.get(k) for k in ("top1", "many", "medium", "few")]
        text = "".join(f"{c:>{w}.2f}" if c is not None else f"{'-':>{w}}" for c, w in zip(cells, (8, 7, 8, 6)))
        paper = PAPER.get((run["method"], run["ratio"]))
        print(f"{run['method']:<14}{run['ratio']:>6}{run['seed']:>5}{run['status']:>10}{text}"
              f"{paper if paper else '-':>7}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("GCL_ZOO_DATA", "../shared/data") + "/cifar10/cifar10.zip")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/reproduce_cifar10_lt"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=4, help="runs sharing the device at once")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--ratios", type=int, nargs="+", default=[100, 50, 200])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--time-limit", type=float, default=math.inf,
                        help="seconds for this call: then running runs stop with a checkpoint (the next call resumes "
                             "them) and runs not started wait")
    parser.add_argument("--smoke", action="store_true", help="tiny runs, to try the script on a CPU")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/reproduce_cifar10_lt.json)")
    args = parser.parse_args()
    out = args.out or RESULTS / "reproduce_cifar10_lt.json"
    runs = plan(args.ratios, args.seeds, args.seeds[:1], args.methods)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    deadline = began + args.time_limit
    for run in runs:
        run["dir"] = str(args.out_dir / f"{run['method']}_ir{run['ratio']}_seed{run['seed']}")
        finished = is_finished(Path(run["dir"]))
        run["status"] = "finished" if finished else "pending"
        if finished:
            run.update(progress(Path(run["dir"])))
            print(f"{Path(run['dir']).name}: finished earlier, top-1 {run.get('top1')}", flush=True)

    def save() -> None:
        write_json(out, {"smoke": args.smoke, "jobs": args.jobs,
                         "time_limit_s": args.time_limit if math.isfinite(args.time_limit) else None,
                         "wall_seconds": time.perf_counter() - began,
                         "paper_top1_best_epoch": {f"{m}@{r}": v for (m, r), v in PAPER.items()}, "runs": runs})

    pending = [run for run in runs if run["status"] == "pending"]
    active: list[Any] = []
    save()
    while active or (pending and time.perf_counter() < deadline):
        while pending and len(active) < args.jobs and time.perf_counter() < deadline:
            run = pending.pop(0)
            folder = Path(run["dir"])
            process = TrainRun(folder, train_args(run, args.data_root, args.device, args.smoke, args.compile),
                               folder.with_name(folder.name + ".log"))
            run["status"] = "resumed" if process.resumed else "running"
            active.append((run, process))
            save()
        time.sleep(0.5)
        for item in list(active):
            run, process = item
            if process.poll() is None and time.perf_counter() >= deadline:
                process.stop()
            if process.poll() is not None:
                run.update(process.summary())
                print(f"{Path(run['dir']).name}: {run['status']} (exit {run['exit_code']}), top-1 {run.get('top1')}, "
                      f"epochs {run['epochs_done']}, {run['wall_seconds']:.0f} s", flush=True)
                active.remove(item)
                save()
    print_table(runs)
    print(f"this call: {time.perf_counter() - began:.0f} s; wrote {out}")
    return 1 if any(run["status"] == "failed" for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
