"""The GCL model zoo, registered with timm on ``import gcl_zoo``.

One table (``default_cfgs``) holds every entry and its preprocessing; each ``@register_model`` function is one
line naming the backbone. An entry claims weights only when they exist: the CIFAR-LT checkpoints ship inside the
package (``gcl_zoo/weights/``, the CIFAR-10 ones with an int8 ONNX graph beside them), and the rest are trained with
``gcl-zoo train``. Setting ``GCL_ZOO_HUB_ORG=<org>`` before the import points every entry at the Hub repo
``<org>/<name.tag>``. Where weights come from, and what to do when none are published, is
``gcl_zoo.models.weights``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg

from ..data.labels import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR_DATA_CFG, imagenet_label_names
from .gcl import CALIBRATION_BUFFERS, GCLModel
from .weights import embedded_weights, explain_load_errors, no_weights_error, safe_hub_overlay, with_hub_repos

__all__ = ["GENERIC", "drop_mismatched_head"]

PAPER_ID = "arXiv:2305.11733"
PAPER_NAME = "Long-tailed Visual Recognition via Gaussian Clouded Logit Adjustment (CVPR 2022)"
GENERIC = "gcl_timm"

# features_only=True: the backbone's forward_intermediates, every level it has unless out_indices says otherwise
# (timm's default asks for five levels, and the CIFAR ResNets have four)
FEATURE_CFG = {"feature_cls": "getter", "out_indices": None}


def _create_gcl(variant: str, pretrained: bool = False, **kwargs: Any) -> GCLModel:
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                 pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    name = variant + (f".{cfg.tag}" if cfg.tag else "")
    if pretrained and not (cfg.has_weights or cfg.state_dict is not None or cfg.source == "local-dir"):
        raise no_weights_error(variant, cfg.tag)
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = safe_hub_overlay(cfg, kwargs.get("pretrained_cfg_overlay"))
    with explain_load_errors(name, cfg):
        model = build_model_with_cfg(GCLModel, variant, pretrained, pretrained_filter_fn=drop_mismatched_head,
                                     feature_cfg=dict(FEATURE_CFG), **kwargs)  # timm edits it
    if variant == GENERIC and isinstance(model, GCLModel) and not isinstance(kwargs.get("pretrained_cfg"), dict):
        # a fresh generic wrapper preprocesses like its backbone; a loaded one keeps its saved config
        model.describe(model.backbone_data_cfg())
    return model


def drop_mismatched_head(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Leave out saved head tensors the model's head cannot take (another ``num_classes``, or none at all).

    timm drops only the classifier's ``weight``/``bias`` when the class count changes; the cosine head also has a
    per-class gain, and the model a per-class calibration and source prior, which must go with them so the model starts with a
    fresh head.
    """
    if model.num_classes == (getattr(model, "pretrained_cfg", None) or {}).get("num_classes"):
        return state_dict  # an exact load, as timm sees it: a mismatch there is a broken file and must say so
    own = model.state_dict()
    per_class = [k for k in state_dict if k.startswith("head.") or k in (*CALIBRATION_BUFFERS, "train_class_counts")]
    return {k: v for k, v in state_dict.items() if k not in per_class or (k in own and own[k].shape == v.shape)}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "classifier": "head", "license": "apache-2.0", "paper_ids": PAPER_ID, "paper_name": PAPER_NAME,
        "origin_url": "https://github.com/Keke921/GCLLoss", **kwargs,
    }


def _cifar_cfg(num_classes: int, tag: str, **kwargs: Any) -> dict[str, Any]:
    base = "gcl_resnet32_cifar10_lt" if num_classes == 10 else "gcl_resnet32_cifar100_lt"
    return _cfg(
        num_classes=num_classes, **CIFAR_DATA_CFG, pool_size=(8, 8), first_conv="backbone.conv1",
        label_names=CIFAR10_CLASSES if num_classes == 10 else CIFAR100_CLASSES,
        file=embedded_weights(f"{base}.{tag}"), **kwargs)


def _imagenet_size_cfg(num_classes: int, **kwargs: Any) -> dict[str, Any]:
    return _cfg(num_classes=num_classes, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                interpolation="bilinear", first_conv="backbone.conv1", **kwargs)


default_cfgs = generate_default_cfgs(with_hub_repos({
    # any timm backbone: preprocessing comes from the backbone, classes from the caller
    GENERIC: _cfg(num_classes=1000, description="GCL cosine classifier on any timm backbone"),
    "gcl_resnet32_cifar10_lt.ir100*": _cifar_cfg(10, "ir100"),
    "gcl_resnet32_cifar10_lt.ir50": _cifar_cfg(10, "ir50"),
    "gcl_resnet32_cifar10_lt.ir200": _cifar_cfg(10, "ir200"),
    "gcl_resnet32_cifar100_lt.ir100*": _cifar_cfg(100, "ir100"),
    "gcl_resnet32_cifar100_lt.ir50": _cifar_cfg(100, "ir50"),
    "gcl_resnet32_cifar100_lt.ir200": _cifar_cfg(100, "ir200"),
    "gcl_resnet50_imagenet_lt": _imagenet_size_cfg(1000, label_names=imagenet_label_names()),
    # iNaturalist 2018: 8,142 species; Places-LT: 365 scene classes (names are not bundled offline)
    "gcl_resnet50_inat18": _imagenet_size_cfg(8142),
    "gcl_resnet152_places_lt": _imagenet_size_cfg(365),
}, skip=GENERIC))


@register_model
def gcl_timm(pretrained: bool = False, **kwargs: Any) -> GCLModel:
    return _create_gcl(GENERIC, pretrained, **kwargs)


@register_model
def gcl_resnet32_cifar10_lt(pretrained: bool = False, **kwargs: Any) -> GCLModel:
    return _create_gcl("gcl_resnet32_cifar10_lt", pretrained, **{"backbone": "cifar_resnet32", "logit_scale": 20.0, **kwargs})


@register_model
def gcl_resnet32_cifar100_lt(pretrained: bool = False, **kwargs: Any) -> GCLModel:
    return _create_gcl("gcl_resnet32_cifar100_lt", pretrained, **{"backbone": "cifar_resnet32", "logit_scale": 20.0, **kwargs})


@register_model
def gcl_resnet50_imagenet_lt(pretrained: bool = False, **kwargs: Any) -> GCLModel:
    return _create_gcl("gcl_resnet50_imagenet_lt", pretrained, **{"backbone": "resnet50", **kwargs})


@register_model
def gcl_resnet50_inat18(pretrained: bool = False, **kwargs: Any) -> GCLModel:
    return _create_gcl("gcl_resnet50_inat18", pretrained, **{"backbone": "resnet50", **kwargs})


@register_model
def gcl_resnet152_places_lt(pretrained: bool = False, **kwargs: Any) -> GCLModel:
    return _create_gcl("gcl_resnet152_places_lt", pretrained, **{"backbone": "resnet152", "logit_scale": 15.0, **kwargs})

