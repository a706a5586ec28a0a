"""Which torch device a ``--device`` flag means, and the autocast it runs under: one rule for training,
evaluation, serving and benchmarks."""
import contextlib
from contextlib import AbstractContextManager

import torch

__all__ = ["resolve_device", "autocast_for", "cpu_has_fast_bf16", "slow_bf16_warning"]


def autocast_for(device: torch.device, dtype: torch.dtype | None = torch.bfloat16) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type; no autocast when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU. ``local_rank`` is torchrun's, for a process of a
    group (None alone): ``cuda`` then takes GPU ``local_rank`` and makes it the current device, and an explicit
    ``cuda:N`` is refused, since it would put every process on that one GPU (NCCL: "Duplicate GPU detected").
    Asking for CUDA without one is an error that says what to do."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and local_rank is not None:
        raise ValueError(f"--device {name} names one GPU, but under torchrun each process takes its own (GPU "
                         "LOCAL_RANK); pass --device cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {name} was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None:
            torch.cuda.set_device(device)
    return device


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), None elsewhere: benchmark records name their machine,
    since the CPU model, not the core count, decides most timings."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return None


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 in hardware (AVX-512 or AMX, as oneDNN requires); on an AVX2-only CPU autocast
    emulates bf16 and training runs many times slower than in float32 (bench/results/train_speed_cpu_avx2*.json)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def slow_bf16_warning(device: torch.device, amp: bool) -> str | None:
    """The warning for bf16 autocast asked for on a CPU that only emulates it, else None."""
    if not amp or device.type != "cpu" or cpu_has_fast_bf16():
        return None
    return (f"--amp on: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 units (AVX-512 or AMX), so "
            "bf16 autocast is emulated and runs many times slower than float32; use --amp off here")
