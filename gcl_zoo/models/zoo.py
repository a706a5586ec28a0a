"""The GCL model zoo, registered with timm on ``import gcl_zoo``.

One table (``default_cfgs``) holds every entry and its preprocessing; each ``@register_model`` function is one
line naming the backbone. An entry claims weights only when they exist: the CIFAR-LT checkpoints ship inside the
package (``gcl_zoo/weights/``, the CIFAR-10 ones with an int8 ONNX graph beside them), and the rest are trained with
``gcl-zoo train``. Setting ``GCL_ZOO_HUB_ORG=<org>`` before the import points every entry at the Hub repo
``<org>/<name.tag>`` (see ``gcl_zoo.models.weights``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

from ..data.labels import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR_MEAN_STD, imagenet_label_names
from .gcl import GCLModel
from .weights import explain_load_errors, safe_hub_overlay, with_hub_repos

__all__ = ["WEIGHTS_DIR", "embedded_weights", "embedded_int8_graph", "RECIPE_FOR_ENTRY", "training_command"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
PAPER_ID = "arXiv:2305.11733"
PAPER_NAME = "Long-tailed Visual Recognition via Gaussian Clouded Logit Adjustment (CVPR 2022)"
GENERIC = "gcl_timm"

# features_only=True: the backbone's forward_intermediates, every level it has unless out_indices says otherwise
# (timm's default asks for five levels, and the CIFAR ResNets have four)
FEATURE_CFG = {"feature_cls": "getter", "out_indices": None}

# which training recipe reproduces each entry (used in error messages and model cards)
RECIPE_FOR_ENTRY = {
    "gcl_resnet32_cifar10_lt": "cifar10_lt", "gcl_resnet32_cifar100_lt": "cifar100_lt",
    "gcl_resnet50_imagenet_lt": "imagenet_lt", "gcl_resnet50_inat18": "inat18", "gcl_resnet152_places_lt": "places_lt",
}


def embedded_weights(name: str) -> Optional[str]:
    """Path of the weights shipped in the package for ``name`` ('arch.tag'), or None when none ship."""
    path = WEIGHTS_DIR / f"{name}.safetensors"
    return str(path) if path.is_file() else None


def embedded_int8_graph(model: nn.Module) -> Optional[Path]:
    """The int8 ONNX graph shipped beside the packaged weights ``model`` was built from (``<name>.int8.onnx``), or None
    for a model whose weights do not come from the package or have no such graph."""
    file = (getattr(model, "pretrained_cfg", None) or {}).get("file")
    if not file or Path(file).parent != WEIGHTS_DIR or not file.endswith(".safetensors"):
        return None
    graph = WEIGHTS_DIR / (Path(file).name[: -len(".safetensors")] + ".int8.onnx")
    return graph if graph.is_file() else None


def training_command(variant: str, tag: Optional[str]) -> str:
    """The ``gcl-zoo train`` command that reproduces a zoo entry, complete as printed (placeholders in capitals)."""
    recipe = RECIPE_FOR_ENTRY.get(variant, "RECIPE")
    out = f"runs/{variant}" + (f".{tag}" if tag else "")
    if variant.startswith("gcl_resnet32_cifar"):
        ratio = f" --imb-ratio {tag[2:]}" if tag and tag.startswith("ir") and tag[2:].isdigit() else ""
        archive = "cifar10/cifar10.zip" if "cifar10_" in variant else "cifar100/cifar100.zip"
        return f"gcl-zoo train --recipe {recipe}{ratio} --data-root DATA/{archive} --out {out}"
    if recipe == "RECIPE":
        return f"gcl-zoo train --dataset imagefolder --train-dir TRAIN_DIR --test-dir TEST_DIR --out {out}"
    return (f"gcl-zoo train --recipe {recipe} --data-root IMAGES_DIR --train-list TRAIN_LIST.txt "
            f"--test-list TEST_LIST.txt --out {out}")


def _create_gcl(variant: str, pretrained: bool = False, **kwargs: Any) -> GCLModel:
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                 pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    name = variant + (f".{cfg.tag}" if cfg.tag else "")
    if pretrained and not (cfg.has_weights or cfg.state_dict is not None or cfg.source == "local-dir"):
        out = training_command(variant, cfg.tag).rsplit(" --out ", 1)[1]
        raise RuntimeError(
            f"no weights are published for {name!r} yet. Train them with "
            f"`{training_command(variant, cfg.tag)}` and load the run with "
            f"timm.create_model('local-dir:{out}', pretrained=True), or load a Hub copy with "
            f"timm.create_model('hf-hub:ORG/NAME', pretrained=True); pretrained=False gives random weights.")
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = safe_hub_overlay(cfg, kwargs.get("pretrained_cfg_overlay"))
    with explain_load_errors(name, cfg):
        model = build_model_with_cfg(GCLModel, variant, pretrained, pretrained_filter_fn=drop_mismatched_head,
                                     feature_cfg=dict(FEATURE_CFG), **kwargs)  # timm edits it
    if variant == GENERIC and isinstance(model, GCLModel) and not isinstance(kwargs.get("pretrained_cfg"), dict):
        # a fresh generic wrapper preprocesses like its backbone; a loaded one keeps its saved config
        model.pretrained_cfg = {**model.pretrained_cfg, **model.backbone_data_cfg()}
        model.default_cfg = model.pretrained_cfg
    return model


def drop_mismatched_head(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Leave out saved head tensors the model's head cannot take (another ``num_classes``, or none at all).

    timm drops only the classifier's ``weight``/``bias`` when the class count changes; the cosine head also has a
    per-class gain, and the model a per-class implied prior, which must go with them so the model starts with a
    fresh head.
    """
    if model.num_classes == (getattr(model, "pretrained_cfg", None) or {}).get("num_classes"):
        return state_dict  # an exact load, as timm sees it: a mismatch there is a broken file and must say so
    own = model.state_dict()
    per_class = [k for k in state_dict if k.startswith("head.") or k in ("implied_prior", "train_class_counts")]
    return {k: v for k, v in state_dict.items() if k not in per_class or (k in own and own[k].shape == v.shape)}


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "classifier": "head", "license": "apache-2.0", "paper_ids": PAPER_ID, "paper_name": PAPER_NAME,
        "origin_url": "https://github.com/Keke921/GCLLoss", **kwargs,
    }


def _cifar_cfg(num_classes: int, tag: str, **kwargs: Any) -> Dict[str, Any]:
    mean, std = CIFAR_MEAN_STD
    base = "gcl_resnet32_cifar10_lt" if num_classes == 10 else "gcl_resnet32_cifar100_lt"
    return _cfg(
        num_classes=num_classes, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, interpolation="bilinear",
        mean=mean, std=std, first_conv="backbone.conv1",
        label_names=CIFAR10_CLASSES if num_classes == 10 else CIFAR100_CLASSES,
        file=embedded_weights(f"{base}.{tag}"), **kwargs)


def _imagenet_size_cfg(num_classes: int, **kwargs: Any) -> Dict[str, Any]:
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

