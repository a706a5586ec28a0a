"""Ship a finished training run as a zoo checkpoint: evaluate it independently, put its weights in the package,
keep its record under ``bench/results/<name>/`` and regenerate the model cards.

    python bench/ship_run.py runs/c10_gcl_ir100 gcl_resnet32_cifar10_lt.ir100 --data-root ../shared/data/cifar10/cifar10.zip

What it does, in order:
1. ``gcl-zoo eval`` of the run's final model (float32, full test set): ``eval.json`` and the per-class and t-SNE plots;
2. ``model.safetensors`` -> ``gcl_zoo/weights/<name>.safetensors`` and ``<name>.json`` beside it (that evaluation,
   the exact command, machine, wall time, recipe), which the model card and ``timm.list_pretrained`` read;
3. ``recipe.yaml``, ``run.json``, ``metrics.jsonl``, ``eval.json``, the plots and the training log ->
   ``bench/results/<name>/``, with the machine's absolute paths rewritten relative to the repository;
4. every shipped card under ``model_cards/`` regenerated.

``--record-only`` keeps a baseline's record without shipping it: steps 1 and 3, the stage-1 model evaluated the
same way (a one-stage baseline is the stage-1 model), and ``summary.json`` with both figures in the record.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gcl_zoo.devices import cpu_model  # noqa: E402
from gcl_zoo.folders import CONFIG_NAME, EVAL_NAME, RUN_INFO_NAME, RUN_RECIPE_NAME, WEIGHTS_NAME  # noqa: E402
from gcl_zoo.hub import write_shipped_cards  # noqa: E402
from gcl_zoo.models.weights import WEIGHTS_DIR  # noqa: E402
from train.evaluate import evaluate_run  # noqa: E402
from train.run_folder import METRICS_FILE, RunFolder  # noqa: E402

RESULTS = REPO / "bench" / "results"
RECORD_FILES = (RUN_RECIPE_NAME, RUN_INFO_NAME, METRICS_FILE, EVAL_NAME, "per_class_accuracy.png", "tsne.png")
SHIPPED_KEYS = ("top1", "top5", "many", "medium", "few", "per_class", "num_samples", "dataset", "split")


def repo_relative(text: str, data_root: Path) -> str:
    """Absolute paths of this machine as a reader would type them: data under ``../shared/data``, runs under the repo."""
    text = text.replace(str(data_root.resolve().parent.parent), "../shared/data")
    return re.sub(re.escape(str(REPO)) + r"/?", "", text)


def machine() -> str:
    cpu = cpu_model() or platform.processor() or platform.machine()
    return f"CPU ({os.cpu_count()}-core {cpu})"


def wall_minutes(run_info: dict[str, Any]) -> float:
    started, finished = (datetime.strptime(run_info[k], "%Y-%m-%dT%H:%M:%S%z") for k in ("started", "finished"))
    return round((finished - started).total_seconds() / 60, 1)


def _rounded(value: Any) -> Any:
    """Accuracies to two decimals, as the card shows them (the rest is float32 noise)."""
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="finished training run folder")
    parser.add_argument("name", help="zoo name with tag, e.g. gcl_resnet32_cifar10_lt.ir100")
    parser.add_argument("--data-root", type=Path, required=True, help="the data the run was trained on")
    parser.add_argument("--log", type=Path, help="the run's console log (default: RUN.log beside the folder)")
    parser.add_argument("--notes", default="", help="what a reader should know about how the run went")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="where shipped weights live")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where run records live")
    parser.add_argument("--cards-dir", type=Path, default=REPO / "model_cards", help="where shipped cards live")
    parser.add_argument("--record-only", action="store_true",
                        help="a baseline: keep its record (final and stage-1 evaluations), ship no weights")
    args = parser.parse_args()
    run, name = args.run, args.name
    report = evaluate_run(run, data_root=str(args.data_root), device="cpu")
    folder = RunFolder(run)
    run_info = folder.read_info()
    recipe = yaml.safe_load(repo_relative(folder.recipe_file.read_text(), args.data_root))
    options = run_info["options"]
    settings = ", ".join(k for k, on in (("bf16 autocast", options["amp"] == "on"),
                                          ("channels_last", options["channels_last"] == "on"),
                                          ("device-resident data path", run_info.get("fast_path")),
                                          ("torch.compile", options.get("compile"))) if on)
    shipped = {k: _rounded(report.get(k)) for k in SHIPPED_KEYS}
    shipped.update({
        "imb_ratio": recipe["imb_ratio"], "final_epoch": True,
        "command": repo_relative(run_info["command"], args.data_root),
        "device": f"{machine()}, {settings}" if run_info["device"] == "cpu" else run_info["device"],
        "train_minutes": wall_minutes(run_info),
        "notes": " ".join(filter(None, [
            f"The authors' full recipe ({recipe['epochs']} + {recipe['stage2']['epochs']} epochs, "
            f"train/recipes/{recipe['recipe']}.yaml). Accuracy is the final epoch, evaluated in float32 with "
            f"`gcl-zoo eval` on the full {report['num_samples']:,}-image test set; nothing was selected on it.",
            args.notes])),
        "recipe": recipe,
        "eval_command": repo_relative(f"gcl-zoo eval {run} --data-root {args.data_root.resolve()} --device cpu",
                                      args.data_root),
    })
    record = args.results_dir / name
    record.mkdir(parents=True, exist_ok=True)
    if args.record_only:
        stage1 = {k: _rounded(v) for k, v in evaluate_stage1(run, args.data_root).items() if k in SHIPPED_KEYS}
        (record / "summary.json").write_text(json.dumps({"final": shipped, "stage1": stage1}, indent=2) + "\n")
    else:
        args.weights_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / WEIGHTS_NAME, args.weights_dir / f"{name}.safetensors")
        (args.weights_dir / f"{name}.json").write_text(json.dumps(shipped, indent=2) + "\n")
    for file in RECORD_FILES:
        source = run / file
        if source.suffix in (".json", ".jsonl", ".yaml"):
            (record / file).write_text(repo_relative(source.read_text(), args.data_root))
        else:
            shutil.copyfile(source, record / file)
    log = args.log or run.with_suffix(".log")
    if log.is_file():
        (record / "train.log").write_text(repo_relative(log.read_text(), args.data_root))
    groups = ", ".join(f"{k} {report[k]:.2f}" for k in ("top1", "many", "medium", "few") if report.get(k) is not None)
    if args.record_only:
        print(f"recorded {name}: {groups} (stage 1 alone: top1 {stage1['top1']:.2f}); record in {record}")
        return 0
    cards = write_shipped_cards(args.cards_dir, args.weights_dir)
    print(f"shipped {name}: {groups}; record in {record}; {len(cards)} cards regenerated")
    return 0


def evaluate_stage1(run: Path, data_root: Path) -> dict[str, Any]:
    """The run's stage-1 model evaluated as ``gcl-zoo eval`` evaluates the final one (float32, full test set)."""
    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp)
        folder = RunFolder(run)
        for source in (folder.recipe_file, folder.run_file, folder.stage1_dir / WEIGHTS_NAME,
                       folder.stage1_dir / CONFIG_NAME):
            shutil.copyfile(source, view / source.name)
        return evaluate_run(view, data_root=str(data_root), device="cpu", tsne_samples=0)


if __name__ == "__main__":
    raise SystemExit(main())
