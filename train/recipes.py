"""Training recipes: flat YAML files under ``train/recipes/``, validated, overridable field by field.

A recipe is a flat mapping whose keys map one-to-one onto factory arguments (optimizer, schedule, loss, sampler,
data) plus one nested ``stage2`` mapping for classifier re-training. Every field can be overridden on the
command line (``--lr 0.05``, ``--imb-ratio 50``, ``--stage2.sampler class_balanced``); unknown fields and
values of the wrong type are errors that name the field.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gcl_zoo.heads import RETRAIN_METHODS
from gcl_zoo.losses import CLOUD_STRATEGIES
from gcl_zoo.sampling import SAMPLERS

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
DATASETS = ("cifar10_lt", "cifar100_lt", "imagenet_lt", "inat18", "places_lt", "imagefolder", "listfile")
LOSSES = ("gcl", "ce", "focal", "ldam", "logit_adjusted", "balanced_softmax")
SCHEDULES = ("step", "cosine", "constant")


@dataclass(frozen=True)
class Field:
    type: type
    help: str
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    is_list: bool = False


_OPTIM_FIELDS = {
    "epochs": Field(int, "training epochs"),
    "batch_size": Field(int, "images per step and process (under DDP the global batch is batch_size x world size)"),
    "drop_last": Field(bool, "drop the epoch's short last batch (false: train on it, as the authors do; "
                             "true: every step has the same shape, which torch.compile prefers)"),
    "opt": Field(str, "optimizer name for timm.optim.create_optimizer_v2"),
    "lr": Field(float, "peak learning rate"),
    "momentum": Field(float, "SGD momentum"),
    "weight_decay": Field(float, "weight decay (applied to every parameter, as in the authors' code)"),
    "sched": Field(str, "learning-rate schedule", SCHEDULES),
    "warmup_epochs": Field(int, "linear warm-up epochs: lr * (1 + e) / warmup_epochs"),
    "mixup_alpha": Field(float, "mixup Beta(alpha, alpha); 0 switches mixup off"),
    "sampler": Field(str, "sampler", tuple(SAMPLERS) + ("cben_paper",)),
    "loss": Field(str, "loss", LOSSES),
    "s": Field(float, "logit scale"),
    "m": Field(float, "target margin"),
    "noise_mul": Field(float, "GCL cloud amplitude (0 = no cloud)"),
    "gamma": Field(float, "focal factor exponent"),
}

FIELDS: dict[str, Field] = {
    "dataset": Field(str, "data set kind", DATASETS),
    "data_root": Field(str, "image folder or zip (CIFAR: torchvision root or ImageFolder)", nullable=True),
    "train_list": Field(str, "list file of training images (path label)", nullable=True),
    "test_list": Field(str, "list file of test images", nullable=True),
    "val_list": Field(str, "list file of validation images; null: the data set's published list (ImageNet-LT, "
                           "Places-LT), else a carve from the training list", nullable=True),
    "train_dir": Field(str, "ImageFolder of training images", nullable=True),
    "test_dir": Field(str, "ImageFolder of test images", nullable=True),
    "val_dir": Field(str, "ImageFolder of validation images; null: a carve from the training images", nullable=True),
    "val_fraction": Field(float, "the carve's share of each class: round(val_fraction x n) of its n training images"),
    "val_min_train": Field(int, "the carve never leaves a class fewer training images than this (smaller classes "
                                "give none)"),
    "val_seed": Field(int, "seed of the validation carve"),
    "num_classes": Field(int, "class count of a list-file data set; null: the data set's standard count", nullable=True),
    "imb_ratio": Field(float, "CIFAR-LT imbalance ratio n_max / n_min"),
    "imb_profile": Field(str, "CIFAR-LT imbalance profile", ("exp", "step")),
    "imb_seed": Field(int, "seed of the CIFAR-LT subsampling (0 gives the standard subsets)"),
    "max_per_class": Field(int, "cap on the largest class (for quick runs); null keeps all", nullable=True),
    "test_per_class": Field(int, "test images per class (for quick runs); null keeps all", nullable=True),
    "val_per_class": Field(int, "CIFAR-LT validation images per class, from the training images the long-tailed "
                                "subset leaves unused (all of them where fewer); null: 500 for CIFAR-10, 20 for "
                                "CIFAR-100; 0: no validation split", nullable=True),
    "model": Field(str, "timm backbone name"),
    "pretrained_backbone": Field(bool, "start from the backbone's pretrained weights (timm's default tag, from the "
                                       "Hub or its cache)"),
    "pretrained_path": Field(str, "start the backbone from this local weights file instead (.safetensors, or a "
                                  ".pth/.pt state dict or timm checkpoint; its classifier is dropped); given, it is "
                                  "loaded whatever pretrained_backbone says", nullable=True),
    "head": Field(str, "classifier head", ("cosine", "linear")),
    "img_size": Field(int, "training image size"),
    "workers": Field(int, "DataLoader worker processes"),
    "eval_every": Field(int, "evaluate on the validation split every N epochs and at each stage's last epoch (the "
                             "test split: at each stage's last epoch only)"),
    **_OPTIM_FIELDS,
    "decay_epochs": Field(int, "epochs at which the step schedule multiplies lr by decay_rate", is_list=True),
    "decay_rate": Field(float, "step schedule factor"),
    "cloud": Field(str, "GCL cloud-size strategy", CLOUD_STRATEGIES),
    "drw_epoch": Field(int, "deferred re-weighting starts at this epoch (LDAM-DRW); null: never", nullable=True),
    "bad_images": Field(str, "folder and list-file data: read every image before training and stop listing the "
                             "unreadable ones (fail), leave bad training images out (skip), or read nothing ahead "
                             "(unchecked)", ("fail", "skip", "unchecked")),
}

STAGE2_FIELDS: dict[str, Field] = {
    **_OPTIM_FIELDS,
    "cben_a": Field(float, "CBEN a"),
    "cben_b": Field(float, "CBEN b"),
    "method": Field(str, "re-training method", RETRAIN_METHODS),
    "tau": Field(float, "tau for tau-normalisation"),
    "fresh_head": Field(bool, "cRT from a freshly initialised head instead of the stage-1 head"),
}

DEFAULTS = {"max_per_class": None, "test_per_class": None, "drw_epoch": None, "imb_ratio": 100.0,
            "imb_profile": "exp", "imb_seed": 0, "data_root": None, "train_list": None, "test_list": None,
            "train_dir": None, "test_dir": None, "num_classes": None, "pretrained_path": None, "decay_epochs": [], "decay_rate": 0.1, "cloud": "log",
            "drop_last": False, "bad_images": "fail", "val_list": None, "val_dir": None, "val_per_class": None,
            "val_fraction": 0.1, "val_min_train": 5, "val_seed": 0}
STAGE2_DEFAULTS = {"drop_last": False, "fresh_head": False, "cben_a": 0.9999, "cben_b": 1e-5, "tau": 1.0}


class RecipeError(ValueError):
    """A recipe file or override that cannot be used as it is."""


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = RECIPE_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise RecipeError(f"unknown recipe {str(name_or_path)!r}; use one of {', '.join(available_recipes())} "
                      "or the path of a .yaml recipe file")


def _coerce(name: str, spec: Field, value: Any) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise RecipeError(f"recipe field {name!r} must not be null")
    if spec.is_list:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"recipe field {name!r} must be a list of {spec.type.__name__}, got {value!r}")
        return [_coerce(name, Field(spec.type, spec.help), v) for v in value]
    try:
        if spec.type is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("true", "1", "yes")
            elif not isinstance(value, bool):
                raise ValueError(value)
        elif spec.type is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            value = int(value)
        elif spec.type is float:
            if isinstance(value, bool):
                raise ValueError(value)
            value = float(value)
        else:
            value = str(value)
    except (TypeError, ValueError):
        raise RecipeError(f"recipe field {name!r} must be {spec.type.__name__}, got {value!r}") from None
    if spec.choices and value not in spec.choices:
        raise RecipeError(f"recipe field {name!r} is {value!r}; choose one of {', '.join(spec.choices)}")
    return value


def _validate_section(raw: dict[str, Any], fields: dict[str, Field], defaults: dict[str, Any], where: str) -> dict:
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise RecipeError(f"unknown {where} field(s) {', '.join(map(repr, unknown))}; valid fields: "
                          f"{', '.join(sorted(fields))}")
    merged = {**copy.deepcopy(defaults), **raw}
    missing = sorted(set(fields) - set(merged))
    if missing:
        raise RecipeError(f"{where} is missing field(s) {', '.join(missing)}")
    return {k: _coerce(f"{where}.{k}" if where == "stage2" else k, fields[k], merged[k]) for k in fields}


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Check every field's name, type and choice; fill optional fields with defaults."""
    if not isinstance(raw, dict):
        raise RecipeError("a recipe must be a YAML mapping of field: value")
    raw = dict(raw)
    stage2 = raw.pop("stage2", None)
    raw.pop("recipe", None)
    recipe = _validate_section(raw, FIELDS, DEFAULTS, "recipe")
    if not isinstance(stage2, dict):
        raise RecipeError("a recipe needs a 'stage2' mapping with the classifier re-training settings")
    recipe["stage2"] = _validate_section(stage2, STAGE2_FIELDS, STAGE2_DEFAULTS, "stage2")
    for section, where in ((recipe, "recipe"), (recipe["stage2"], "stage2")):
        for key in ("epochs", "batch_size"):
            if section[key] < 1:
                raise RecipeError(f"{where} field {key!r} must be >= 1, got {section[key]}")
        if section["lr"] <= 0:
            raise RecipeError(f"{where} field 'lr' must be > 0")
        if section["mixup_alpha"] < 0:
            raise RecipeError(f"{where} field 'mixup_alpha' must be >= 0 (0 switches mixup off)")
    if recipe["imb_ratio"] < 1:
        raise RecipeError("recipe field 'imb_ratio' must be >= 1 (n_max / n_min)")
    _validate_validation_fields(recipe)
    return recipe


def _validate_validation_fields(recipe: dict[str, Any]) -> None:
    """A validation carve must leave every class some training images; a CIFAR split cannot be negative."""
    if not 0 <= recipe["val_fraction"] < 1:
        raise RecipeError(f"recipe field 'val_fraction' must be in [0, 1) (0: no carve), got {recipe['val_fraction']}")
    if recipe["val_min_train"] < 1:
        raise RecipeError("recipe field 'val_min_train' must be >= 1: every class keeps training images")
    if recipe["val_per_class"] is not None and recipe["val_per_class"] < 0:
        raise RecipeError("recipe field 'val_per_class' must be >= 0 (0: no validation split)")


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a recipe by name or path, apply ``{"field": value, "stage2.field": value}`` overrides, validate."""
    path = recipe_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from None
    raw = apply_overrides(raw, overrides or {})
    recipe = validate(raw)
    recipe["recipe"] = path.stem
    return recipe


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        if key.startswith("stage2."):
            raw.setdefault("stage2", {})[key.split(".", 1)[1]] = value
        else:
            raw[key] = value
    return raw


def add_override_flags(parser, sections: Sequence[tuple[str, dict[str, Field]]] = (("", FIELDS), ("stage2.", STAGE2_FIELDS))) -> None:
    """One ``--field`` flag per recipe field (``--stage2.field`` for stage 2); values are parsed by ``validate``."""
    group = parser.add_argument_group("recipe overrides (every recipe field; unset flags keep the recipe's value)")
    for prefix, fields in sections:
        for name, spec in fields.items():
            flags = [f"--{prefix}{name}"]
            if "_" in name:
                flags.append(f"--{prefix}{name.replace('_', '-')}")
            kwargs = {"dest": f"{prefix}{name}", "default": None, "metavar": spec.type.__name__.upper(),
                      "help": spec.help + (f" ({'|'.join(spec.choices)})" if spec.choices else "")}
            if spec.is_list:
                kwargs["nargs"] = "*"
            group.add_argument(*flags, **kwargs)


def overrides_from_args(args) -> dict[str, Any]:
    """The override flags the user actually set; 'null'/'none' sets a nullable field to null."""
    out = {}
    for prefix, fields in (("", FIELDS), ("stage2.", STAGE2_FIELDS)):
        for name, spec in fields.items():
            value = getattr(args, f"{prefix}{name}", None)
            if value is None:
                continue
            if isinstance(value, str) and value.lower() in ("null", "none") and spec.nullable:
                value = None
            out[f"{prefix}{name}"] = value
    return out


def dump_recipe(recipe: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe, sort_keys=False))
