"""Model folders in timm's Hugging Face layout: save, validate, export a training run, push to the Hub.

A folder holds ``model.safetensors`` + ``config.json`` (what timm reads), and once exported also the training
recipe (``train_hparams.yaml``), the evaluation (``eval.json``) and a model card (``README.md``). It loads with
``timm.create_model("local-dir:<folder>", pretrained=True)`` after ``import gcl_zoo``; pushed to the Hub, the same
files load with ``timm.create_model("hf-hub:<org>/<name>", pretrained=True)``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models import save_for_hf

from .files import replace_file

__all__ = [
    "save_model_folder", "validate_folder", "export_run", "export_embedded", "write_shipped_cards", "push_folder",
    "InvalidModelFolder", "WEIGHTS_NAME", "CONFIG_NAME", "RECIPE_NAME", "EVAL_NAME", "CARD_NAME",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
RECIPE_NAME = "train_hparams.yaml"  # the run's recipe.yaml: the resolved training settings
EVAL_NAME = "eval.json"
CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".pkl", ".pickle", ".ckpt", ".tar")
# config.json keys timm reads; any other top-level key is the trainer's and is carried over on export
TIMM_CONFIG_KEYS = {"architecture", "num_classes", "num_features", "global_pool", "label_names", "label_descriptions",
                    "model_args", "pretrained_cfg"}

PathLike = Union[str, Path]


class InvalidModelFolder(ValueError):
    """A model folder that would not load (or should not be published); the message names the file and field."""


def save_model_folder(model: nn.Module, folder: PathLike, extra_config: Optional[Dict[str, Any]] = None) -> Path:
    """Write the model's weights and config into ``folder``, each file replaced atomically.

    The files are first written to a temporary folder beside them and then renamed into place, so a crash never
    leaves a half-written weights file where a loader would find it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_config: Dict[str, Any] = dict(extra_config or {})
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


# -- validation ------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> Dict[str, Any]:
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


def _tensor_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    """Names and shapes from the safetensors header (reads no tensor data)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise InvalidModelFolder(f"{path}: not a readable safetensors file ({exc}); re-export the folder") from exc


def _check_config(config: Dict[str, Any], path: Path) -> Tuple[str, int]:
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


def _check_classifier(config: Dict[str, Any], shapes: Dict[str, Tuple[int, ...]], folder: Path) -> None:
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
    config = _read_json(config_path)
    arch, _ = _check_config(config, config_path)
    onnx_file = (config.get("onnx") or {}).get("file") if isinstance(config.get("onnx"), dict) else None
    if onnx_file and not (folder / onnx_file).is_file():
        raise InvalidModelFolder(f"{config_path}: field 'onnx' names {onnx_file}, which is missing; re-export the folder")
    _check_classifier(config, _tensor_shapes(weights), folder)
    try:
        return timm.create_model(f"local-dir:{folder}", pretrained=True)
    except TypeError as exc:  # an argument the architecture does not take
        raise InvalidModelFolder(f"{config_path}: field 'model_args' does not fit {arch!r}: {exc}") from exc
    except (RuntimeError, ValueError, KeyError) as exc:  # weights that do not fit, or a config that does not build
        raise InvalidModelFolder(f"{folder}: timm cannot load it: {exc}") from exc


def _refuse_pickles(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise InvalidModelFolder(f"{folder}: holds pickle files {pickles}; published folders hold {WEIGHTS_NAME}"
                                 f" only. Export the run with `gcl-zoo export` and push that folder")


# -- export ----------------------------------------------------------------------------------------------------

def _read_optional(path: Path) -> Optional[Dict[str, Any]]:
    """A run's optional JSON/YAML file as a dict; None when absent, a clear error when unreadable."""
    return _read_json(path) if path.is_file() else None


def _zoo_name(config: Dict[str, Any], recipe: Optional[Dict[str, Any]], run: Optional[Dict[str, Any]]) -> Optional[str]:
    """The zoo name (``arch.tag``) a run reproduces: run.json's ``zoo_name``, else the architecture plus ``irN``."""
    import timm

    from .models.zoo import GENERIC

    if run and run.get("zoo_name"):
        return str(run["zoo_name"])
    arch = config.get("architecture", "")
    tagged = timm.list_models(f"{arch}*", include_tags=True) if arch else []
    ratio = (recipe or {}).get("imb_ratio")
    if ratio and f"{arch}.ir{float(ratio):g}" in tagged:
        return f"{arch}.ir{float(ratio):g}"
    return arch if arch in tagged and arch != GENERIC else None  # a generic wrapper is no zoo entry


def _write_card(folder: Path, model: nn.Module, name: str, evaluation: Optional[Dict[str, Any]],
                recipe: Optional[Dict[str, Any]], run: Optional[Dict[str, Any]], missing: List[str],
                load_name: Optional[str]) -> None:
    from .model_card import CardInputs, card_notes, render_card

    inputs = CardInputs(name=name, config=_read_json(folder / CONFIG_NAME),
                        num_params=sum(p.numel() for p in model.parameters()), evaluation=evaluation, recipe=recipe,
                        run=run, load_name=load_name, notes=card_notes(missing))
    (folder / CARD_NAME).write_text(render_card(inputs), encoding="utf-8")


def _write_onnx(model: nn.Module, out_dir: Path, wanted: Optional[bool]) -> Optional[Dict[str, Any]]:
    """``model.onnx`` beside the weights, checked against PyTorch; its ``config.json`` entry, or None when not written.

    ``wanted``: True insists (an error names the packages to install), False skips, None exports when the
    exporter is installed. A graph not written now never stays behind from an earlier export of another model.
    """
    from .onnx_export import ONNX_NAME, export_onnx, onnx_exporter_missing

    target = out_dir / ONNX_NAME
    if wanted is False or (wanted is None and onnx_exporter_missing()):
        target.unlink(missing_ok=True)
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    return export_onnx(model, target)


def _save_with_onnx(model: nn.Module, out_dir: Path, extras: Dict[str, Any], onnx: Optional[bool]) -> None:
    from .onnx_export import ONNX_CONFIG_KEY

    extras = {k: v for k, v in extras.items() if k != ONNX_CONFIG_KEY}
    entry = _write_onnx(model, out_dir, onnx)
    save_model_folder(model, out_dir, extra_config={**extras, **({ONNX_CONFIG_KEY: entry} if entry else {})})


def export_run(run_dir: PathLike, out_dir: PathLike, zoo_name: Optional[str] = None,
               repo_id: Optional[str] = None, onnx: Optional[bool] = None) -> Path:
    """Turn a training run folder into a Hub-ready folder: weights, config, recipe, evaluation and model card.

    Only ``model.safetensors`` and ``config.json`` are required in the run; a missing ``recipe.yaml``,
    ``eval.json`` or ``run.json`` is said in the card. ``zoo_name`` (default: run.json's, else inferred from the
    architecture and ``imb_ratio``) titles the card and picks the paper's number; ``repo_id`` goes in its usage
    snippet. ``onnx`` adds ``model.onnx`` (see ``_write_onnx``). The output is validated by loading it back.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise InvalidModelFolder(f"{out_dir}: the export folder must differ from the run folder")
    model = validate_folder(run_dir)
    config = _read_json(run_dir / CONFIG_NAME)
    recipe = _read_optional(run_dir / "recipe.yaml")
    evaluation = _read_optional(run_dir / EVAL_NAME)
    run = _read_optional(run_dir / "run.json")
    missing = [n for n, d in (("eval.json", evaluation), ("recipe.yaml", recipe), ("run.json", run)) if d is None]

    _save_with_onnx(model, out_dir, {k: v for k, v in config.items() if k not in TIMM_CONFIG_KEYS}, onnx)
    for target, source in ((RECIPE_NAME, "recipe.yaml"), (EVAL_NAME, EVAL_NAME)):
        if (run_dir / source).is_file():
            shutil.copyfile(run_dir / source, out_dir / target)
        else:
            (out_dir / target).unlink(missing_ok=True)  # never leave a stale file from an earlier export
    name = zoo_name or _zoo_name(config, recipe, run) or (repo_id.split("/")[-1] if repo_id else out_dir.name)
    _write_card(out_dir, model, name, evaluation, recipe, run, missing, f"hf-hub:{repo_id}" if repo_id else None)
    validate_folder(out_dir)
    return out_dir


def export_embedded(name: str, out_dir: PathLike, repo_id: Optional[str] = None,
                    weights_dir: Optional[PathLike] = None, onnx: Optional[bool] = None) -> Path:
    """Export a checkpoint shipped in the package (``<weights_dir>/<name>.safetensors`` + ``<name>.json``).

    ``weights_dir`` defaults to ``gcl_zoo/weights``. The JSON beside the weights is read like a run's
    ``eval.json``; its optional ``command``, ``device``, ``notes`` and ``recipe`` (a mapping) fill the card's
    training section.
    """
    import timm

    from .models.zoo import WEIGHTS_DIR

    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    weights = weights_dir / f"{name}.safetensors"
    if not weights.is_file():
        raise InvalidModelFolder(f"{weights}: missing; no weights ship for {name!r}")
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    info = _read_optional(weights_dir / f"{name}.json")
    out_dir = Path(out_dir)
    _save_with_onnx(model, out_dir, {}, onnx)
    recipe = info.get("recipe") if info and isinstance(info.get("recipe"), dict) else None
    run = {k: info[k] for k in ("command", "device", "notes") if info and info.get(k)} or None
    if info is not None:
        (out_dir / EVAL_NAME).write_text(json.dumps(info, indent=2), encoding="utf-8")
    _write_card(out_dir, model, name, info, recipe, run, [] if info else ["eval.json"],
                f"hf-hub:{repo_id}" if repo_id else name)  # a shipped checkpoint loads by its zoo name
    validate_folder(out_dir)
    return out_dir


def write_shipped_cards(cards_dir: PathLike = "model_cards", weights_dir: Optional[PathLike] = None) -> List[Path]:
    """(Re)generate ``<cards_dir>/<name>.md`` for every checkpoint shipped in ``weights_dir`` (``gcl_zoo/weights``).

    These generated cards are committed under ``model_cards/``, so a reviewer sees what each shipped model claims.
    """
    from .models.zoo import WEIGHTS_DIR

    weights_dir, cards_dir = Path(weights_dir or WEIGHTS_DIR), Path(cards_dir)
    cards_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for weights in sorted(weights_dir.glob("*.safetensors")):
        name = weights.name[: -len(".safetensors")]
        with tempfile.TemporaryDirectory() as tmp:
            folder = export_embedded(name, Path(tmp) / name, weights_dir=weights_dir, onnx=False)
            target = cards_dir / f"{name}.md"
            shutil.copyfile(folder / CARD_NAME, target)
        written.append(target)
    return written


# -- push ------------------------------------------------------------------------------------------------------

def push_folder(folder: PathLike, repo_id: str, private: bool = False, revision: Optional[str] = None,
                create_pr: bool = False, commit_message: Optional[str] = None, token: Optional[str] = None,
                endpoint: Optional[str] = None):
    """Validate ``folder`` and upload it to the Hub repo ``repo_id`` (created if needed); returns the CommitInfo.

    Uses ``huggingface_hub.HfApi``: the token comes from ``token``, ``HF_TOKEN`` or the login cache
    (``hf auth login``), the server from ``endpoint`` or ``HF_ENDPOINT``. A folder that would not load, or that
    holds pickle files, is refused before anything is sent. ``revision`` names a branch (created from the default
    branch if missing); ``create_pr`` opens a pull request instead of committing directly.
    """
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    validate_folder(folder)
    _refuse_pickles(folder)
    if (folder / CARD_NAME).is_file():
        _check_card(folder / CARD_NAME)
    token = token or get_token()
    if not token:
        raise PermissionError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (pushing needs write access)")
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision and revision != "main" and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
                             commit_message=commit_message or f"Upload {folder.name} with gcl-zoo")


def _check_card(path: Path) -> None:
    """The card's YAML header parses and its model-index is well formed (the Hub rejects it otherwise)."""
    from huggingface_hub import ModelCard

    try:
        ModelCard.load(path)
    except Exception as exc:  # the loader raises ValueError, YAMLError or KeyError depending on the fault
        raise InvalidModelFolder(f"{path}: invalid model card metadata ({exc}); re-export the folder") from exc
