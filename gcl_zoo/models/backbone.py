"""Where a GCL model's backbone weights come from: timm's pretrained weights for the backbone's default tag (the
Hub cache, or a download), a local file (``pretrained_path``, as timm's ``train.py --pretrained-path``), or none.

timm does the loading in both cases: a file is read with ``timm.models.load_state_dict`` (safetensors, or a
``.pth``/``.pt`` state dict or timm checkpoint read with ``weights_only=True``, its EMA weights preferred as timm
does) and handed to ``timm.create_model`` as the pretrained state dict, so the model's own checkpoint filter and
input-channel adaptation apply. The classifier is dropped (the GCL head replaces it); every other tensor must fit,
or the file is refused naming the first keys that do not. ``create_backbone`` also says where the weights came
from (``origin``), which the trainer records in run.json.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE as WEIGHTS_NAME
from timm.models import resolve_pretrained_cfg

from .weights import hub_unreachable

__all__ = ["create_backbone", "load_weights_file", "sha256_of"]

SHOWN_KEYS = 5  # mismatched keys a refusal names (then how many more)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: safetensors, or a ``.pth``/``.pt`` state dict or timm checkpoint (``state_dict``,
    ``model`` or ``state_dict_ema`` inside), read without unpickling code; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} does not exist")
    try:
        state_dict = timm.models.load_state_dict(str(path))
    except Exception as exc:  # safetensors, pickle and zip readers each raise their own kind
        raise ValueError(f"pretrained weights file {path} is not a readable .safetensors or .pth/.pt state dict "
                         f"({type(exc).__name__}: {str(exc).strip()[:200]})") from None
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)} if isinstance(state_dict, dict) else {}
    if not tensors:
        raise ValueError(f"pretrained weights file {path} holds no tensors; give a state dict (model.state_dict()) or "
                         "a timm checkpoint")
    return tensors


def _without_classifier(state_dict: dict[str, torch.Tensor], classifier: Any) -> dict[str, torch.Tensor]:
    """``state_dict`` less the classifier's weight and bias, which timm drops when the class count changes."""
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    dropped = {f"{name}.{part}" for name in names for part in ("weight", "bias")}
    return {k: v for k, v in state_dict.items() if k not in dropped}


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def _misfit(path: Path, name: str, state_dict: dict[str, torch.Tensor], kwargs: dict[str, Any],
            loader_message: str) -> ValueError:
    """The refusal of a file that does not fit backbone ``name``: its first missing, extra and reshaped keys."""
    own = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).state_dict()
    missing = [k for k in own if k not in state_dict]
    extra = [k for k in state_dict if k not in own]
    reshaped = [f"{k} (file {tuple(v.shape)}, {name} {tuple(own[k].shape)})" for k, v in state_dict.items()
                if k in own and tuple(v.shape) != tuple(own[k].shape)]
    parts = [f"missing from the file: {_listed(missing)}" if missing else "",
             f"not in {name}: {_listed(extra)}" if extra else "",
             f"of another shape: {_listed(reshaped)}" if reshaped else ""]
    details = "; ".join(p for p in parts if p) or loader_message.strip()
    return ValueError(f"pretrained weights file {path} does not fit backbone {name}: {details}. Give a state dict "
                      f"saved from {name} (model.state_dict(), or a timm checkpoint of it), or name the architecture "
                      "the file was saved from as the backbone (--model)")


def _from_file(name: str, path: Path, kwargs: dict[str, Any]) -> nn.Module:
    cfg = resolve_pretrained_cfg(name)
    state_dict = _without_classifier(load_weights_file(path), cfg.classifier)
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, **kwargs,
                                  pretrained_cfg_overlay={"state_dict": state_dict, "num_classes": 0})
    except RuntimeError as exc:  # the strict load, or timm's stem check before it
        raise _misfit(path, name, state_dict, kwargs, str(exc)) from None
    # the overlay's tensors would otherwise stay in the backbone's config for the model's lifetime
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k != "state_dict"}
    return model


def _hub_origin(name: str) -> dict[str, Any]:
    """run.json's record of timm's pretrained weights for ``name``: its tag, Hub repo, and the cached file's hash."""
    from huggingface_hub import try_to_load_from_cache

    cfg = resolve_pretrained_cfg(name)
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    origin: dict[str, Any] = {"source": "timm", "tag": tag, "hf_hub_id": cfg.hf_hub_id}
    cached = try_to_load_from_cache(cfg.hf_hub_id, WEIGHTS_NAME) if cfg.hf_hub_id else None
    if isinstance(cached, str):
        origin.update(path=cached, sha256=sha256_of(cached))
    return origin


def _from_hub(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm's pretrained weights for ``name``, from the safetensors file only (never a pickle fallback), with the
    three ways on when they are neither cached nor downloadable."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    cfg = resolve_pretrained_cfg(name)
    overlay = {"hf_hub_filename": WEIGHTS_NAME} if cfg.hf_hub_id and not cfg.file else None
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay, **kwargs)
    except LocalEntryNotFoundError:
        tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
        raise hub_unreachable(
            f"the pretrained weights of backbone {name} (timm's {tag}: {WEIGHTS_NAME} of Hub repo "
            f"{cfg.hf_hub_id})", cfg.hf_hub_id, [
                f"give them as a local file: --pretrained-path FILE (pretrained_path= in Python), a .safetensors or "
                f".pth state dict of {cfg.architecture}",
                "train without them: --pretrained-backbone false (pretrained_backbone=False), a random start",
            ]) from None


def create_backbone(name: str, pretrained: bool = False, pretrained_path: str | Path | None = None,
                    **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """timm model ``name`` without its classifier (``num_classes=0``), and where its weights came from.

    ``pretrained_path`` (a local weights file) wins over ``pretrained`` (timm's weights for the backbone's default
    tag); neither gives a random start. The origin is ``{"source": "file", "path", "sha256"}``, ``{"source":
    "timm", "tag", "hf_hub_id", "path", "sha256"}`` or ``{"source": "random"}``.
    """
    if pretrained_path is not None:
        path = Path(pretrained_path).expanduser().resolve()
        model = _from_file(name, path, kwargs)
        return model, {"source": "file", "path": str(path), "sha256": sha256_of(path)}
    if pretrained:
        return _from_hub(name, kwargs), _hub_origin(name)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs), {"source": "random"}
