"""Process-wide settings the server makes, all here, once, at start-up: never in a constructor, so building a
``ModelRunner`` (in a test, a benchmark) changes nothing outside it.

``configure_process`` runs on the event loop's thread (the main thread under uvicorn) when the models start
loading, before an inference thread computes anything:

* the OpenMP runtime is set up on this thread (``start_parallel_runtime``);
* freed memory is kept for the next batch (``retain_freed_memory``);
* this thread computes with one intra-op thread (each inference thread sets its own count as it starts);
* on CUDA, ``cudnn.benchmark`` autotunes the batch shapes, which repeat (batches are padded to warmed sizes);
* with ``torch.compile``, Dynamo may keep a graph per batch bucket of every model (``allow_graphs_per_bucket``).
"""
from __future__ import annotations

import ctypes
import logging
import platform

import torch

from .runner import batch_buckets

__all__ = ["configure_process", "configure_torch", "start_parallel_runtime", "allow_graphs_per_bucket",
           "retain_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def retain_freed_memory() -> bool:
    """Keep freed memory in the process for the next batch instead of handing it back to the operating system;
    False (and nothing changed) on C libraries other than glibc.

    glibc serves allocations above a threshold (128 KiB at first, adjusted up to 32 MiB as blocks are freed) with
    fresh ``mmap`` pages and unmaps them on ``free``, so a CPU forward pass whose activations are a few MiB each
    faults its memory in again on every batch, thousands of page faults each. Raising the mmap threshold to its
    maximum and the trim threshold far above it makes those blocks come from (and return to) the allocator's
    arenas, which then stay as large as the busiest batch needed. Tensors larger than 32 MiB are still mapped and
    unmapped each time. CPU training steps fault too, but there the saving is within the noise of a step's time,
    so the trainer leaves the allocator alone."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def start_parallel_runtime() -> None:
    """Run one parallel CPU op on the calling thread, which must be the process's main thread.

    PyTorch's OpenMP runtime is set up by the first parallel region. When that region ran on a worker thread
    (the server's inference thread) rather than the main thread, every later forward pass on worker threads was
    several times slower on a shared machine (``bench/serve_load.py`` shows the effect when this is left out).
    """
    torch.ones(1 << 20).mul_(2).sum()


def allow_graphs_per_bucket(buckets: int) -> None:
    """Let Dynamo keep ``buckets`` more compiled graphs: past its recompile limit (8 by default) it silently falls
    back to eager for good. The limit counts the graphs of one function's code, which every model of an
    architecture shares, so the limit is raised by the buckets of every compiled model."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, getattr(config, name) + buckets)


def configure_torch(device: torch.device, optimization: str, max_batch_size: int, models: int) -> None:
    """The model-facing settings: ``cudnn.benchmark`` on CUDA, and room for every compiled graph of ``models``
    models with ``max_batch_size`` (one per ``batch_buckets`` size)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # batch shapes repeat, so the autotuned kernels pay off
    if optimization == "compile":
        allow_graphs_per_bucket(models * len(batch_buckets(max_batch_size)))


def configure_process(device: torch.device, optimization: str, max_batch_size: int, models: int) -> None:
    """Every process-wide setting, on the event loop's thread, before the inference threads run anything."""
    start_parallel_runtime()
    if retain_freed_memory():
        log.info("allocator: freed memory is kept for the next batch (no page faults per batch)")
    # the event loop's own tensor work (a request's rows: stack, softmax, top-k) is tiny; with the default team
    # every parallel region in it wakes OpenMP workers that then spin on the cores the inference threads use
    torch.set_num_threads(1)
    configure_torch(device, optimization, max_batch_size, models)
