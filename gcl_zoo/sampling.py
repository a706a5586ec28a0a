"""Samplers for long-tailed training, all DDP-aware and reproducible.

Each sampler defines the probability ``p_c`` that a draw comes from class c (the ``class_probabilities``),
draws one epoch of indices for all ranks from a generator seeded by ``seed + epoch``, and gives each rank
the positions ``rank, rank + world, ...`` of that epoch: the ranks' shares are disjoint and together make the
whole epoch. ``set_epoch`` must be called each epoch, as with ``DistributedSampler``.

| name | p_c proportional to |
|---|---|
| instance | n_c (a plain shuffle, without replacement) |
| class_balanced | 1 |
| sqrt | sqrt(n_c) |
| effective_number | n_c (1 - beta) / (1 - beta^n_c)  (samples weighted by 1 / effective number) |
| cben | n_c (1 - beta_c) / (1 - beta_c^n_c), beta_c = a + b (delta_c - delta_min) / (delta_max - delta_min) |
| class_aware | 1, drawn round-robin over shuffled classes (Shen et al. 2016) |
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "LongTailSampler", "InstanceSampler", "ClassBalancedSampler", "SqrtSampler", "EffectiveNumberSampler",
    "CBENSampler", "ClassAwareSampler", "create_sampler", "SAMPLERS", "CBEN_CODE", "CBEN_PAPER",
]

CBEN_CODE = {"a": 0.9999, "b": 1e-5}   # the authors' code
CBEN_PAPER = {"a": 0.999, "b": 0.0009}  # the paper, Eq. 14


def _dist_world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class LongTailSampler(Sampler):
    """Base class: an epoch of ``num_samples`` draws, split over ranks, seeded by ``seed + epoch``."""

    def __init__(self, labels: Sequence[int], num_samples: int | None = None, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None):
        self.labels = torch.as_tensor(list(labels) if not torch.is_tensor(labels) else labels, dtype=torch.long)
        if self.labels.ndim != 1 or self.labels.numel() == 0:
            raise ValueError("a sampler needs a non-empty 1-d list of class labels")
        if self.labels.min() < 0:
            raise ValueError("class labels must be >= 0")
        self.num_classes = int(self.labels.max()) + 1
        self.cls_num = torch.bincount(self.labels, minlength=self.num_classes)
        world, my_rank = _dist_world()
        self.num_replicas = num_replicas if num_replicas is not None else world
        self.rank = rank if rank is not None else my_rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside [0, {self.num_replicas})")
        self.num_samples = int(num_samples) if num_samples is not None else self.labels.numel()
        self.num_per_rank = math.ceil(self.num_samples / self.num_replicas)
        self.total_size = self.num_per_rank * self.num_replicas
        self.seed = int(seed)
        self.epoch = 0

    def class_probabilities(self) -> torch.Tensor:
        """p_c for every class (classes without samples get 0); sums to 1."""
        raise NotImplementedError

    def epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        """All ``total_size`` indices of the epoch, for every rank, drawn with replacement from ``p_c``."""
        present = self.cls_num > 0
        per_sample = torch.zeros(self.num_classes, dtype=torch.float64)
        per_sample[present] = self.class_probabilities().double()[present] / self.cls_num[present]
        return torch.multinomial(per_sample[self.labels], self.total_size, replacement=True, generator=generator)

    def global_epoch(self) -> torch.Tensor:
        """The whole epoch (all ranks), reproducible from ``seed`` and ``epoch``."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return self.epoch_indices(generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_epoch()[self.rank:self.total_size:self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_per_rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])


def _normalised(weights: torch.Tensor) -> torch.Tensor:
    return weights / weights.sum()


class InstanceSampler(LongTailSampler):
    """Every image once per epoch in random order (padded by wrapping so all ranks get equal shares)."""

    def class_probabilities(self) -> torch.Tensor:
        return _normalised(self.cls_num.double())

    def epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        n = self.labels.numel()
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(self.total_size / n))])
        return order[:self.total_size]


class ClassBalancedSampler(LongTailSampler):
    """Each class equally likely."""

    def class_probabilities(self) -> torch.Tensor:
        return _normalised((self.cls_num > 0).double())


class SqrtSampler(LongTailSampler):
    """Square-root sampling (Mahajan et al. 2018)."""

    def class_probabilities(self) -> torch.Tensor:
        return _normalised(self.cls_num.double().sqrt())


def _effective_number_probs(counts: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """n_c / E_c with E_c = (1 - beta_c^n_c) / (1 - beta_c): samples weighted by their class's inverse effective number."""
    counts = counts.double()
    weights = torch.zeros_like(counts)
    present = counts > 0
    b = beta.double().expand_as(counts)[present]
    weights[present] = counts[present] * (1.0 - b) / (1.0 - b.pow(counts[present]))
    return _normalised(weights)


class EffectiveNumberSampler(LongTailSampler):
    """Effective-number sampling (Cui et al. 2019) with one beta for all classes."""

    def __init__(self, labels: Sequence[int], beta: float = 0.9999, **kwargs):
        super().__init__(labels, **kwargs)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must lie in [0, 1), got {beta}")
        self.beta = float(beta)

    def class_probabilities(self) -> torch.Tensor:
        return _effective_number_probs(self.cls_num, torch.tensor(self.beta))


class CBENSampler(LongTailSampler):
    """Class-based effective-number sampling (GCL paper, Eq. 13-14): rarer classes get a beta closer to 1.

    Defaults follow the authors' code (a=0.9999, b=1e-5); the paper's a=0.999, b=0.0009 is ``CBEN_PAPER``.
    """

    def __init__(self, labels: Sequence[int], a: float = CBEN_CODE["a"], b: float = CBEN_CODE["b"], **kwargs):
        super().__init__(labels, **kwargs)
        if not (0.0 <= a < 1.0 and b >= 0.0 and a + b < 1.0):
            raise ValueError(f"CBEN needs 0 <= a < 1, b >= 0 and a + b < 1 (every beta below 1); got a={a}, b={b}")
        self.a, self.b = float(a), float(b)

    def class_betas(self) -> torch.Tensor:
        """beta_c per class from its cloud size delta_c = log n_max - log n_c (absent classes: beta = a)."""
        counts = self.cls_num.double()
        present = counts > 0
        delta = torch.zeros_like(counts)
        delta[present] = counts.max().log() - counts[present].log()
        lo, hi = delta[present].min(), delta[present].max()
        scaled = (delta - lo).clamp_min(0) / (hi - lo) if hi > lo else torch.zeros_like(delta)
        return self.a + self.b * scaled

    def class_probabilities(self) -> torch.Tensor:
        return _effective_number_probs(self.cls_num, self.class_betas())


class ClassAwareSampler(LongTailSampler):
    """Round-robin over classes in shuffled order, cycling through each class's shuffled images."""

    def class_probabilities(self) -> torch.Tensor:
        return _normalised((self.cls_num > 0).double())

    def epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        classes = torch.nonzero(self.cls_num > 0).flatten()
        rounds = math.ceil(self.total_size / classes.numel())
        class_seq = torch.cat([classes[torch.randperm(classes.numel(), generator=generator)] for _ in range(rounds)])
        class_seq = class_seq[:self.total_size]
        out = torch.empty(self.total_size, dtype=torch.long)
        for c in classes.tolist():
            slots = torch.nonzero(class_seq == c).flatten()
            if slots.numel() == 0:
                continue
            members = torch.nonzero(self.labels == c).flatten()
            cycles = math.ceil(slots.numel() / members.numel())
            picks = torch.cat([members[torch.randperm(members.numel(), generator=generator)] for _ in range(cycles)])
            out[slots] = picks[:slots.numel()]
        return out


SAMPLERS = {
    "instance": InstanceSampler, "class_balanced": ClassBalancedSampler, "sqrt": SqrtSampler,
    "effective_number": EffectiveNumberSampler, "cben": CBENSampler, "class_aware": ClassAwareSampler,
}


def create_sampler(name: str, labels: Sequence[int], **kwargs) -> LongTailSampler:
    """Build a sampler by name; ``cben_paper`` is CBEN with the paper's a and b."""
    if name == "cben_paper":
        return CBENSampler(labels, **{**CBEN_PAPER, **kwargs})
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}, cben_paper")
    return SAMPLERS[name](labels, **kwargs)
