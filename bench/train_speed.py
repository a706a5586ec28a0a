"""Stage-1 training speed on CIFAR-10-LT (ratio 100), ResNet-32, batch 64: the authors' style against the fast path.

(a) ``loader``: a DataLoader with PIL transforms (pad-4 crop, flip, ToTensor, Normalize) in worker processes,
    float32, eager, as the authors' code trains;
(b) ``fast``: the whole data set resident on the device, crop/flip/normalise/mixup there in batch, fused SGD,
    bf16 autocast and channels_last (on CUDA by default, ``--amp on`` for CPUs with bf16 units), optionally
    ``torch.compile``, no per-step host sync.

Both run in the same process, one after the other, and the table reports seconds per epoch and the ratio; with
``--compile`` the fast path is also timed uncompiled in the same run, for the ratio that compilation buys.
With ``--steps N`` each pipeline is timed over N steps and the epoch time extrapolated (for CPU smoke runs);
the estimate of the full 200 + 30 epoch recipe uses the fast path's stage-1 and stage-2 step times (the whole
recipe itself runs in ``bench/reproduce_cifar10_lt.py``). The results JSON is rewritten as each timing finishes;
a call whose ``--out`` already holds timings of the same settings skips those and times only the rest.

    python bench/train_speed.py --data-root ../shared/data/cifar10/cifar10.zip [--steps 40] [--compile]
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from _train_runs import SMOKE, read_json, write_json  # noqa: E402
from gcl_zoo.devices import cpu_has_fast_bf16, cpu_model, resolve_device  # noqa: E402
from train.cli import create_trainer  # noqa: E402
from train.distributed import DistInfo  # noqa: E402
from train.engine import RunOptions, Trainer  # noqa: E402
from train.recipes import load_recipe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class Limited:
    """The first ``steps`` batches of a batch source (and its length, for the loop's bookkeeping)."""

    def __init__(self, batches, steps: int):
        self.batches, self.steps = batches, min(steps, len(batches))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator:
        for i, batch in enumerate(self.batches):
            if i >= self.steps:
                return
            yield batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stage(trainer: Trainer, stage: int, steps: int, warmup: int) -> dict[str, float]:
    """Seconds per step of ``stage`` after ``warmup`` steps (compilation, allocator, worker start-up)."""
    model = trainer.prepare_stage(stage)
    parts = trainer.stage_parts(stage, model)
    sampler, batches, loss_fn, optimizer = parts.sampler, parts.batches, parts.loss, parts.optimizer
    net = trainer.wrap(model)
    trainer.set_train_mode(stage)
    steps_per_epoch = len(batches)
    sampler.set_epoch(0)
    trainer.train_epoch(net, loss_fn, optimizer, Limited(batches, warmup), stage, 0)
    synchronize(trainer.device)
    sampler.set_epoch(1)
    timed = Limited(batches, steps or steps_per_epoch)
    began = time.perf_counter()
    trainer.train_epoch(net, loss_fn, optimizer, timed, stage, 1)
    synchronize(trainer.device)
    seconds = time.perf_counter() - began
    per_step = seconds / len(timed)
    return {"steps_timed": len(timed), "steps_per_epoch": steps_per_epoch, "seconds_per_step": per_step,
            "seconds_per_epoch": per_step * steps_per_epoch,
            "images_per_second": trainer.section(stage)["batch_size"] / per_step}


def make_trainer(recipe: dict[str, Any], device: torch.device, fast: bool, compile_model: bool, out: Path,
                 amp: bool) -> Trainer:
    options = RunOptions(out=out, device=device, fast=fast, compile=compile_model and fast,
                         amp=fast and amp, channels_last=fast and amp, progress=False)
    return create_trainer(recipe, options, DistInfo())


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_units": cpu_has_fast_bf16()}
    model = cpu_model()
    if model:
        info["cpu_model"] = model
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("GCL_ZOO_DATA", "../shared/data") + "/cifar10/cifar10.zip")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=0, help="time this many steps per pipeline (0: a whole epoch)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, worker start-up)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the authors'-style pipeline")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model on the fast path")
    parser.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                        help="bf16 autocast + channels_last on the fast path (auto: on CUDA only)")
    parser.add_argument("--smoke", action="store_true", help="a small subset of the data, to try the script on a CPU")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/train_speed_<device>.json)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    recipe = load_recipe("cifar10_lt", {"data_root": args.data_root, "workers": args.workers,
                                        **(SMOKE if args.smoke else {})})
    amp = device.type == "cuda" if args.amp == "auto" else args.amp == "on"
    suffix = ("_bf16" if amp and device.type == "cpu" else "") + ("_compile" if args.compile else "")
    out = args.out or RESULTS / f"train_speed_{device.type}{suffix}.json"
    settings: dict[str, Any] = {"benchmark": "stage-1 seconds per epoch, CIFAR-10-LT r100, ResNet-32, batch 64",
                                "device": str(device), "compile": args.compile, "fast_path_bf16_channels_last": amp,
                                "steps": args.steps or "one epoch", "smoke": args.smoke}
    earlier = read_json(out)
    results: dict[str, Any] = {**(earlier if all(earlier.get(k) == v for k, v in settings.items()) else {}),
                               **settings, "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        def timed(key: str, trainer: Callable[[], Trainer], stage: int) -> None:
            """Time ``stage`` of ``trainer()`` unless an earlier call did, and write the results at once."""
            if key in results:
                print(f"{key}: timed by an earlier call", flush=True)
                return
            results[key] = time_stage(trainer(), stage, args.steps, args.warmup)
            write_json(out, results)

        timed("loader", lambda: make_trainer(recipe, device, fast=False, compile_model=False, out=Path(tmp),
                                             amp=False), 1)
        fast = functools.lru_cache(maxsize=1)(  # one trainer times both stages
            lambda: make_trainer(recipe, device, fast=True, compile_model=args.compile, out=Path(tmp), amp=amp))
        timed("fast", fast, 1)
        timed("fast_stage2", fast, 2)
        fast.cache_clear()
        if args.compile:
            timed("fast_eager", lambda: make_trainer(recipe, device, fast=True, compile_model=False, out=Path(tmp),
                                                     amp=amp), 1)
            results["compile_speedup"] = (results["fast_eager"]["seconds_per_epoch"]
                                          / results["fast"]["seconds_per_epoch"])
    ratio = results["loader"]["seconds_per_epoch"] / results["fast"]["seconds_per_epoch"]
    results["speedup"] = ratio
    s1, s2 = recipe["epochs"], recipe["stage2"]["epochs"]
    results["estimated_full_recipe_seconds"] = {
        "loader": s1 * results["loader"]["seconds_per_epoch"],
        "fast": s1 * results["fast"]["seconds_per_epoch"] + s2 * results["fast_stage2"]["seconds_per_epoch"]}
    print(f"\n{results['benchmark']} on {device} ({results['machine'].get('gpu') or results['machine'].get('cpu_model')})")
    print(f"{'pipeline':<22}{'s/epoch':>10}{'images/s':>11}{'steps timed':>13}")
    for key, label in (("loader", "DataLoader + PIL"), ("fast", "fast (device-resident)"),
                       ("fast_stage2", "fast, stage 2"), ("fast_eager", "fast, not compiled")):
        if key not in results:
            continue
        r = results[key]
        print(f"{label:<22}{r['seconds_per_epoch']:>10.2f}{r['images_per_second']:>11.0f}{r['steps_timed']:>13}")
    est = results["estimated_full_recipe_seconds"]
    print(f"speed-up of the fast path: {ratio:.2f}x; estimated full recipe ({s1} + {s2} epochs): "
          f"fast {est['fast'] / 60:.1f} min, DataLoader stage 1 alone {est['loader'] / 60:.1f} min")
    if "compile_speedup" in results:
        print(f"speed-up of torch.compile on the fast path: {results['compile_speedup']:.2f}x")
    write_json(out, results)
    print(f"wrote {out}")
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
