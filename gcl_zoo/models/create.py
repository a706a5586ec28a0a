"""``create_gcl_model``: the one-call way to put a GCL head on any timm backbone."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm

from .gcl import GCLModel

__all__ = ["create_gcl_model"]


def create_gcl_model(backbone: str, num_classes: int, pretrained_backbone: bool = False,
                     label_names: Sequence[str] | None = None, pretrained_path: str | None = None,
                     **kwargs: Any) -> GCLModel:
    """Wrap the timm model ``backbone`` (built with ``num_classes=0``) with a cosine classifier.

    The backbone starts from timm's pretrained weights with ``pretrained_backbone=True``, or from the local file
    ``pretrained_path`` (a ``.safetensors`` or ``.pth``/``.pt`` state dict or timm checkpoint of that backbone, its
    classifier dropped), which wins; ``model.backbone_origin`` says which.

    Built through timm's registry (architecture ``gcl_timm``), so the result saves and loads like any timm
    model: ``config.json`` records ``backbone`` and the head settings as model arguments. Extra keyword
    arguments (``head``, ``logit_scale``, ``drop_rate``, ...) go to ``GCLModel`` and on to the backbone.
    """
    if not timm.is_model(backbone.split(".")[0]):
        raise ValueError(f"unknown timm backbone {backbone!r}; see timm.list_models() for the names timm knows")
    model = timm.create_model("gcl_timm", backbone=backbone, num_classes=num_classes,
                              pretrained_backbone=pretrained_backbone, pretrained_path=pretrained_path, **kwargs)
    if label_names is not None:
        model.describe(label_names=label_names)
    return model
