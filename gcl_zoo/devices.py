"""Which torch device a ``--device`` flag means, and the autocast it runs under: one rule for training,
evaluation, serving and benchmarks."""
import contextlib
from typing import ContextManager, Optional

import torch

__all__ = ["resolve_device", "autocast_for"]


def autocast_for(device: torch.device, dtype: Optional[torch.dtype] = torch.bfloat16) -> ContextManager:
    """Autocast to ``dtype`` on ``device``'s type; no autocast when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def resolve_device(name: str = "auto", local_rank: Optional[int] = None) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; ``cuda`` without an index takes GPU ``local_rank``
    (torchrun's) and makes it the current device. Asking for CUDA without one is an error that says what to do."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {name} was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None:
            torch.cuda.set_device(device)
    return device
