"""``gcl-zoo train``: run a recipe (both stages by default), resume a run, or run under torchrun (DDP)."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import yaml

from gcl_zoo.devices import resolve_device, slow_bf16_warning

from .checkpoint import CHECKPOINT_NAME, check_writable, load_checkpoint
from .distributed import DistInfo, broadcast_error, group_local_rank, init_distributed
from .engine import RunOptions, Trainer, TrainingError
from .preemption import EXIT_STOPPED, StopRequested, StopSignal
from .recipes import RECIPE_FILE, RecipeError, add_override_flags, available_recipes, dump_recipe, load_recipe, overrides_from_args

RUN_FILE = "run.json"
# runtime options that a resumed run takes from run.json
RUNTIME_KEYS = ("stage", "device", "seed", "deterministic", "fast", "compile", "amp", "channels_last",
                "stage1_checkpoint", "tensorboard", "no_test")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcl-zoo train", description="Train GCL (stage 1) and re-train the classifier (stage 2) on long-tailed data.",
        epilog=f"recipes: {', '.join(available_recipes())}")
    parser.add_argument("--recipe", help="recipe name or .yaml path (required unless --resume)")
    parser.add_argument("--out", type=Path, help="run folder (created; must be empty unless --resume)")
    parser.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder after a crash")
    parser.add_argument("--stage", choices=("1", "2", "both"), default="both",
                        help="stage 2 alone needs RUN/stage1 or --stage1-checkpoint")
    parser.add_argument("--stage1-checkpoint", type=Path, help="stage-1 model folder or model.safetensors for stage 2")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deterministic", action="store_true", help="deterministic kernels (for exact resumption)")
    parser.add_argument("--fast", choices=("auto", "on", "off"), default="auto",
                        help="device-resident data and augmentation for CIFAR-size data (auto: on for CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                        help="bf16 autocast (auto: on for CUDA only; on a CPU, use on only where it has AVX-512 "
                             "or AMX bf16 units)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="channels_last memory format (auto: on for CUDA)")
    parser.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard")
    parser.add_argument("--no-test", action="store_true",
                        help="a tuning run: judged on the validation split only, the test set never read (choose "
                             "settings with these, then train the chosen one without it for the record)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_override_flags(parser)
    return parser


def setup_process(device_name: str) -> Tuple[torch.device, DistInfo]:
    """This process's device, then its place in the torchrun group: the device first, because NCCL binds to it."""
    device = resolve_device(device_name, group_local_rank())
    return device, init_distributed(device)


def _switch(value: str, device: torch.device) -> bool:
    return device.type == "cuda" if value == "auto" else value == "on"


def set_determinism(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def estimate_checkpoint_bytes(recipe: Dict[str, Any]) -> int:
    """A generous bound for checkpoint + model files: ResNet-152 is ~240 MB in float32, x3 with SGD state."""
    small = recipe["dataset"] in ("cifar10_lt", "cifar100_lt") and recipe["model"].startswith("cifar_")
    return (16 if small else 1024) * 2**20


def prepare_run(args: argparse.Namespace) -> tuple:
    """Resolve (recipe, runtime options, resume state) from the command line or a run folder."""
    if args.resume:
        run_dir = args.resume
        recipe_file, run_file = run_dir / RECIPE_FILE, run_dir / RUN_FILE
        if not recipe_file.is_file() or not run_file.is_file():
            raise FileNotFoundError(f"{run_dir} is not a run folder ({RECIPE_FILE} and {RUN_FILE} are missing); "
                                    "pass the --out folder of the run to resume")
        recipe = yaml.safe_load(recipe_file.read_text())
        runtime = json.loads(run_file.read_text())["options"]
        state = load_checkpoint(run_dir / CHECKPOINT_NAME) if (run_dir / CHECKPOINT_NAME).is_file() else None
        return recipe, runtime, run_dir, state
    if not args.recipe:
        raise RecipeError("pass --recipe NAME (or --resume RUN); recipes: " + ", ".join(available_recipes()))
    if not args.out:
        raise RecipeError("pass --out RUN_FOLDER for the run's outputs")
    recipe = load_recipe(args.recipe, overrides_from_args(args))
    if args.out.exists() and any(args.out.iterdir()) and args.stage != "2":
        raise FileExistsError(f"run folder {args.out} is not empty; resume it with --resume {args.out} "
                              "or choose a new --out")
    runtime = {k: getattr(args, k) for k in RUNTIME_KEYS}
    runtime["stage1_checkpoint"] = str(args.stage1_checkpoint) if args.stage1_checkpoint else None
    return recipe, runtime, args.out, None


def run(args: argparse.Namespace, argv: List[str]) -> Dict[str, Any]:
    recipe, runtime, out, state = prepare_run(args)
    created = not out.exists()
    try:
        return _train(args, argv, recipe, runtime, out, state)
    except Exception:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # refused before anything was written (missing data, bad settings): leave no empty folder
        raise


def _train(args: argparse.Namespace, argv: List[str], recipe: Dict[str, Any], runtime: Dict[str, Any], out: Path,
           state: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    device, dist_info = setup_process(runtime["device"])
    set_determinism(runtime["deterministic"])
    error = ""
    if dist_info.is_main:
        try:
            check_writable(out, estimate_checkpoint_bytes(recipe))
        except OSError as exc:
            error = str(exc)
    error = broadcast_error(error)
    if error:
        raise OSError(error)
    stages = {"1": [1], "2": [2], "both": [1, 2]}[runtime["stage"]]
    options = RunOptions(
        out=out, stages=stages, device=device, seed=runtime["seed"], fast=_switch(runtime["fast"], device),
        compile=runtime["compile"], amp=_switch(runtime["amp"], device),
        channels_last=_switch(runtime["channels_last"], device),
        stage1_checkpoint=Path(runtime["stage1_checkpoint"]) if runtime["stage1_checkpoint"] else None,
        progress=not args.no_progress, tensorboard=runtime["tensorboard"],
        read_test=not runtime.get("no_test", False))
    warning = slow_bf16_warning(device, options.amp)
    if warning and dist_info.is_main:
        print(f"gcl-zoo train: warning: {warning}", file=sys.stderr)
    trainer = Trainer(recipe, options, dist_info)
    global_batch = {f"stage{stage}": trainer.section(stage)["batch_size"] * dist_info.world for stage in stages}
    run_info = {"command": "gcl-zoo train " + " ".join(shlex.quote(a) for a in argv), "options": runtime,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "world_size": dist_info.world, "global_batch": global_batch, "fast_path": trainer.fast,
                "torch": torch.__version__, "validation": trainer.data.validation_summary()}
    if dist_info.is_main:
        # batch_size is per process, as in timm: say what that makes, so a multi-GPU run's batch is never a surprise
        print(f"{dist_info.world} process(es) x batch_size per process = global batch " + ", ".join(
            f"{key.replace('stage', 'stage ')}: {trainer.section(int(key[-1]))['batch_size']} x {dist_info.world} = "
            f"{value}" for key, value in global_batch.items()), flush=True)
    if dist_info.is_main:
        if state is None:
            dump_recipe(recipe, out / RECIPE_FILE)
            run_info["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            (out / RUN_FILE).write_text(json.dumps(run_info, indent=2))
        else:
            _rewrite_metrics(out, state["history"])
    with StopSignal(dist_info, device) as stop:
        trainer.stop = stop
        final = trainer.run(resume=state)
    if dist_info.is_main:
        final.update({"dataset": recipe["dataset"], "split": trainer.final_split, "final_epoch": True,
                      "stages": stages, "checkpoint": "model.safetensors"})
        (out / "eval.json").write_text(json.dumps(final, indent=2))
        info = json.loads((out / RUN_FILE).read_text())
        info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        (out / RUN_FILE).write_text(json.dumps(info, indent=2))
        summary = {k: final.get(k) for k in ("top1", "top5", "many", "medium", "few")}
        split_name = "test" if trainer.final_split == "test" else "validation"
        print(f"final (last epoch) {split_name} accuracy: " + ", ".join(
            f"{k} {v:.2f}" for k, v in summary.items() if v is not None))
    return final


def _rewrite_metrics(out: Path, history: List[Dict[str, Any]]) -> None:
    """After a crash, metrics.jsonl holds exactly the epochs the checkpoint holds."""
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))


def main(argv: Optional[List[str]] = None, command: str = "train") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        run(args, argv)
    except StopRequested as stopped:
        print(f"gcl-zoo train: {stopped}", file=sys.stderr)
        return EXIT_STOPPED
    except (RecipeError, FileNotFoundError, FileExistsError, PermissionError, OSError, TrainingError, ValueError) as exc:
        print(f"gcl-zoo train: error: {exc}", file=sys.stderr)
        return 2
    return 0
