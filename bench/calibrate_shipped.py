"""Calibrate every checkpoint shipped in the package on its validation split, without retraining, and record the
calibration on the full test set (read once per model, after the fit).

    python bench/calibrate_shipped.py --data-dir ../shared/data

For each ``gcl_zoo/weights/<name>.safetensors`` whose record names a recipe: the model is written as a model
folder with that recipe, recalibrated as ``gcl-zoo calibrate`` does (temperature, BCTS and vector scaling compared
by cross-validated class-balanced NLL on the validation split, the winner fitted there and balanced, the source
prior measured there, the training class counts added), then evaluated as ``gcl-zoo eval`` does (float32, full test
set: top-1, which the per-class biases can move, and ECE / NLL). The rule for the class without validation images
is measured on the three classes with the most training images that do have some (``missing_class_rule_check``).
The new weights replace the shipped ones, the record's accuracy and ``calibration`` are updated (the previous
figures kept under ``calibration.previous``), ``bench/results/<name>/`` gains ``calibration.json`` and
``reliability.png``, and the model cards are regenerated.

The extra seed runs under ``bench/results/seeds`` keep no final weights (only their records), so they cannot be
recalibrated without retraining.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import gcl_zoo  # noqa: E402,F401
from gcl_zoo.calibration import check_missing_class_rule  # noqa: E402
from gcl_zoo.files import replace_file  # noqa: E402
from gcl_zoo.folders import RUN_RECIPE_NAME, WEIGHTS_NAME  # noqa: E402
from gcl_zoo.hub import save_model_folder, write_shipped_cards  # noqa: E402
from gcl_zoo.models.weights import WEIGHTS_DIR  # noqa: E402
from train.calibrate import calibrate_folder, folder_recipe, load_folder_model, validation_logits  # noqa: E402
from train.evaluate import evaluate_run  # noqa: E402

RESULTS = REPO / "bench" / "results"
ACCURACY_KEYS = ("top1", "top5", "many", "medium", "few", "per_class")
DATA_ARCHIVE = {"cifar10_lt": "cifar10/cifar10.zip", "cifar100_lt": "cifar100/cifar100.zip"}


def _scores(result: dict[str, Any]) -> dict[str, float]:
    return {k: round(result[k], 4) for k in ("logit_scale", "ece", "nll", "mean_confidence")}


def calibrate_entry(name: str, data_dir: Path) -> dict[str, Any]:
    """Recalibrate one shipped checkpoint; returns the record's new ``calibration`` entry."""
    record_path = WEIGHTS_DIR / f"{name}.json"
    record = json.loads(record_path.read_text())
    recipe = record["recipe"]
    data_root = data_dir / DATA_ARCHIVE[recipe["dataset"]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_model_folder(timm.create_model(name, pretrained=True), folder)
        (folder / RUN_RECIPE_NAME).write_text(yaml.safe_dump(recipe, sort_keys=False))
        fitted = calibrate_folder(folder, str(data_root), device="cpu")
        rule_check = rule_check_of(folder, str(data_root), fitted)
        report = evaluate_run(folder, data_root=str(data_root), device="cpu", tsne_samples=0)
        replace_file(folder / WEIGHTS_NAME, WEIGHTS_DIR / f"{name}.safetensors")
        out = RESULTS / name
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "reliability.png", out / "reliability.png")
    test = report["calibration"]
    old = record.get("calibration") or {}
    previous = {"top1": record["top1"], "method": "temperature scaling", **(old.get("after") or {})}
    calibration = {
        "method": fitted["method"], "method_key": fitted["method_key"],
        "cross_validated_balanced_nll": fitted["cross_validated_balanced_nll"],
        "fitted_on": fitted["fitted_on"], "validation_images": fitted["images"],
        "classes_without_validation_images": fitted["classes_without_images"],
        "missing_class_rule": fitted["missing_class_rule"], "missing_class_rule_check": rule_check,
        "validation": {"before": {"logit_scale": fitted["logit_scale_before"], **fitted["before"]},
                       "after": {"logit_scale": fitted["logit_scale"], **fitted["after"]}},
        "before": _scores(test["before"]), "after": {**_scores(test["after"]), "top1": round(report["top1"], 2)},
        "previous": previous, "test_command": "gcl-zoo eval (float32, full test set)",
    }
    (RESULTS / name / "calibration.json").write_text(json.dumps(
        {**calibration, "test_bins": {k: v["bins"] for k, v in test.items()},
         "logit_bias": fitted["logit_bias"], "class_scale": fitted.get("class_scale"),
         "implied_prior": fitted["implied_prior"]}, indent=2) + "\n")
    # a group without classes (CIFAR-10-LT has no few-shot class at some ratios) stays None
    record.update({k: None if report[k] is None else round(report[k], 2) if k != "per_class"
                   else [round(v, 2) for v in report[k]] for k in ACCURACY_KEYS})
    record["calibration"] = calibration
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return calibration


def rule_check_of(folder: Path, data_root: str, fitted: dict[str, Any]) -> dict[str, Any]:
    """``check_missing_class_rule`` on the recalibrated model's validation logits, for the winning method."""
    model = load_folder_model(folder)
    raw, targets, bundle = validation_logits(model, folder_recipe(folder, data_root), torch.device("cpu"))
    counts = list(bundle.cls_num_list)
    present = sorted(set(targets.tolist()), key=lambda c: -counts[c])
    return check_missing_class_rule(raw, targets, fitted["method_key"], fitted["logit_scale_before"], counts,
                                    present[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder holding cifar10/cifar10.zip and cifar100/cifar100.zip")
    parser.add_argument("names", nargs="*", help="shipped names (default: all)")
    args = parser.parse_args()
    names = args.names or sorted(p.name[: -len(".safetensors")] for p in WEIGHTS_DIR.glob("*.safetensors"))
    print(f"{'checkpoint':34} {'method':>11} {'test top-1':>15} {'test ECE %':>13} {'test NLL':>15}   (previous -> now)")
    for name in names:
        c = calibrate_entry(name, args.data_dir)
        p, a = c["previous"], c["after"]
        print(f"{name:34} {c['method_key']:>11} {p['top1']:6.2f} -> {a['top1']:6.2f} "
              f"{p['ece']:5.2f} -> {a['ece']:5.2f} {p['nll']:6.3f} -> {a['nll']:6.3f}", flush=True)
    cards = write_shipped_cards(REPO / "model_cards", WEIGHTS_DIR)
    print(f"{len(cards)} cards regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
