"""Saving and loading model folders in timm's Hugging Face layout (``model.safetensors`` + ``config.json``).

A folder written here loads with ``timm.create_model("local-dir:<folder>", pretrained=True)`` after
``import gcl_zoo``; the same files are what a Hub repository holds.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch.nn as nn
from timm.models import save_for_hf

__all__ = ["save_model_folder", "WEIGHTS_NAME", "CONFIG_NAME"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_model_folder(model: nn.Module, folder: Union[str, Path], extra_config: Optional[Dict[str, Any]] = None) -> Path:
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
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    try:
        save_for_hf(model, staging, model_config=model_config, model_args=model_args, safe_serialization=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
