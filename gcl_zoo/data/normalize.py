"""uint8 images to the normalised float input a model expects: one home for training's and serving's copy."""
from typing import Sequence

import torch

__all__ = ["Normalize"]


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
