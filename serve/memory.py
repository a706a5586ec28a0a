"""Keep freed memory in the process for the next batch instead of handing it back to the operating system.

glibc serves allocations above a threshold (128 KiB at first, adjusted up to 32 MiB as blocks are freed) with
fresh ``mmap`` pages and unmaps them on ``free``, so a CPU forward pass whose activations are a few MiB each
faults its memory in again on every batch, thousands of page faults each. Raising the mmap threshold to its maximum and the trim threshold far above it
makes those blocks come from (and return to) the allocator's arenas, which then stay as large as the busiest
batch needed. Tensors larger than 32 MiB are still mapped and unmapped each time.

The server applies it (``serve.startup``). CPU training steps fault too, but there the saving is within the noise
of a step's time, so the trainer leaves the allocator alone.
"""
from __future__ import annotations

import ctypes
import platform

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def retain_freed_memory() -> bool:
    """Tune glibc's allocator as described above; False (and nothing changed) on other C libraries."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
