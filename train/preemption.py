"""Stopping a training run on request: SIGTERM (what SLURM, Kubernetes and preemptible clouds send first) makes
the run write a checkpoint at the next step boundary and exit; ``--resume`` continues from that step.

Every process of a DDP run must stop at the same step, so under DDP the processes agree on the request with an
all-reduce every ``AGREE_EVERY`` steps (one small collective, not a host sync per step); a single process stops
at the very next step.
"""
from __future__ import annotations

import signal
from types import FrameType

import torch

from .distributed import DistInfo, all_reduce_sum

__all__ = ["StopRequested", "StopSignal", "EXIT_STOPPED", "AGREE_EVERY"]

AGREE_EVERY = 10
EXIT_STOPPED = 143  # 128 + SIGTERM: not finished (a scheduler restarts it), but stopped cleanly with a checkpoint


class StopRequested(Exception):
    """The run stopped at a step boundary on request; its checkpoint holds that step."""


class StopSignal:
    """Remembers a SIGTERM while training runs (``with StopSignal(dist) as stop:``)."""

    def __init__(self, dist: DistInfo, device: torch.device):
        self.dist = dist
        self.device = device
        self.received = False
        self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    def __enter__(self) -> StopSignal:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, step: int) -> bool:
        """Whether every process stops after ``step`` (0-based): at once alone, every ``AGREE_EVERY`` steps in DDP."""
        if not self.dist.enabled:
            return self.received
        if (step + 1) % AGREE_EVERY:
            return False
        flag = torch.tensor(float(self.received), device=self.device)
        return float(all_reduce_sum(flag)) > 0
