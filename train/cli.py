"""``gcl-zoo train``: run a recipe (both stages by default), resume a run, or run under torchrun (DDP).

Reads top to bottom: ``main``, then ``run`` (one run, start to finish), then the start-up it calls: seeding
(``create_trainer``) and the process-wide state (``start_process``: device, process group, cuDNN and determinism)
are set here and nowhere else; then the resolution of the command line or a resumed run folder, and the parser.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gcl_zoo.devices import resolve_device, slow_bf16_warning
from gcl_zoo.folders import WEIGHTS_NAME
from gcl_zoo.models.weights import WeightsNotCachedError

from .checkpoint import check_writable, load_checkpoint
from .data import is_small_image_data
from .distributed import DistInfo, broadcast_error, group_local_rank, init_distributed
from .engine import RunOptions, Trainer, TrainingError, rank_seed
from .preemption import EXIT_STOPPED, StopRequested, StopSignal
from .recipes import RecipeError, add_override_flags, available_recipes, load_recipe, overrides_from_args
from .run_folder import RunFolder
from .validation import validation_sizes

log = logging.getLogger(__name__)

# runtime options that a resumed run takes from run.json
RUNTIME_KEYS = ("stage", "device", "seed", "deterministic", "fast", "compile", "amp", "channels_last",
                "stage1_checkpoint", "tensorboard", "no_test")


def main(argv: list[str] | None = None, command: str = "train") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        run(args, argv)
    except StopRequested as stopped:
        print(f"gcl-zoo train: {stopped}", file=sys.stderr)
        return EXIT_STOPPED
    except (RecipeError, FileNotFoundError, FileExistsError, PermissionError, OSError, TrainingError, ValueError,
            WeightsNotCachedError) as exc:
        print(f"gcl-zoo train: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """One run: set the process up, build the trainer, train, and write the run folder's records."""
    recipe, runtime, folder, state = prepare_run(args)
    created = not folder.path.exists()
    try:
        device, dist_info = start_process(runtime["device"], runtime["deterministic"])
        configure_logging(dist_info)
        check_output_folder(folder, recipe, dist_info)
        stages = {"1": [1], "2": [2], "both": [1, 2]}[runtime["stage"]]
        options = RunOptions(
            out=folder.path, stages=stages, device=device, seed=runtime["seed"], fast=_switch(runtime["fast"], device),
            compile=runtime["compile"], amp=_switch(runtime["amp"], device),
            channels_last=_switch(runtime["channels_last"], device),
            stage1_checkpoint=Path(runtime["stage1_checkpoint"]) if runtime["stage1_checkpoint"] else None,
            progress=not args.no_progress, tensorboard=runtime["tensorboard"],
            read_test=not runtime.get("no_test", False))
        warning = slow_bf16_warning(device, options.amp)
        if warning:
            log.warning(warning)
        trainer = create_trainer(recipe, options, dist_info)
        sizes, small = validation_sizes(list(trainer.data.val.cls_num_list), trainer.data.classes)
        log.info(sizes)
        if small:
            log.warning(small)
        global_batch = {f"stage{stage}": trainer.section(stage)["batch_size"] * dist_info.world for stage in stages}
        # batch_size is per process, as in timm: say what that makes, so a multi-GPU run's batch is never a surprise
        log.info(f"{dist_info.world} process(es) x batch_size per process = global batch " + ", ".join(
            f"stage {stage}: {trainer.section(stage)['batch_size']} x {dist_info.world} = "
            f"{global_batch[f'stage{stage}']}" for stage in stages))
        if dist_info.is_main:
            if state is None:
                folder.start(recipe, {
                    "command": "gcl-zoo train " + " ".join(shlex.quote(a) for a in argv), "options": runtime,
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "world_size": dist_info.world, "global_batch": global_batch, "fast_path": trainer.fast,
                    "torch": torch.__version__, "validation": trainer.data.validation_summary(),
                    "backbone_weights": trainer.model.backbone_origin})
            else:
                folder.rewrite_metrics(state["history"])
        with StopSignal(dist_info, device) as stop:
            final = trainer.run(resume=state, stop=stop)
        if dist_info.is_main:
            final.update({"dataset": recipe["dataset"], "split": trainer.final_split, "final_epoch": True,
                          "stages": stages, "checkpoint": WEIGHTS_NAME})
            folder.finish(final)
            summary = {k: final.get(k) for k in ("top1", "top5", "many", "medium", "few")}
            split_name = "test" if trainer.final_split == "test" else "validation"
            log.info(f"final (last epoch) {split_name} accuracy: " + ", ".join(
                f"{k} {v:.2f}" for k, v in summary.items() if v is not None))
        return final
    except Exception:
        if created and folder.path.is_dir() and not any(folder.path.iterdir()):
            # refused before anything was written (missing data, bad settings): leave no empty folder
            folder.path.rmdir()
        raise


def create_trainer(recipe: dict[str, Any], options: RunOptions, dist_info: DistInfo) -> Trainer:
    """The trainer, seeded: every rank builds the same initial weights from ``options.seed``, then each rank other
    than 0 draws its own crops, flips, mixup pairs and noise (rank 0 continues a one-process run's stream)."""
    torch.manual_seed(options.seed)
    trainer = Trainer(recipe, options, dist_info)
    if dist_info.rank:
        torch.manual_seed(rank_seed(options.seed, dist_info.rank))
    return trainer


def start_process(device_name: str, deterministic: bool) -> tuple[torch.device, DistInfo]:
    """The process-wide state a run needs, set in this one place: the device, the torchrun group, and
    deterministic kernels (``--deterministic``) or cuDNN's autotuner."""
    device, dist_info = setup_process(device_name)
    set_determinism(deterministic)
    return device, dist_info


def setup_process(device_name: str) -> tuple[torch.device, DistInfo]:
    """This process's device, then its place in the torchrun group: the device first, because NCCL binds to it."""
    device = resolve_device(device_name, group_local_rank())
    return device, init_distributed(device)


def set_determinism(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def prepare_run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], RunFolder,
                                                   dict[str, Any] | None]:
    """Resolve (recipe, runtime options, run folder, resume state) from the command line or a run folder."""
    if args.resume:
        folder = RunFolder(args.resume)
        if not folder.is_run():
            raise FileNotFoundError(f"{folder.path} is not a run folder ({folder.recipe_file.name} and {folder.run_file.name} are missing); "
                                    "pass the --out folder of the run to resume")
        state = load_checkpoint(folder.checkpoint_file) if folder.checkpoint_file.is_file() else None
        return folder.read_recipe(), folder.read_info()["options"], folder, state
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
    return recipe, runtime, RunFolder(args.out), None


def check_output_folder(folder: RunFolder, recipe: dict[str, Any], dist_info: DistInfo) -> None:
    """Refuse, on every rank, an output folder rank 0 cannot write or whose disk is too full."""
    error = ""
    if dist_info.is_main:
        try:
            check_writable(folder.path, estimate_checkpoint_bytes(recipe))
        except OSError as exc:
            error = str(exc)
    error = broadcast_error(error)
    if error:
        raise OSError(error)


def estimate_checkpoint_bytes(recipe: dict[str, Any]) -> int:
    """A generous bound for checkpoint + model files: ResNet-152 is ~240 MB in float32, x3 with SGD state."""
    small = is_small_image_data(recipe) and recipe["model"].startswith("cifar_")
    return (16 if small else 1024) * 2**20


class _ProgressSafeLines(logging.Handler):
    """A message as one plain line (warnings as ``gcl-zoo train: warning: ...`` on stderr), written around any
    progress bar on screen."""

    def emit(self, record: logging.LogRecord) -> None:
        warning = record.levelno >= logging.WARNING
        text = f"gcl-zoo train: {record.levelname.lower()}: {record.getMessage()}" if warning else record.getMessage()
        tqdm.write(text, file=sys.stderr if warning else sys.stdout)


def configure_logging(dist_info: DistInfo) -> None:
    """The trainer's modules log under this package's logger: its messages go out as plain lines from rank 0, and
    the other ranks of a DDP run say only errors (one line per message, not one per process)."""
    package = logging.getLogger(__package__)
    package.handlers[:] = [_ProgressSafeLines()]
    package.setLevel(logging.INFO if dist_info.is_main else logging.ERROR)
    package.propagate = False


def _switch(value: str, device: torch.device) -> bool:
    return device.type == "cuda" if value == "auto" else value == "on"


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
