"""Batch augmentation on the training device, for data sets small enough to live there (CIFAR-size).

The same operations as the DataLoader pipeline, with the same distributions: a 4-pixel zero-padded random
crop and a horizontal flip with probability 1/2 (then ``gcl_zoo.data.preprocessing.Normalize``); and batch mixup (one lambda per batch,
the batch mixed with a random permutation of itself), shared by both pipelines.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pad_crop_flip(images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip of a uint8 or float NCHW batch, all on its device."""
    n, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    flip = torch.rand(n, 1, device=device, generator=generator) < 0.5
    cols = torch.arange(w, device=device)[None, :]
    cols = torch.where(flip, w - 1 - cols, cols) + dx            # flipping = reading the crop's columns backwards
    rows = torch.arange(h, device=device)[None, :] + dy
    batch = torch.arange(n, device=device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2)


def mixup_lambdas(alpha: float, steps: int, seed: int) -> torch.Tensor:
    """One Beta(alpha, alpha) lambda per step of an epoch, drawn up front (seeded) so no step waits on the host."""
    if alpha <= 0:
        return torch.ones(steps)
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=steps)).float()


def mix(images: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """Mix a batch with a random permutation of itself; returns the images and the (y_a, y_b, lam) target."""
    perm = torch.randperm(images.shape[0], device=images.device)
    lam = lam.to(images.device, images.dtype)
    return images * lam + images[perm] * (1 - lam), (labels, labels[perm], lam)
