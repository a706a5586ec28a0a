"""Losses for long-tailed classification: GCL and the baselines it is compared with.

Every loss takes logits of shape (N, C) and a target that is one of
  * class indices, a LongTensor of shape (N,);
  * a mixup pair ``(y_a, y_b, lam)``: the loss is ``lam * L(y_a) + (1 - lam) * L(y_b)``, each term with its own
    noise draw, as the authors' code runs the criterion once per label;
  * soft targets, a float tensor of shape (N, C) whose rows sum to one (timm's ``Mixup`` output).
Hard and soft targets share one code path (``as_soft_targets``); a soft target gets margins in proportion to
its mass on each class.
All losses compute in float32, also under bf16 autocast, because ``s * cos`` with s=30 loses too much
precision in bf16.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

MixupPair = tuple[torch.Tensor, torch.Tensor, float]
Target = torch.Tensor | MixupPair

CLOUD_STRATEGIES = ("log", "cos", "pow3", "pow4")

__all__ = [
    "GCLLoss", "CrossEntropyLoss", "FocalLoss", "LDAMLoss", "LogitAdjustedLoss", "BalancedSoftmaxLoss",
    "cloud_sizes", "class_counts_tensor", "drw_class_weights", "as_soft_targets", "create_loss", "CLOUD_STRATEGIES",
]


def class_counts_tensor(cls_num_list: Sequence[int], num_classes: int | None = None) -> torch.Tensor:
    """Validate per-class training counts and return them as a float64 tensor."""
    counts = torch.as_tensor(list(cls_num_list), dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError("cls_num_list must be a non-empty list with one training-image count per class")
    if num_classes is not None and counts.numel() != num_classes:
        raise ValueError(
            f"cls_num_list has {counts.numel()} entries but the logits have {num_classes} classes; "
            "pass the training set's cls_num_list for the same label space as the model")
    if (counts <= 0).any():
        empty = torch.nonzero(counts <= 0).flatten().tolist()
        raise ValueError(
            f"classes {empty[:10]} have no training images (count <= 0); every class needs at least one image, "
            "drop the empty classes from the label space or add images for them")
    return counts


def cloud_sizes(cls_num_list: Sequence[int], strategy: str = "log") -> torch.Tensor:
    """Per-class cloud size delta_j, normalised to [0, 1] (paper Table 3); all zeros when classes are equal."""
    counts = class_counts_tensor(cls_num_list)
    n_max = counts.max()
    if strategy == "log":
        delta = n_max.log() - counts.log()
    elif strategy == "cos":
        delta = torch.cos(counts / n_max * math.pi / 2)
    elif strategy == "pow3":
        delta = n_max ** (1 / 3) - counts ** (1 / 3)
    elif strategy == "pow4":
        delta = n_max ** (1 / 4) - counts ** (1 / 4)
    else:
        raise ValueError(f"unknown cloud strategy {strategy!r}; choose one of {', '.join(CLOUD_STRATEGIES)}")
    delta = delta.clamp_min(0)
    delta_max = delta.max()
    if delta_max <= 0:
        return torch.zeros_like(delta, dtype=torch.float32)
    return (delta / delta_max).float()


def as_soft_targets(target: torch.Tensor, num_classes: int, device: torch.device) -> torch.Tensor:
    """Class indices or soft targets as an (N, C) float32 target distribution.

    Index targets are range-checked on the CPU only: on a GPU the check would stop the step for a host sync, and
    the scatter below fails there on a bad index anyway.
    """
    if not torch.is_tensor(target):
        raise TypeError(f"target must be a tensor or a mixup triple, got {type(target).__name__}")
    target = target.to(device)
    if target.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        if target.ndim != 1:
            raise ValueError(f"class-index targets must have shape (N,), got {tuple(target.shape)}")
        if target.device.type == "cpu" and target.numel() and (target.min() < 0 or target.max() >= num_classes):
            raise ValueError(f"class-index targets must lie in [0, {num_classes - 1}]")
        soft = torch.zeros(target.shape[0], num_classes, device=device)
        return soft.scatter_(1, target.long()[:, None], 1.0)
    if target.ndim != 2 or target.shape[1] != num_classes:
        raise ValueError(f"soft targets must have shape (N, {num_classes}), got {tuple(target.shape)}")
    return target.float()


def _soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor, gamma: float = 0.0,
                        class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of sum_j -t_j * (1 - p_j)^gamma * w_j * log p_j, with p_j detached in the focal factor."""
    log_p = F.log_softmax(logits, dim=1)
    per_class = -soft * log_p
    if gamma:
        per_class = per_class * (1.0 - log_p.detach().exp()).clamp_min(0).pow(gamma)
    if class_weight is not None:
        per_class = per_class * class_weight.to(per_class.device)
        # normalise by the target's weight like F.cross_entropy(weight=...) does for hard labels
        return per_class.sum() / (soft * class_weight.to(soft.device)).sum().clamp_min(1e-12)
    return per_class.sum(dim=1).mean()


class _LongTailLoss(nn.Module):
    """Shared plumbing: validated counts, float32 computation, target normalisation."""

    def __init__(self, cls_num_list: Sequence[int] | None = None, s: float = 1.0, gamma: float = 0.0,
                 weight: Sequence[float] | None = None):
        super().__init__()
        if s <= 0:
            raise ValueError(f"scale s must be positive, got {s}")
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.s = float(s)
        self.gamma = float(gamma)
        counts = class_counts_tensor(cls_num_list) if cls_num_list is not None else None
        self.register_buffer("cls_num", counts.float() if counts is not None else None, persistent=False)
        self.register_buffer(
            "class_weight", torch.as_tensor(list(weight), dtype=torch.float32) if weight is not None else None,
            persistent=False)

    def set_class_weight(self, weight: Sequence[float] | None) -> None:
        """Switch per-class weights on or off (deferred re-weighting turns them on late in training)."""
        device = self.cls_num.device if self.cls_num is not None else None
        self.class_weight = None if weight is None else torch.as_tensor(list(weight), dtype=torch.float32,
                                                                         device=device)

    def _check_classes(self, logits: torch.Tensor) -> None:
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
        if self.cls_num is not None and logits.shape[1] != self.cls_num.numel():
            raise ValueError(
                f"logits have {logits.shape[1]} classes but cls_num_list has {self.cls_num.numel()}; "
                "build the loss from the training set of this model")

    def perturb(self, logits: torch.Tensor) -> torch.Tensor:
        """Target-independent change to the logits (GCL's cloud), drawn afresh for every term of the loss."""
        return logits

    def adjusted_logits(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """Logits fed to the softmax for targets ``soft``; subclasses add margins or priors."""
        return self.s * logits

    def _loss(self, z: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        return _soft_cross_entropy(self.adjusted_logits(z, soft), soft, self.gamma, self.class_weight)

    def forward(self, logits: torch.Tensor, target: Target) -> torch.Tensor:
        self._check_classes(logits)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            z = logits.float()
            num_classes, device = z.shape[1], z.device
            if isinstance(target, (tuple, list)) and len(target) == 3:
                # mixup pair: the authors' lam*L(y_a) + (1-lam)*L(y_b), the criterion run once per label, so
                # each label gets its own full margin and its own draw of the cloud
                y_a, y_b, lam = target  # lam may be a tensor on the device: no host sync
                return (lam * self._loss(self.perturb(z), as_soft_targets(y_a, num_classes, device))
                        + (1.0 - lam) * self._loss(self.perturb(z), as_soft_targets(y_b, num_classes, device)))
            return self._loss(self.perturb(z), as_soft_targets(target, num_classes, device))


class GCLLoss(_LongTailLoss):
    """Gaussian Clouded Logit loss (Li et al., CVPR 2022) on cosine logits.

    ``z_ij = cos_ij - noise_mul * |eps_ij| * delta_j - m * [j == y_i]``, ``eps ~ N(0, sigma)`` clamped to
    [-1, 1] and drawn afresh at every call on the logits' device; the loss is (focal) CE of ``s * z``.
    The cloud pushes rare classes' logits down during training only, so the model must earn a larger
    margin for them; prediction uses the plain cosine logits.
    """

    def __init__(self, cls_num_list: Sequence[int], s: float = 30.0, m: float = 0.0, noise_mul: float = 0.5,
                 sigma: float = 1.0 / 3.0, gamma: float = 0.0, cloud: str = "log",
                 weight: Sequence[float] | None = None, generator: torch.Generator | None = None):
        super().__init__(cls_num_list, s=s, gamma=gamma, weight=weight)
        if sigma <= 0:
            raise ValueError(f"noise sigma must be positive, got {sigma}")
        self.m = float(m)
        self.noise_mul = float(noise_mul)
        self.sigma = float(sigma)
        self.cloud = cloud
        self.generator = generator
        self.register_buffer("delta", cloud_sizes(cls_num_list, cloud), persistent=False)

    def sample_noise(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """|eps| with eps ~ N(0, sigma) clamped to [-1, 1], on ``device`` (reproducible with ``generator``)."""
        if self.generator is not None and self.generator.device.type != device.type:
            raise ValueError(
                f"the loss's generator lives on {self.generator.device} but the logits are on {device}; "
                f"create it with torch.Generator(device='{device.type}')")
        eps = torch.randn(shape, device=device, generator=self.generator) * self.sigma
        return eps.clamp_(-1.0, 1.0).abs_()

    def perturb(self, logits: torch.Tensor) -> torch.Tensor:
        if self.noise_mul and self.training:
            return logits - self.noise_mul * self.sample_noise(logits.shape, logits.device) * self.delta.to(logits.device)
        return logits

    def adjusted_logits(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        return self.s * (logits - self.m * soft) if self.m else self.s * logits

    def extra_repr(self) -> str:
        return (f"s={self.s}, m={self.m}, noise_mul={self.noise_mul}, sigma={self.sigma:.4f}, "
                f"gamma={self.gamma}, cloud={self.cloud!r}")


class CrossEntropyLoss(_LongTailLoss):
    """Cross-entropy of ``s * logits`` (s=1 for a linear head, about 30 for a cosine head)."""

    def __init__(self, cls_num_list: Sequence[int] | None = None, s: float = 1.0,
                 weight: Sequence[float] | None = None):
        super().__init__(cls_num_list, s=s, weight=weight)


class FocalLoss(_LongTailLoss):
    """Focal loss (Lin et al. 2017): CE scaled by ``(1 - p_y)^gamma`` with ``p_y`` detached."""

    def __init__(self, cls_num_list: Sequence[int] | None = None, s: float = 1.0, gamma: float = 1.0,
                 weight: Sequence[float] | None = None):
        super().__init__(cls_num_list, s=s, gamma=gamma, weight=weight)


class LDAMLoss(_LongTailLoss):
    """Label-distribution-aware margin loss (Cao et al. 2019): target margin ``C / n_j^(1/4)``, largest = max_m.

    Use with ``drw_class_weights`` switched on late in training (deferred re-weighting, DRW).
    """

    def __init__(self, cls_num_list: Sequence[int], max_m: float = 0.5, s: float = 30.0,
                 weight: Sequence[float] | None = None):
        super().__init__(cls_num_list, s=s, weight=weight)
        margins = 1.0 / class_counts_tensor(cls_num_list).pow(0.25)
        self.register_buffer("margins", (margins * (max_m / margins.max())).float(), persistent=False)

    def adjusted_logits(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        return self.s * (logits - soft * self.margins.to(logits.device))


class LogitAdjustedLoss(_LongTailLoss):
    """Logit-adjusted CE (Menon et al. 2021): CE of ``s * logits + tau * log prior``; tau=1 is balanced softmax."""

    def __init__(self, cls_num_list: Sequence[int], tau: float = 1.0, s: float = 1.0,
                 weight: Sequence[float] | None = None):
        super().__init__(cls_num_list, s=s, weight=weight)
        counts = class_counts_tensor(cls_num_list)
        self.tau = float(tau)
        self.register_buffer("log_prior", (counts / counts.sum()).log().float(), persistent=False)

    def adjusted_logits(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        return self.s * logits + self.tau * self.log_prior.to(logits.device)


class BalancedSoftmaxLoss(LogitAdjustedLoss):
    """Balanced softmax (Ren et al. 2020), the tau=1 case of logit adjustment."""

    def __init__(self, cls_num_list: Sequence[int], s: float = 1.0, weight: Sequence[float] | None = None):
        super().__init__(cls_num_list, tau=1.0, s=s, weight=weight)


def drw_class_weights(cls_num_list: Sequence[int], beta: float = 0.9999) -> list:
    """Class-balanced weights ``(1 - beta) / (1 - beta^n_j)`` normalised to mean 1 (Cui et al. 2019), for DRW."""
    counts = class_counts_tensor(cls_num_list)
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (weights / weights.sum() * counts.numel()).tolist()


_LOSSES = {
    "gcl": GCLLoss, "ce": CrossEntropyLoss, "focal": FocalLoss, "ldam": LDAMLoss,
    "logit_adjusted": LogitAdjustedLoss, "balanced_softmax": BalancedSoftmaxLoss,
}


def create_loss(name: str, cls_num_list: Sequence[int], **kwargs) -> _LongTailLoss:
    """Build a loss by name (``gcl``, ``ce``, ``focal``, ``ldam``, ``logit_adjusted``, ``balanced_softmax``)."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(_LOSSES)}")
    return _LOSSES[name](cls_num_list=cls_num_list, **kwargs)
