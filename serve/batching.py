"""The batching engine: images from concurrent requests are merged into batches for one forward pass.

A request's images join a bounded queue (all or none: a request that does not fit answers 503 with
Retry-After). One worker task per model waits for a free inference stream, then takes the first waiting image,
keeps collecting until the batch holds ``max_batch_size`` images or ``max_wait_s`` has passed, and runs the batch
in the inference threads, so the event loop keeps accepting and answering requests meanwhile. With several
streams the next batch is collected and run while the previous one is still computing; images arriving while
every stream is busy wait in the queue and make the next batch a full one. A request not answered within its
timeout answers 504 and its images are dropped from any batch that has not started yet.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Set

from .decoding import RequestError

__all__ = ["BatchingEngine"]

log = logging.getLogger("serve.batching")

# predict(items) -> one result per item: a value, or an exception meant for that item's request alone
PredictFn = Callable[[List[Any]], List[Any]]
BatchObserver = Callable[[int, float], None]


@dataclass
class _Entry:
    item: Any
    future: asyncio.Future = field(repr=False)


class BatchingEngine:
    """Bounded queue + one batching worker around a synchronous ``predict`` run in ``executor``, with at most
    ``streams`` batches in flight (``executor`` needs that many threads)."""

    def __init__(self, name: str, predict: PredictFn, executor: Executor, max_batch_size: int = 64,
                 max_wait_s: float = 0.005, max_queue: int = 1024, on_batch: Optional[BatchObserver] = None,
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
        self._queue: "asyncio.Queue[_Entry]" = asyncio.Queue()
        self._worker: Optional[asyncio.Task] = None
        self._in_flight: Set[asyncio.Task] = set()
        self._seconds_per_image = 0.0  # recent inference cost per image and stream, for Retry-After

    @property
    def depth(self) -> int:
        """Images waiting for a batch."""
        return self._queue.qsize()

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
        while not self._queue.empty():
            _fail([self._queue.get_nowait()], _shutting_down())

    def _retry_after(self) -> str:
        return str(max(1, math.ceil(self.depth * self._seconds_per_image / self.streams)))

    async def submit(self, items: Sequence[Any], timeout_s: float) -> List[Any]:
        """Queue ``items`` and wait for their results (in order); 503 when the queue is full, 504 on timeout."""
        if self.depth + len(items) > self.max_queue:
            raise RequestError(503, f"the server is overloaded ({self.depth} images queued for {self.name}, "
                                    f"limit {self.max_queue}); retry after the Retry-After seconds",
                               headers={"Retry-After": self._retry_after()})
        loop = asyncio.get_running_loop()
        entries = [_Entry(item, loop.create_future()) for item in items]
        for entry in entries:
            self._queue.put_nowait(entry)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(e.future for e in entries), return_exceptions=True), timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"the request was not answered within {timeout_s:g} s (server busy); "
                                    "retry later or send fewer images per request") from None
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def _collect(self) -> List[_Entry]:
        """The next batch: wait for one entry, then gather more until full or ``max_wait_s`` has passed."""
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        try:
            while len(batch) < self.max_batch_size:
                if self._queue.empty():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except asyncio.TimeoutError:
                        break
                else:
                    batch.append(self._queue.get_nowait())
        except asyncio.CancelledError:  # stopped while collecting: these entries left the queue already
            _fail(batch, _shutting_down())
            raise
        return [entry for entry in batch if not entry.future.done()]  # drop requests that already timed out

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

    async def _infer(self, batch: List[_Entry]) -> None:
        """Run one batch in the executor and hand every entry its result (or its own error)."""
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.predict, [e.item for e in batch])
        except asyncio.CancelledError:
            _fail(batch, _shutting_down())
            raise
        except Exception as exc:  # a failed batch fails its requests, never the worker
            log.exception("inference failed for a batch of %d on %s", len(batch), self.name)
            results = [exc] * len(batch)
        seconds = time.perf_counter() - start
        self._seconds_per_image = seconds / len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), seconds)
        for entry, result in zip(batch, results):
            if entry.future.done():
                continue
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)


def _shutting_down() -> RequestError:
    return RequestError(503, "the server is shutting down; retry on another instance")


def _fail(entries: Sequence[_Entry], error: RequestError) -> None:
    for entry in entries:
        if not entry.future.done():
            entry.future.set_exception(error)
