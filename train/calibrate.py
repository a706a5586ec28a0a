"""``gcl-zoo calibrate FOLDER``: refit a trained model's calibration and source prior on its validation split.

Training calibrates its final model by itself; this recalibrates one without retraining (a model trained before
calibration existed, or after the validation split changed). FOLDER is a training run (``recipe.yaml``) or an
exported model folder (``train_hparams.yaml``): its recipe names the data, and so the validation split. Only
``model.safetensors`` (the ``logit_scale``, ``class_scale``, ``logit_bias``, ``implied_prior`` and ``source_images`` buffers, and ``train_class_counts`` where the
weights did not carry them yet) and ``config.json`` (``model_args`` and the ``calibration`` record) change, each replaced atomically; every other file and config entry is kept, and the
ONNX graphs stay valid, since they compute the raw logits.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import timm
import torch
import yaml
from timm.data import resolve_model_data_config

import gcl_zoo  # noqa: F401  (registers the architectures)
from gcl_zoo.calibration import calibrate_model
from gcl_zoo.devices import resolve_device
from gcl_zoo.folders import CONFIG_NAME, RECIPE_NAME, RUN_RECIPE_NAME, TIMM_CONFIG_KEYS, WEIGHTS_NAME, read_json
from gcl_zoo.hub import save_model_folder
from gcl_zoo.models.gcl import GCLModel

from .data import DataBundle, build_data
from .predict import predict
from .recipes import RecipeError, validate

__all__ = ["folder_recipe", "load_folder_model", "validation_logits", "calibrate_folder", "main"]


def folder_recipe(folder: Path, data_root: str | None = None, workers: int = 2) -> dict[str, Any]:
    """The resolved recipe a run (``recipe.yaml``) or exported folder (``train_hparams.yaml``) was trained with,
    set up to read held-out data only (no read-ahead of the training set) from ``data_root`` if given."""
    recipe_file = next((folder / name for name in (RUN_RECIPE_NAME, RECIPE_NAME) if (folder / name).is_file()), None)
    if recipe_file is None:
        raise FileNotFoundError(f"{folder} has neither {RUN_RECIPE_NAME} nor {RECIPE_NAME}; pass the --out folder of a "
                                "training run or a folder written by gcl-zoo export")
    raw = yaml.safe_load(recipe_file.read_text())
    raw.pop("recipe", None)
    if data_root:
        raw["data_root"] = data_root
    raw["workers"] = workers
    raw["bad_images"] = "unchecked"
    return validate(raw)


def load_folder_model(folder: Path) -> torch.nn.Module:
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} holds no final model ({WEIGHTS_NAME} + {CONFIG_NAME}); "
                                "finish the training run first (gcl-zoo train --resume RUN)")
    return timm.create_model(f"local-dir:{folder}", pretrained=True)


def validation_logits(model: torch.nn.Module, recipe: dict[str, Any], device: torch.device,
                      workers: int = 2) -> tuple:
    """The model's raw logits and the labels of the recipe's validation split, and the data bundle."""
    bundle: DataBundle = build_data(recipe, resolve_model_data_config(model))
    if not len(bundle.val):
        raise ValueError("the recipe's validation split is empty (val_per_class 0?); calibration needs held-out "
                         "images: set val_per_class, val_fraction, val_list or val_dir")
    out = predict(model, bundle, device, workers=workers, split="val")
    return out["logits"], out["targets"], bundle


def calibrate_folder(folder: Path, data_root: str | None = None, device: str = "auto",
                     workers: int = 2) -> dict[str, Any]:
    """Recalibrate the model in ``folder`` in place; returns its new ``calibration`` record."""
    recipe = folder_recipe(folder, data_root, workers)
    model = load_folder_model(folder)
    if not isinstance(model, GCLModel):
        raise ValueError(f"{folder} holds a {type(model).__name__}, not a GCL model; only GCL models carry a "
                         "calibrated scale")
    dev = resolve_device(device)
    model.to(dev)
    raw, targets, bundle = validation_logits(model, recipe, dev, workers)
    if not bool(model.train_class_counts.any()):  # a model saved before the counts travelled with the weights
        model.train_class_counts.copy_(torch.as_tensor(bundle.cls_num_list))
    config = read_json(folder / CONFIG_NAME)
    # a recalibration is bounded around the scale training ended with, not around an earlier calibration's
    training_scale = (config.get("calibration") or {}).get("logit_scale_before")
    record = calibrate_model(model, raw, targets, f"validation split: {bundle.validation_summary()['source']}",
                             training_scale=training_scale)
    kept = {k: v for k, v in config.items() if k not in TIMM_CONFIG_KEYS}
    save_model_folder(model.cpu(), folder, extra_config={**kept, "calibration": record})
    return record


def main(argv: list[str] | None = None, command: str = "calibrate") -> int:
    parser = argparse.ArgumentParser(prog=f"gcl-zoo {command}", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="training run folder or exported model folder")
    parser.add_argument("--data-root", help="read the validation images from here instead of the recipe's root")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        record = calibrate_folder(args.folder, args.data_root, args.device, args.workers)
    except (FileNotFoundError, RecipeError, ValueError, RuntimeError) as exc:
        print(f"gcl-zoo {command}: error: {exc}", file=sys.stderr)
        return 2
    before, after = record["before"], record["after"]
    if record.get("warning"):
        print(f"gcl-zoo {command}: warning: {record['warning']}", file=sys.stderr)
    print(f"{args.folder}: {record['method_key']} (lowest cross-validated NLL of "
          f"{', '.join(record['cross_validated_balanced_nll'])}), logit scale "
          f"{record['logit_scale_before']:.3g} -> {record['logit_scale']:.4g} on "
          f"{record['images']} validation images; NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
          f"ECE {before['ece']:.2f}% -> {after['ece']:.2f}%; wrote {WEIGHTS_NAME} and {CONFIG_NAME}")
    return 0
