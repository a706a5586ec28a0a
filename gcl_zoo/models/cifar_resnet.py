"""ResNet-20/32/44/56/110 for 32x32 images (He et al. 2016, section 4.2), registered with timm.

Three stages of basic blocks at 16/32/64 channels, strides 1/2/2, and option-A shortcuts (subsample and
zero-pad channels, no parameters), as used by the long-tailed CIFAR literature (LDAM, GCL).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices  # what timm's own forward_intermediates use

from ..data.labels import CIFAR_DATA_CFG

__all__ = ["CifarResNet"]


class ShortcutA(nn.Module):
    """Option-A shortcut: take every other pixel and zero-pad the new channels (no parameters)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.stride = stride
        pad = out_chs - in_chs
        self.pad = (0, 0, 0, 0, pad // 2, pad - pad // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], self.pad)


class BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.shortcut = ShortcutA(in_chs, out_chs, stride) if stride != 1 or in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with ``depth = 6n + 2`` layers; a timm-shaped model (features, head, classifier reset)."""

    def __init__(self, depth: int = 32, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (16, 32, 64),
                 global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        if global_pool not in ("avg", ""):
            raise ValueError("CIFAR ResNet supports global_pool='avg' or '' only")
        blocks_per_stage = (depth - 2) // 6
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages: list[nn.Module] = []
        in_chs = widths[0]
        self.feature_info: list[dict] = [dict(num_chs=widths[0], reduction=1, module="bn1")]
        reduction = 1
        for i, (width, stride) in enumerate(zip(widths, (1, 2, 2))):
            layers = []
            for b in range(blocks_per_stage):
                layers.append(BasicBlock(in_chs, width, stride if b == 0 else 1))
                in_chs = width
            stages.append(nn.Sequential(*layers))
            reduction *= stride
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"layer{i + 1}"))
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = self.head_hidden_size = in_chs
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps of the stem and of each stage (``feature_info`` order), as timm's models give them."""
        if output_fmt != "NCHW":
            raise ValueError("CIFAR ResNet gives NCHW feature maps only (output_fmt='NCHW')")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        x = F.relu(self.bn1(self.conv1(x)))
        if 0 in take:
            intermediates.append(x)
        for i, stage in enumerate(self.stages()[:max_index] if stop_early else self.stages()):
            x = stage(x)
            if i + 1 in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last requested feature map (and the classifier)."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        for i in range(max(max_index, 1), 3):
            setattr(self, f"layer{i + 1}", nn.Identity())
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(nn.Sequential(self.layer1, self.layer2, self.layer3), x)
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 10, **CIFAR_DATA_CFG, "pool_size": (8, 8), "first_conv": "conv1", "classifier": "fc",
        "license": "apache-2.0", "paper_ids": "arXiv:1512.03385", "paper_name": "Deep Residual Learning",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "cifar_resnet20": _cfg(),
    "cifar_resnet32": _cfg(),
    "cifar_resnet44": _cfg(),
    "cifar_resnet56": _cfg(),
    "cifar_resnet110": _cfg(),
})


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create_cifar_resnet("cifar_resnet20", pretrained, **{"depth": 20, **kwargs})


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create_cifar_resnet("cifar_resnet32", pretrained, **{"depth": 32, **kwargs})


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create_cifar_resnet("cifar_resnet44", pretrained, **{"depth": 44, **kwargs})


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create_cifar_resnet("cifar_resnet56", pretrained, **{"depth": 56, **kwargs})


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create_cifar_resnet("cifar_resnet110", pretrained, **{"depth": 110, **kwargs})
