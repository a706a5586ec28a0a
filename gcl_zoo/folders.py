"""Model folders in timm's Hugging Face layout (``model.safetensors`` + ``config.json``): written atomically, and
validated the way a loader would fail, with errors that name the file and field."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE
from timm.models import save_for_hf

from .files import replace_file

__all__ = ["save_model_folder", "validate_folder", "refuse_pickles", "read_json", "InvalidModelFolder",
           "WEIGHTS_NAME", "CONFIG_NAME", "RECIPE_NAME", "EVAL_NAME", "CARD_NAME", "RUN_RECIPE_NAME", "RUN_INFO_NAME",
           "TIMM_CONFIG_KEYS"]

WEIGHTS_NAME = SAFETENSORS_SINGLE_FILE  # the Hub's (and timm's) name for a model's weights: model.safetensors
CONFIG_NAME = "config.json"
RECIPE_NAME = "train_hparams.yaml"  # the run's recipe.yaml: the resolved training settings
EVAL_NAME = "eval.json"
CARD_NAME = "README.md"
# what an export reads from a training run folder besides the model (the trainer's train.run_folder names them all)
RUN_RECIPE_NAME = "recipe.yaml"  # the resolved recipe
RUN_INFO_NAME = "run.json"  # the training command, options and device
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".pkl", ".pickle", ".ckpt", ".tar")
# config.json keys timm reads; any other top-level key is the trainer's and is carried over on export
TIMM_CONFIG_KEYS = {"architecture", "num_classes", "num_features", "global_pool", "label_names", "label_descriptions",
                    "model_args", "pretrained_cfg"}

PathLike = str | Path


class InvalidModelFolder(ValueError):
    """A model folder that would not load (or should not be published); the message names the file and field."""


def save_model_folder(model: nn.Module, folder: PathLike, extra_config: dict[str, Any] | None = None) -> Path:
    """Write the model's weights and config into ``folder``, each file replaced atomically.

    The files are first written to a temporary folder beside them and then renamed into place, so a crash never
    leaves a half-written weights file where a loader would find it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_config: dict[str, Any] = dict(extra_config or {})
    labels = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if labels:
        model_config.setdefault("label_names", list(labels))
    model_args = model.model_args() if hasattr(model, "model_args") else None
    # safetensors stores contiguous tensors only: a channels_last model is saved in the default layout
    channels_last = any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters())
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    try:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        save_for_hf(model, staging, model_config=model_config, model_args=model_args, safe_serialization=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            replace_file(staging / name, folder / name)
    finally:
        if channels_last:
            model.to(memory_format=torch.channels_last)
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_json(path: Path) -> dict[str, Any]:
    """A JSON (or, for ``.yaml``/``.yml`` files, YAML) mapping; a clear error naming the file otherwise."""
    import yaml

    kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if kind == "YAML" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise InvalidModelFolder(f"{path}: not readable {kind} ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidModelFolder(f"{path}: expected a {kind} mapping, got {type(data).__name__}")
    return data


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from the safetensors header (reads no tensor data)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise InvalidModelFolder(f"{path}: not a readable safetensors file ({exc}); re-export the folder") from exc


def _check_config(config: dict[str, Any], path: Path) -> tuple[str, int]:
    """The architecture and class count a config declares, after checking they agree with each other."""
    import timm

    arch = config.get("architecture") or config.get("pretrained_cfg", {}).get("architecture")
    if not arch:
        raise InvalidModelFolder(f"{path}: no 'architecture' field; write the folder with gcl_zoo.hub.save_model_folder")
    if not timm.is_model(arch):
        hint = " (gcl_* models are registered by `import gcl_zoo`)" if not arch.startswith("gcl_") else ""
        raise InvalidModelFolder(f"{path}: field 'architecture' names {arch!r}, which timm does not know{hint};"
                                 f" fix the field or install the package that registers it")
    num_classes = config.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidModelFolder(f"{path}: field 'num_classes' must be a positive integer, got {num_classes!r}")
    cfg_classes = config.get("pretrained_cfg", {}).get("num_classes")
    if cfg_classes is not None and cfg_classes != num_classes:
        raise InvalidModelFolder(f"{path}: field 'num_classes' is {num_classes} but 'pretrained_cfg.num_classes' is"
                                 f" {cfg_classes}; they must agree")
    backbone = (config.get("model_args") or {}).get("backbone")
    if isinstance(backbone, str) and not timm.is_model(backbone):
        raise InvalidModelFolder(f"{path}: field 'model_args.backbone' names {backbone!r}, which timm does not know")
    labels = config.get("label_names")
    if labels is not None and len(labels) != num_classes:
        raise InvalidModelFolder(f"{path}: field 'label_names' has {len(labels)} names for num_classes={num_classes}")
    return arch, num_classes


def _check_classifier(config: dict[str, Any], shapes: dict[str, tuple[int, ...]], folder: Path) -> None:
    """The classifier in the weights has ``num_classes`` rows (the usual way a config and weights drift apart)."""
    classifiers = config.get("pretrained_cfg", {}).get("classifier") or ()
    for name in [classifiers] if isinstance(classifiers, str) else classifiers:
        shape = shapes.get(f"{name}.weight")
        if shape and shape[0] != config["num_classes"]:
            raise InvalidModelFolder(
                f"{folder / CONFIG_NAME}: field 'num_classes' is {config['num_classes']} but {WEIGHTS_NAME} holds a"
                f" {shape[0]}-class classifier ({name}.weight has shape {list(shape)}); the config and the weights"
                f" come from different models")


def validate_folder(folder: PathLike) -> nn.Module:
    """Check that ``folder`` loads with ``timm.create_model("local-dir:...")`` and return the loaded model.

    Each problem (missing weights, unreadable or corrupt files, an unknown architecture, class counts that
    disagree, weights that do not fit the architecture) raises ``InvalidModelFolder`` naming the file and field.
    """
    import timm

    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidModelFolder(f"{folder}: not a folder")
    weights, config_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    if not config_path.is_file():
        raise InvalidModelFolder(f"{config_path}: missing; a model folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    if not weights.is_file():
        raise InvalidModelFolder(f"{weights}: missing; a model folder needs {WEIGHTS_NAME} beside {CONFIG_NAME}"
                                 f" (gcl-zoo writes and reads safetensors only)")
    config = read_json(config_path)
    arch, _ = _check_config(config, config_path)
    from .onnx_export import ONNX_CONFIG_KEY
    from .quantize import INT8_CONFIG_KEY

    for key in (ONNX_CONFIG_KEY, INT8_CONFIG_KEY):
        graph = (config.get(key) or {}).get("file") if isinstance(config.get(key), dict) else None
        if graph and not (folder / graph).is_file():
            raise InvalidModelFolder(f"{config_path}: field '{key}' names {graph}, which is missing; re-export the folder")
    _check_classifier(config, _tensor_shapes(weights), folder)
    try:
        return timm.create_model(f"local-dir:{folder}", pretrained=True)
    except TypeError as exc:  # an argument the architecture does not take
        raise InvalidModelFolder(f"{config_path}: field 'model_args' does not fit {arch!r}: {exc}") from exc
    except (RuntimeError, ValueError, KeyError) as exc:  # weights that do not fit, or a config that does not build
        raise InvalidModelFolder(f"{folder}: timm cannot load it: {exc}") from exc


def refuse_pickles(folder: Path) -> None:
    """A folder to publish holds no pickle files (loading one can run arbitrary code)."""
    pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise InvalidModelFolder(f"{folder}: holds pickle files {pickles}; published folders hold {WEIGHTS_NAME}"
                                 f" only. Export the run with `gcl-zoo export` and push that folder")
