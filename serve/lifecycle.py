"""Stopping well: on SIGTERM (what every orchestrator sends first) or Ctrl-C the server drains, then exits 0.

Draining: ``/ready`` answers 503 at once (load balancers stop sending), new work answers 503 with
``Retry-After``, and the requests already in flight are answered; once none is left, or ``--shutdown-grace-s``
has passed, uvicorn's own shutdown runs (the batching engines answer anything still queued with 503). A second
signal stops at once.
"""
from __future__ import annotations

import logging
import time
from types import FrameType
from typing import Any

import uvicorn

__all__ = ["DrainingServer"]

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` that drains ``state`` (a ``ServerState``) before it stops."""

    def __init__(self, config: uvicorn.Config, state: Any, grace_s: float):
        super().__init__(config)
        self.state = state
        self.grace_s = grace_s
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn re-raises a handled signal once it has stopped, which would end the process with the signal's
        # status; a drained server has done what the signal asked and exits 0
        if self.drain_deadline is not None:
            self.should_exit = True
            self.force_exit = True
            return
        self.state.draining = True
        self.drain_deadline = time.monotonic() + self.grace_s
        log.info("draining: %d request(s) in flight, up to %g s", self.state.in_flight, self.grace_s)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if self.state.in_flight == 0 or time.monotonic() >= self.drain_deadline:
                if self.state.in_flight:
                    log.warning("grace period over with %d request(s) in flight", self.state.in_flight)
                self.should_exit = True
        return await super().on_tick(counter)
