"""Process-group set-up for torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) and the few collectives training needs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

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


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def group_local_rank() -> int | None:
    """``local_rank()`` in a torchrun group of several processes; None for a process on its own."""
    return local_rank() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group if launched by torchrun (NCCL on GPUs, gloo on CPUs).

    ``device`` must already be this process's own device (``torch.cuda.set_device`` done): NCCL binds the
    communicator to the current device when the group is created, so a late ``set_device`` leaves every rank's
    collectives on GPU 0.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor (sizes may differ) in rank order, on every rank."""
    if not dist.is_initialized():
        return tensor
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` without a process group."""
    if not dist.is_initialized():
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics and the like) copied into every rank's ``module``."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


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
