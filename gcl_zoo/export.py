"""Exporting a training run, or a checkpoint shipped in the package, as a Hub-ready folder: weights, config, the
ONNX graph (and an int8 copy of it), recipe, evaluation and a model card; and the committed cards of the shipped
checkpoints."""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .files import replace_file
from .folders import (
    CARD_NAME,
    CONFIG_NAME,
    EVAL_NAME,
    RECIPE_NAME,
    RUN_INFO_NAME,
    RUN_RECIPE_NAME,
    TIMM_CONFIG_KEYS,
    InvalidModelFolder,
    read_json,
    save_model_folder,
    validate_folder,
)

__all__ = ["Int8Calibration", "export_run", "export_embedded", "write_shipped_cards"]

PathLike = str | Path


@dataclass(frozen=True)
class Int8Calibration:
    """Where the images for int8 calibration come from (a folder or .zip of the model's domain), how many set the
    activation ranges, and how many more, held out, check what quantisation changed."""

    root: Path
    images: int = 300
    held_out: int = 500

    def __post_init__(self) -> None:
        if self.images < 1 or self.held_out < 1:
            raise ValueError(f"int8 calibration needs at least one calibration and one held-out image, got "
                             f"{self.images} and {self.held_out}; pass --int8-images 1 or more")


def _read_optional(path: Path) -> dict[str, Any] | None:
    """A run's optional JSON/YAML file as a dict; None when absent, a clear error when unreadable."""
    return read_json(path) if path.is_file() else None


def _zoo_name(config: dict[str, Any], recipe: dict[str, Any] | None, run: dict[str, Any] | None) -> str | None:
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


def _write_card(folder: Path, model: nn.Module, name: str, evaluation: dict[str, Any] | None,
                recipe: dict[str, Any] | None, run: dict[str, Any] | None, missing: list[str],
                load_name: str | None) -> None:
    from .model_card import CardInputs, card_notes, render_card

    inputs = CardInputs(name=name, config=read_json(folder / CONFIG_NAME),
                        num_params=sum(p.numel() for p in model.parameters()), evaluation=evaluation, recipe=recipe,
                        run=run, load_name=load_name, notes=card_notes(missing))
    (folder / CARD_NAME).write_text(render_card(inputs), encoding="utf-8")


def _write_onnx(model: nn.Module, staging: Path, wanted: bool | None) -> dict[str, Any] | None:
    """``model.onnx`` in ``staging``, checked against PyTorch; its ``config.json`` entry, or None when not written.

    ``wanted``: True insists (an error names the packages to install), False skips, None exports when the
    exporter is installed.
    """
    from .onnx_export import ONNX_NAME, export_onnx, onnx_exporter_missing

    if wanted is False or (wanted is None and onnx_exporter_missing()):
        return None
    return export_onnx(model, staging / ONNX_NAME)


def _write_int8(model: nn.Module, staging: Path, calibration: Int8Calibration | None) -> dict[str, Any] | None:
    """``model.int8.onnx`` quantised from ``staging``'s ``model.onnx``; its ``config.json`` entry, or None when no
    calibration was asked for."""
    from .onnx_export import ONNX_NAME
    from .quantize import INT8_ONNX_NAME, calibration_images, quantize_onnx

    if calibration is None:
        return None
    images, source = calibration_images(model, calibration.root, calibration.images + calibration.held_out)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))  # both spread over all classes
    return quantize_onnx(staging / ONNX_NAME, staging / INT8_ONNX_NAME, images[order[:calibration.images]],
                         images[order[calibration.images:]], source)


def _save_with_onnx(model: nn.Module, out_dir: Path, extras: dict[str, Any], onnx: bool | None,
                    int8: Int8Calibration | None = None) -> None:
    """Weights, config and graphs together: the graphs are built and checked beside the folder first, so a failed
    export or int8 check leaves an earlier export's folder as it was, and a graph not written now never stays
    behind from an earlier export of another model."""
    from .onnx_export import ONNX_CONFIG_KEY, ONNX_NAME
    from .quantize import INT8_CONFIG_KEY, INT8_ONNX_NAME

    if int8 is not None and onnx is False:
        raise ValueError("an int8 graph is quantised from model.onnx: drop --no-onnx to write both")
    extras = {k: v for k, v in extras.items() if k not in (ONNX_CONFIG_KEY, INT8_CONFIG_KEY)}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-graphs-", dir=out_dir.parent) as tmp:
        staging = Path(tmp)
        entry = _write_onnx(model, staging, True if int8 is not None else onnx)
        int8_entry = _write_int8(model, staging, int8)
        out_dir.mkdir(exist_ok=True)
        for name in (ONNX_NAME, INT8_ONNX_NAME):
            if (staging / name).is_file():
                replace_file(staging / name, out_dir / name)
            else:
                (out_dir / name).unlink(missing_ok=True)
    save_model_folder(model, out_dir, extra_config={**extras, **({ONNX_CONFIG_KEY: entry} if entry else {}),
                                                    **({INT8_CONFIG_KEY: int8_entry} if int8_entry else {})})


def export_run(run_dir: PathLike, out_dir: PathLike, zoo_name: str | None = None,
               repo_id: str | None = None, onnx: bool | None = None,
               int8: Int8Calibration | None = None) -> Path:
    """Turn a training run folder into a Hub-ready folder: weights, config, recipe, evaluation and model card.

    Only ``model.safetensors`` and ``config.json`` are required in the run; a missing ``recipe.yaml``,
    ``eval.json`` or ``run.json`` is said in the card. ``zoo_name`` (default: run.json's, else inferred from the
    architecture and ``imb_ratio``) titles the card and picks the paper's number; ``repo_id`` goes in its usage
    snippet. ``onnx`` adds ``model.onnx`` (see ``_write_onnx``), ``int8`` an int8 copy of it calibrated on those
    images (``gcl_zoo.quantize``). The output is validated by loading it back.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise InvalidModelFolder(f"{out_dir}: the export folder must differ from the run folder")
    model = validate_folder(run_dir)
    config = read_json(run_dir / CONFIG_NAME)
    recipe = _read_optional(run_dir / RUN_RECIPE_NAME)
    evaluation = _read_optional(run_dir / EVAL_NAME)
    run = _read_optional(run_dir / RUN_INFO_NAME)
    missing = [n for n, d in ((EVAL_NAME, evaluation), (RUN_RECIPE_NAME, recipe), (RUN_INFO_NAME, run)) if d is None]

    _save_with_onnx(model, out_dir, {k: v for k, v in config.items() if k not in TIMM_CONFIG_KEYS}, onnx, int8)
    for target, source in ((RECIPE_NAME, RUN_RECIPE_NAME), (EVAL_NAME, EVAL_NAME)):
        if (run_dir / source).is_file():
            shutil.copyfile(run_dir / source, out_dir / target)
        else:
            (out_dir / target).unlink(missing_ok=True)  # never leave a stale file from an earlier export
    name = zoo_name or _zoo_name(config, recipe, run) or (repo_id.split("/")[-1] if repo_id else out_dir.name)
    _write_card(out_dir, model, name, evaluation, recipe, run, missing, f"hf-hub:{repo_id}" if repo_id else None)
    validate_folder(out_dir)
    return out_dir


def export_embedded(name: str, out_dir: PathLike, repo_id: str | None = None,
                    weights_dir: PathLike | None = None, onnx: bool | None = None,
                    int8: Int8Calibration | None = None) -> Path:
    """Export a checkpoint shipped in the package (``<weights_dir>/<name>.safetensors`` + ``<name>.json``).

    ``weights_dir`` defaults to ``gcl_zoo/weights``. The JSON beside the weights is read like a run's
    ``eval.json``; its optional ``command``, ``device``, ``notes`` and ``recipe`` (a mapping) fill the card's
    training section.
    """
    import timm

    from .models.weights import WEIGHTS_DIR
    from .quantize import INT8_CONFIG_KEY

    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    weights = weights_dir / f"{name}.safetensors"
    if not weights.is_file():
        raise InvalidModelFolder(f"{weights}: missing; no weights ship for {name!r}")
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    info = _read_optional(weights_dir / f"{name}.json")
    if info is not None:
        info.pop(INT8_CONFIG_KEY, None)  # the record of the int8 graph shipped beside it; the export makes its own
    out_dir = Path(out_dir)
    _save_with_onnx(model, out_dir, {}, onnx, int8)
    recipe = info.get("recipe") if info and isinstance(info.get("recipe"), dict) else None
    run = {k: info[k] for k in ("command", "device", "notes") if info and info.get(k)} or None
    if info is not None:
        (out_dir / EVAL_NAME).write_text(json.dumps(info, indent=2), encoding="utf-8")
    _write_card(out_dir, model, name, info, recipe, run, [] if info else [EVAL_NAME],
                f"hf-hub:{repo_id}" if repo_id else name)  # a shipped checkpoint loads by its zoo name
    validate_folder(out_dir)
    return out_dir


def write_shipped_cards(cards_dir: PathLike = "model_cards", weights_dir: PathLike | None = None) -> list[Path]:
    """(Re)generate ``<cards_dir>/<name>.md`` for every checkpoint shipped in ``weights_dir`` (``gcl_zoo/weights``).

    These generated cards are committed under ``model_cards/``, so a reviewer sees what each shipped model claims.
    """
    from .models.weights import WEIGHTS_DIR

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
