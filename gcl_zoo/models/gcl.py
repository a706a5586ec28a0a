"""A timm backbone plus a (cosine) classifier head: the model GCL trains, for any timm architecture."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import timm
import torch
import torch.nn as nn

from ..heads import create_head

__all__ = ["GCLModel", "DATA_CFG_KEYS"]

# pretrained_cfg fields that describe preprocessing; a wrapper inherits them from its backbone
DATA_CFG_KEYS = ("input_size", "test_input_size", "min_input_size", "fixed_input_size", "interpolation",
                 "crop_pct", "test_crop_pct", "crop_mode", "mean", "std", "first_conv")


class GCLModel(nn.Module):
    """``backbone`` (any timm model, built with ``num_classes=0``) followed by a classifier ``head``.

    It quacks like a timm classifier (``forward_features``, ``forward_head``, ``get_classifier``,
    ``reset_classifier``, ``num_features``, ``pretrained_cfg``). ``forward`` returns the head's raw logits;
    for a cosine head those lie in [-1, 1] and ``logit_scale`` (the ``s`` of the last training stage, saved with
    the weights) turns them into calibrated logits: ``softmax(logit_scale * model(x))``.
    """

    def __init__(self, backbone: str = "resnet50", num_classes: int = 1000, pretrained_backbone: bool = False,
                 head: str = "cosine", logit_scale: Optional[float] = None, in_chans: int = 3,
                 backbone_args: Optional[Dict[str, Any]] = None, **kwargs: Any):
        super().__init__()
        args = dict(backbone_args or {}, **kwargs)
        self.backbone_name = backbone
        self.backbone_args = args
        self.backbone = timm.create_model(backbone, pretrained=pretrained_backbone, num_classes=0,
                                          in_chans=in_chans, **args)
        self.num_classes = num_classes
        self.head_type = head
        # pooled feature width: timm's head_hidden_size when a pre-logits layer exists, else num_features
        self.num_features = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.head = create_head(head, self.num_features, num_classes)
        if logit_scale is None:
            logit_scale = 30.0 if head == "cosine" else 1.0
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.pretrained_cfg = self.default_cfg = self.backbone_data_cfg()

    def backbone_data_cfg(self) -> Dict[str, Any]:
        """The backbone's preprocessing fields, which a generic wrapper inherits."""
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        data = {k: cfg[k] for k in DATA_CFG_KEYS if cfg.get(k) is not None}
        if "first_conv" in data:  # module paths gain the wrapper's prefix
            convs = data["first_conv"]
            data["first_conv"] = (f"backbone.{convs}" if isinstance(convs, str)
                                  else tuple(f"backbone.{c}" for c in convs))
        return data

    def model_args(self) -> Dict[str, Any]:
        """Arguments that rebuild this architecture (saved as ``model_args`` in ``config.json``)."""
        # the weights being saved already hold the backbone, so a reload must never fetch backbone weights again
        args = {"backbone": self.backbone_name, "head": self.head_type, "logit_scale": float(self.logit_scale),
                "pretrained_backbone": False}
        if self.backbone_args:
            args["backbone_args"] = dict(self.backbone_args)
        return args

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh head of the same kind for ``num_classes`` classes (``global_pool`` is passed to the backbone)."""
        if global_pool is not None:
            self.backbone.reset_classifier(0, global_pool)
        self.num_classes = num_classes
        device = self.logit_scale.device
        self.head = create_head(self.head_type, self.num_features, num_classes).to(device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        features = self.backbone.forward_head(x, pre_logits=True)
        return features if pre_logits else self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (the embedding the cosine head compares with its class weights)."""
        return self.forward_head(self.forward_features(x), pre_logits=True)


def label_names_for(num_classes: int, label_names: Optional[Sequence[str]]) -> Optional[tuple]:
    """Validate label names against the class count (names travel with the model in its config)."""
    if label_names is None:
        return None
    names = tuple(str(n) for n in label_names)
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} label names for {num_classes} classes; give one name per class")
    return names
