"""A timm backbone plus a (cosine) classifier head: the model GCL trains, for any timm architecture."""
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..heads import create_head
from .backbone import create_backbone

__all__ = ["GCLModel", "DATA_CFG_KEYS", "backbone_data_fields", "RawLogits", "raw_logits_module", "score_scale",
           "score_affine", "calibrated_logits", "CALIBRATION_BUFFERS"]

# buffers fitted after training, one entry per class; they travel with the weights and go with the head
CALIBRATION_BUFFERS = ("logit_bias", "class_scale", "implied_prior")

# pretrained_cfg fields that describe preprocessing; a wrapper inherits them from its backbone
DATA_CFG_KEYS = ("input_size", "test_input_size", "min_input_size", "fixed_input_size", "interpolation",
                 "crop_pct", "test_crop_pct", "crop_mode", "mean", "std", "first_conv", "pool_size")


def backbone_data_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing fields (and pooled feature-map size) of a backbone's ``pretrained_cfg``, as a GCL wrapper
    inherits them: module paths gain the wrapper's ``backbone.`` prefix. Read off a built backbone or off timm's
    registry (``timm.models.get_pretrained_cfg``), which give the same fields."""
    data = {k: cfg[k] for k in DATA_CFG_KEYS if cfg.get(k) is not None}
    if "first_conv" in data:
        convs = data["first_conv"]
        data["first_conv"] = f"backbone.{convs}" if isinstance(convs, str) else tuple(f"backbone.{c}" for c in convs)
    return data


def _prefixed_pattern(pattern: str, prefix: str) -> str:
    """A timm group-matcher regex for a module's names, rewritten for the same names under ``prefix``."""
    body = pattern[1:] if pattern.startswith("^") else pattern
    return "^" + re.escape(prefix) + "(?:" + body.replace("|^", "|") + ")"


def _prefixed_matcher(matcher: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group, spec in matcher.items():
        if isinstance(spec, str):
            out[group] = _prefixed_pattern(spec, prefix)
        elif isinstance(spec, (list, tuple)):
            out[group] = [(_prefixed_pattern(regex, prefix), suffix) for regex, suffix in spec]
        else:
            out[group] = spec
    return out


class GCLModel(nn.Module):
    """``backbone`` (any timm model, built with ``num_classes=0``) followed by a classifier ``head``.

    It keeps timm's model contract: ``forward_features`` (unpooled, ``num_features`` channels), ``forward_head``
    (``pre_logits=True``: pooled, ``head_hidden_size`` wide), ``num_classes=0`` / ``reset_classifier(0)`` for
    pooled features, ``global_pool=''`` for unpooled ones, ``feature_info`` / ``forward_intermediates`` /
    ``features_only=True``, ``group_matcher`` and ``no_weight_decay`` (all delegated to the backbone, names under
    ``backbone.``). The backbone starts from timm's pretrained weights (``pretrained_backbone``), from a local
    weights file (``pretrained_path``, as timm's ``--pretrained-path``) or from random weights.

    ``forward`` returns calibrated logits, so ``model(x).softmax(-1)`` is the model's probabilities as with any
    timm classifier, for a balanced deployment (every class equally likely): the head's raw logits (cosines in
    [-1, 1] for a cosine head) times ``logit_scale * class_scale``, plus ``logit_bias``, all fitted on validation
    data after training (``gcl_zoo.calibration``; before that, the ``s`` of the last training stage, class scales
    one and biases zero). ``forward_raw`` gives the raw logits the loss trains on. ``implied_prior`` is the source
    prior: the class-balanced mean calibrated validation probability (uniform, to rounding, after a calibration
    fitted here), against which ``gcl_zoo.prior`` moves the scores to a deployment's class mix, and
    ``source_images`` the number of validation images it was measured on (0: unknown); ``train_class_counts``
    the images per class it was trained on (zeros when unknown). These buffers travel with the weights.
    """

    def __init__(self, backbone: str = "resnet50", num_classes: int = 1000, pretrained_backbone: bool = False,
                 head: str = "cosine", logit_scale: float | None = None, in_chans: int = 3,
                 backbone_args: dict[str, Any] | None = None, pretrained_path: str | None = None,
                 **kwargs: Any):
        super().__init__()
        args = dict(backbone_args or {}, **kwargs)
        self.backbone_name = backbone
        self.backbone_args = args
        # where the backbone's starting weights came from (gcl_zoo.models.backbone); the trainer records it
        self.backbone, self.backbone_origin = create_backbone(backbone, pretrained_backbone, pretrained_path,
                                                              in_chans=in_chans, **args)
        self.num_classes = num_classes
        self.head_type = head
        self.num_features = self.backbone.num_features  # channels of forward_features
        # pooled feature width the head sees: timm's head_hidden_size when a pre-logits layer exists
        self.head_hidden_size = getattr(self.backbone, "head_hidden_size", None) or self.num_features
        self.head = self._new_head(num_classes)
        self.feature_info = [dict(info, module=f"backbone.{info['module']}")
                             for info in getattr(self.backbone, "feature_info", None) or []]
        if logit_scale is None:
            logit_scale = 30.0 if head == "cosine" else 1.0
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.register_buffer("logit_bias", torch.zeros(max(num_classes, 0)))
        self.register_buffer("class_scale", torch.ones(max(num_classes, 0)))
        self.register_buffer("implied_prior", uniform_prior(num_classes))
        self.register_buffer("train_class_counts", torch.zeros(max(num_classes, 0), dtype=torch.long))
        self.register_buffer("source_images", torch.tensor(0, dtype=torch.long))  # validation images behind it
        self.pretrained_cfg: dict[str, Any] = {}
        self.describe(self.backbone_data_cfg())

    def _new_head(self, num_classes: int) -> nn.Module:
        return create_head(self.head_type, self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def describe(self, data: Mapping[str, Any] | None = None, label_names: Sequence[str] | None = None) -> None:
        """The one place a GCL model's ``pretrained_cfg`` (and timm's alias ``default_cfg``) is written: ``data``'s
        preprocessing fields over it, its class count, and ``label_names`` when given (checked against it).

        A ``data`` config that gives ``input_size`` without test-time sizes (what a training run preprocesses with)
        replaces the backbone's ``test_input_size``/``test_crop_pct`` too: the model is evaluated as it was trained.
        """
        data = dict(data or {})
        cfg = {**self.pretrained_cfg, **data, "num_classes": self.num_classes}
        if "input_size" in data:
            for key in ("test_input_size", "test_crop_pct"):
                if key not in data:
                    cfg.pop(key, None)
        if label_names is not None:
            cfg["label_names"] = checked_label_names(self.num_classes, label_names)
        self.pretrained_cfg = self.default_cfg = cfg

    def backbone_data_cfg(self) -> dict[str, Any]:
        """The backbone's preprocessing fields (and pooled feature-map size), which a generic wrapper inherits."""
        return backbone_data_fields(getattr(self.backbone, "pretrained_cfg", None) or {})

    def model_args(self) -> dict[str, Any]:
        """Arguments that rebuild this architecture (saved as ``model_args`` in ``config.json``)."""
        # the weights being saved already hold the backbone, so a reload must never fetch backbone weights again
        args = {"backbone": self.backbone_name, "head": self.head_type, "logit_scale": float(self.logit_scale),
                "pretrained_backbone": False}
        if self.backbone_args:
            args["backbone_args"] = dict(self.backbone_args)
        return args

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The backbone's layer groups (for layer-wise lr decay); the head falls into the last group."""
        return _prefixed_matcher(self.backbone.group_matcher(coarse=coarse), "backbone.")

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The backbone's no-decay parameters. The GCL recipes decay every weight, as the authors did."""
        names = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {f"backbone.{name}" for name in names}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh head of the same kind for ``num_classes`` classes (0: none, pooled features out);
        ``global_pool`` is passed to the backbone (``''``: unpooled features)."""
        if global_pool is not None:
            self.backbone.reset_classifier(0, global_pool)
        self.num_classes = num_classes
        self.head = self._new_head(num_classes).to(self.logit_scale.device)
        self.logit_bias = torch.zeros(num_classes, device=self.logit_scale.device)
        self.class_scale = torch.ones(num_classes, device=self.logit_scale.device)
        self.implied_prior = uniform_prior(num_classes).to(self.logit_scale.device)
        self.source_images.zero_()
        self.train_class_counts = torch.zeros(num_classes, dtype=torch.long, device=self.logit_scale.device)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Weights saved before the implied prior, class counts and per-class calibration were kept lack them: they
        load with a uniform prior, unknown (zero) counts, zero biases and unit class scales."""
        state_dict.setdefault(prefix + "logit_bias", torch.zeros(self.num_classes))
        state_dict.setdefault(prefix + "source_images", torch.tensor(0, dtype=torch.long))
        state_dict.setdefault(prefix + "class_scale", torch.ones(self.num_classes))
        state_dict.setdefault(prefix + "implied_prior", uniform_prior(self.num_classes))
        state_dict.setdefault(prefix + "train_class_counts", torch.zeros(self.num_classes, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The backbone's intermediate feature maps (timm's ``forward_intermediates``)."""
        if not hasattr(self.backbone, "forward_intermediates"):
            raise NotImplementedError(
                f"backbone {self.backbone_name!r} has no forward_intermediates in this timm version; use "
                "features_only=True with feature_cls='hook' instead")
        return self.backbone.forward_intermediates(x, indices=indices, norm=norm, stop_early=stop_early,
                                                   output_fmt=output_fmt, intermediates_only=intermediates_only)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the layers after the last requested feature map (and the head), as timm's feature wrappers ask."""
        taken = self.backbone.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        if prune_head:
            self.reset_classifier(0)
        return taken

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        features = self.backbone.forward_head(x, pre_logits=True)
        if pre_logits or self.num_classes == 0:  # no head: pooled features
            return features
        return self.calibrated(self.head(features))

    def calibrated(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw logits (``forward_raw``) to calibrated ones: ``raw * logit_scale * class_scale + logit_bias``."""
        return raw * (self.logit_scale * self.class_scale) + self.logit_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The head's raw logits (cosines for a cosine head), before ``logit_scale``: what the losses train on."""
        return self.head(self.backbone.forward_head(self.forward_features(x), pre_logits=True))


def uniform_prior(num_classes: int) -> torch.Tensor:
    return torch.full((num_classes,), 1.0 / num_classes) if num_classes > 0 else torch.zeros(0)


class RawLogits(nn.Module):
    """A model's raw logits as a module of its own: the view the trainer differentiates (through DDP and
    ``torch.compile``) and that exported graphs compute, so that a new ``logit_scale`` needs no re-export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_raw(x)


def raw_logits_module(model: nn.Module) -> nn.Module:
    """``RawLogits(model)`` for a GCL model; any other timm classifier's logits are already its raw ones."""
    return RawLogits(model) if isinstance(model, GCLModel) else model


def score_scale(model: nn.Module) -> float:
    """The temperature part of a model's calibration, ``logit_scale`` (1 for plain classifiers)."""
    return float(model.logit_scale) if isinstance(model, GCLModel) else 1.0


def score_affine(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)``, float32 CPU, such that ``raw * weight + bias`` turns ``raw_logits_module(model)``'s
    outputs into calibrated logits (what exported graphs and the server compute after the raw logits); one and zero
    for plain classifiers."""
    if not isinstance(model, GCLModel):
        return torch.ones(()), torch.zeros(())
    weight = (model.logit_scale * model.class_scale).detach().float().cpu()
    return weight, model.logit_bias.detach().float().cpu()


def calibrated_logits(model: nn.Module, raw: torch.Tensor) -> torch.Tensor:
    """``raw_logits_module(model)`` outputs (any device, any float type) as calibrated logits, float32 CPU."""
    weight, bias = score_affine(model)
    return raw.detach().float().cpu() * weight + bias


def checked_label_names(num_classes: int, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """One name per class: ``names`` (from a model's config, where they travel with it) checked against the class
    count, or ``LABEL_<i>`` (the Hugging Face convention) without them."""
    if names is None:
        return tuple(f"LABEL_{i}" for i in range(num_classes))
    names = tuple(str(n) for n in names)
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} label names for {num_classes} classes; give one name per class")
    return names
