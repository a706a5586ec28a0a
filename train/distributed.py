"""Process-group set-up for torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) and the few collectives training needs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group if launched by torchrun (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor (sizes may differ) in rank order, on every rank."""
    if not dist.is_initialized():
        return tensor
    parts: List = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_error(message: str) -> str:
    """Rank 0's error message (or '') on every rank, so all ranks stop together on a set-up error."""
    if not dist.is_initialized():
        return message
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]
