"""The batching engine: images from concurrent requests are merged into batches for one forward pass.

A request's images join a bounded queue as one entry (all or none: a request that does not fit answers 503 with
Retry-After). One worker task per model waits for a free inference stream, then takes images from the first
waiting request on, keeps collecting until the batch holds ``max_batch_size`` images or ``max_wait_s`` has passed,
and runs the batch in the inference threads, so the event loop keeps accepting and answering requests meanwhile.
A request larger than the room left in a batch is split: its first images fill this batch, the rest start the
next. With several streams the next batch is collected and run while the previous one is still computing; images
arriving while every stream is busy wait in the queue and make the next batch a full one. A request not answered
within its timeout answers 504 and its images are dropped from any batch that has not started yet.

The queue holds requests, not images: one future per request instead of one per image (a future, a queue entry
and a gather callback per image were the largest piece of the event loop's work for a 64-image request).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import RequestError

__all__ = ["BatchingEngine"]

log = logging.getLogger(__name__)

# predict(items) -> one result per item: a value, or an exception meant for that item's request alone
PredictFn = Callable[[list[Any]], list[Any]]
BatchObserver = Callable[[int, float], None]


@dataclass(eq=False)
class _Request:
    """One ``submit`` call: its items, how many batches have taken so far, and its results as they come back."""

    items: list[Any]
    future: asyncio.Future = field(repr=False)
    taken: int = 0
    results: list[Any] = field(init=False, repr=False)
    missing: int = field(init=False)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)
        self.missing = len(self.items)


class _Slice(NamedTuple):
    """Items ``start:stop`` of a request, as one batch computes them."""

    request: _Request
    start: int
    stop: int


class BatchingEngine:
    """Bounded queue + one batching worker around a synchronous ``predict`` run in ``executor``, with at most
    ``streams`` batches in flight (``executor`` needs that many threads)."""

    def __init__(self, name: str, predict: PredictFn, executor: Executor, max_batch_size: int = 64,
                 max_wait_s: float = 0.005, max_queue: int = 1024, on_batch: BatchObserver | None = None,
                 streams: int = 1):
        if streams < 1:
            raise ValueError(f"streams must be at least 1, got {streams}")
        self.name = name
        self.predict = predict
        self.executor = executor
        self.streams = streams
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._waiting: deque[_Request] = deque()
        self._depth = 0  # images of waiting requests that no batch has taken yet
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._seconds_per_image = 0.0  # recent inference cost per image and stream, for Retry-After

    @property
    def depth(self) -> int:
        """Images waiting for a batch."""
        return self._depth

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batching-{self.name}")

    async def stop(self) -> None:
        """Stop the worker and the batches in flight; their requests and those still queued answer 503."""
        tasks = [t for t in (self._worker, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._worker = None
        _fail(self._waiting, _shutting_down())
        self._waiting.clear()
        self._depth = 0

    def _retry_after(self) -> str:
        return str(max(1, math.ceil(self.depth * self._seconds_per_image / self.streams)))

    async def submit(self, items: Sequence[Any], timeout_s: float) -> list[Any]:
        """Queue ``items`` and wait for their results (in order); 503 when the queue is full, 504 on timeout."""
        if self.depth + len(items) > self.max_queue:
            raise RequestError(503, f"the server is overloaded ({self.depth} images queued for {self.name}, "
                                    f"limit {self.max_queue}); retry after the Retry-After seconds",
                               headers={"Retry-After": self._retry_after()})
        request = _Request(list(items), asyncio.get_running_loop().create_future())
        self._waiting.append(request)
        self._depth += len(request.items)
        self._arrived.set()
        try:  # on timeout (or when the caller is cancelled) the future is cancelled: no batch takes its images
            results = await asyncio.wait_for(request.future, timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"the request was not answered within {timeout_s:g} s (server busy); "
                                    "retry later or send fewer images per request") from None
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def _next_waiting(self) -> _Request | None:
        """The first waiting request still wanted (those that timed out leave the queue here)."""
        while self._waiting and self._waiting[0].future.done():
            gone = self._waiting.popleft()
            self._depth -= len(gone.items) - gone.taken
        return self._waiting[0] if self._waiting else None

    async def _arrival(self, timeout_s: float | None) -> bool:
        """Wait until a request arrives (at most ``timeout_s``); False when none did."""
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def _collect(self) -> list[_Slice]:
        """The next batch: wait for one waiting request, then take images until full or ``max_wait_s`` has passed."""
        batch: list[_Slice] = []
        size, deadline = 0, None
        try:
            while size < self.max_batch_size:
                request = self._next_waiting()
                if request is None:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if (remaining is not None and remaining <= 0) or not await self._arrival(remaining):
                        break
                    continue
                take = min(self.max_batch_size - size, len(request.items) - request.taken)
                batch.append(_Slice(request, request.taken, request.taken + take))
                request.taken += take
                self._depth -= take
                size += take
                if request.taken == len(request.items):
                    self._waiting.popleft()
                if deadline is None:
                    deadline = time.monotonic() + self.max_wait_s
        except asyncio.CancelledError:  # stopped while collecting: these images left the queue already
            _fail([part.request for part in batch], _shutting_down())
            raise
        return [part for part in batch if not part.request.future.done()]  # drop requests that already timed out

    async def _run(self) -> None:
        free_streams = asyncio.Semaphore(self.streams)
        while True:
            await free_streams.acquire()
            batch = await self._collect()
            if not batch:
                free_streams.release()
                continue
            task = asyncio.get_running_loop().create_task(self._infer(batch))
            self._in_flight.add(task)
            task.add_done_callback(lambda done: (self._in_flight.discard(done), free_streams.release()))

    async def _infer(self, batch: list[_Slice]) -> None:
        """Run one batch in the executor and hand every request its results (or their own errors)."""
        items = [item for part in batch for item in part.request.items[part.start:part.stop]]
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.predict, items)
        except asyncio.CancelledError:
            _fail([part.request for part in batch], _shutting_down())
            raise
        except Exception as exc:  # a failed batch fails its requests, never the worker
            log.exception("inference failed for a batch of %d on %s", len(items), self.name)
            results = [exc] * len(items)
        seconds = time.perf_counter() - start
        self._seconds_per_image = seconds / len(items)
        if self.on_batch is not None:
            self.on_batch(len(items), seconds)
        offset = 0
        for request, first, stop in batch:
            request.results[first:stop] = results[offset:offset + stop - first]
            offset += stop - first
            request.missing -= stop - first
            if request.missing == 0 and not request.future.done():
                request.future.set_result(request.results)


def _shutting_down() -> RequestError:
    return RequestError(503, "the server is shutting down; retry on another instance")


def _fail(requests: Sequence[_Request], error: RequestError) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(error)
