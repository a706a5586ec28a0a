"""A model's evaluation pre-processing, shared by training, evaluation and the server (one copy of each step)."""
from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.data import create_transform

__all__ = ["Normalize", "eval_transform"]

# the data-config fields timm's transform factory reads
TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def eval_transform(data_cfg: dict[str, Any]) -> Callable:
    """timm's evaluation transform for a model's data config: PIL image -> normalised float CHW tensor."""
    return create_transform(**{k: v for k, v in data_cfg.items() if k in TRANSFORM_KEYS}, is_training=False)


class Normalize:
    """uint8 NCHW -> float, scaled to [0, 1] and normalised, as ToTensor + Normalize do.

    The constants are made once, on the device the batches live on: built per batch they would be a blocking
    host-to-device copy before every step on a GPU.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float().div(255.0) - self.mean) / self.std
