"""The parts a training stage is built from, from its recipe section: the model, the sampler, the batches, the
loss and the optimizer. ``Trainer`` (train/engine.py) assembles them and runs the loop."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg
from timm.optim import create_optimizer_v2

from gcl_zoo.losses import create_loss
from gcl_zoo.models import create_gcl_model
from gcl_zoo.models.gcl import backbone_data_fields
from gcl_zoo.sampling import create_sampler

from .batches import DeviceBatches, LoaderBatches
from .data import DataBundle

__all__ = ["build_model", "backbone_data_config", "describe_model", "stage_sampler", "stage_batches", "stage_loss", "stage_optimizer"]


def build_model(recipe: dict[str, Any], num_classes: int, pretrained_backbone: bool | None = None) -> nn.Module:
    """The generic GCL wrapper around the recipe's backbone (architecture ``gcl_timm`` in config.json), its backbone
    from the recipe's ``pretrained_path`` or pretrained weights unless ``pretrained_backbone=False``."""
    pretrained = recipe["pretrained_backbone"] if pretrained_backbone is None else pretrained_backbone
    path = recipe.get("pretrained_path") if pretrained_backbone is not False else None
    return create_gcl_model(recipe["model"], num_classes, pretrained_backbone=pretrained, pretrained_path=path,
                            head=recipe["head"], logit_scale=recipe["s"] if recipe["head"] == "cosine" else 1.0)


def backbone_data_config(recipe: dict[str, Any]) -> dict[str, Any]:
    """The evaluation data config of the recipe's backbone, answered from timm's registry (its pretrained config,
    as a GCL wrapper inherits it), so the data can be built before, and without, any model."""
    import gcl_zoo  # noqa: F401  (registers the CIFAR backbones)

    cfg = get_pretrained_cfg(recipe["model"])
    if cfg is None:
        raise ValueError(f"unknown timm backbone {recipe['model']!r}; see timm.list_models() for the names timm knows")
    return resolve_data_config(pretrained_cfg=backbone_data_fields(cfg.to_dict()))


def describe_model(model: nn.Module, bundle: DataBundle) -> None:
    """Record the preprocessing and labels the model is trained with, in its pretrained_cfg, and its training class
    counts (what a deployment's prior "train" means) with its weights."""
    model.describe(bundle.data_cfg, label_names=bundle.classes)
    model.train_class_counts.copy_(torch.as_tensor(bundle.cls_num_list))


def stage_sampler(section: dict[str, Any], targets, seed: int, stage: int):
    """The stage's sampler, seeded per stage so stage 2 does not replay stage 1's order."""
    kwargs: dict[str, Any] = {"seed": seed + 1000 * stage}
    if section["sampler"] == "cben":
        kwargs.update(a=section["cben_a"], b=section["cben_b"])
    return create_sampler(section["sampler"], targets, **kwargs)


def stage_batches(section: dict[str, Any], data: DataBundle, sampler, device: torch.device, workers: int,
                  resident: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Device-resident batches (the fast path) when ``resident`` holds the decoded images and labels, else a
    DataLoader."""
    batch, drop_last = section["batch_size"], section["drop_last"]
    if resident is not None:
        return DeviceBatches(*resident, sampler, batch, device, data.data_cfg, drop_last=drop_last)
    return LoaderBatches(data.train, sampler, batch, device, workers, drop_last=drop_last)


def stage_loss(section: dict[str, Any], cloud: str, cls_num_list, device: torch.device) -> nn.Module:
    name = section["loss"]
    kwargs: dict[str, Any] = {"s": section["s"]}
    if name == "gcl":
        kwargs.update(m=section["m"], noise_mul=section["noise_mul"], gamma=section["gamma"], cloud=cloud)
    elif name == "focal":
        kwargs.update(gamma=section["gamma"])
    elif name == "ldam":
        kwargs.update(max_m=section["m"] or 0.5)
    return create_loss(name, cls_num_list, **kwargs).to(device)


def stage_optimizer(model: nn.Module, section: dict[str, Any], device: torch.device):
    """The optimizer over the trainable parameters (fused SGD on CUDA)."""
    params = [p for p in model.parameters() if p.requires_grad]
    extra = {"fused": True} if device.type == "cuda" and section["opt"] in ("sgd", "momentum") else {}
    return create_optimizer_v2(params, opt=section["opt"], lr=section["lr"], weight_decay=section["weight_decay"],
                               momentum=section["momentum"], filter_bias_and_bn=False, **extra)
