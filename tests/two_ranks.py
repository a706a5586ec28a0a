"""Run a function in two processes joined in a gloo group, as DDP training runs under torchrun, on the CPU."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def _rank_main(rank: int, port: int, target: Callable[..., Any], args: tuple, results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        results.put((rank, target(rank, *args)))
    except Exception as exc:  # reported to the test, which shows it
        results.put((rank, repr(exc)))
    finally:
        dist.destroy_process_group()


def on_two_ranks(target: Callable[..., Any], *args: Any, timeout_s: float = 300) -> dict[int, Any]:
    """``target(rank, *args)`` on ranks 0 and 1 (spawned: ``target`` must be a module-level function); each rank's
    return value, or the repr of what it raised."""
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(rank, port, target, args, results)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    outcome = dict(results.get(timeout=timeout_s) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    return outcome
