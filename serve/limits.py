"""What the server holds for its clients, bounded: bytes of request bodies, time to send headers and bodies,
requests taken while it shuts down.

* ``BodyLimitMiddleware``: one body over ``--max-body-mb`` answers 413; all bodies being read or served at once
  may hold at most ``--max-inflight-mb`` (a request that would pass it answers 503 with ``Retry-After``, its body
  read and dropped as it arrives: a flood of maximal uploads cannot hold more memory than the setting); a body not
  received within ``--body-timeout-s`` of its request's start answers 408 (a client trickling bytes no longer
  holds a connection for as long as it likes).
* ``HeaderTimeoutHttpTools``: uvicorn's HTTP protocol with a deadline for the request line and headers
  (``--header-timeout-s``), which uvicorn itself does not bound once the first byte has arrived: a connection
  still sending them then gets 408 and is closed.
* ``DrainMiddleware``: counts the requests in flight and, once the server drains for shutdown, refuses new work
  with 503 (probes and metrics still answer).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import RequestError, error_response

__all__ = ["BodyBudget", "BodyLimitMiddleware", "HeaderTimeoutHttpTools", "header_timeout_protocol",
           "DrainMiddleware", "PROBE_PATHS"]

PROBE_PATHS = frozenset({"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"})


class BodyBudget:
    """Bytes of request bodies the server holds at once (reserved from Content-Length, or as chunks arrive)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.max_bytes:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size

    def overloaded(self) -> RequestError:
        return RequestError(503, f"the server holds {self.max_bytes / 2**20:g} MB of request bodies already; retry "
                                 "shortly (or raise --max-inflight-mb)", headers={"Retry-After": "1"})


class BodyLimitMiddleware:
    """Per-body size limit (413), the shared ``BodyBudget`` (503) and the body deadline (408)."""

    def __init__(self, app: Any, max_bytes: int, budget: BodyBudget, body_timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.budget = budget
        self.body_timeout_s = body_timeout_s

    def _too_large(self) -> RequestError:
        return RequestError(413, f"the request body is larger than {self.max_bytes / 2**20:g} MB; send fewer or "
                                 "smaller images per request (or raise --max-body-mb)")

    def _too_slow(self) -> RequestError:
        return RequestError(408, f"the request body did not arrive within {self.body_timeout_s:g} s; send it "
                                 "faster, or raise --body-timeout-s", headers={"Connection": "close"})

    @staticmethod
    async def _discard_body(receive: Callable, deadline: float) -> bool:
        """Read the rest of a body without keeping it; False when it does not arrive by ``deadline``."""
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return False
            if message["type"] != "http.request" or not message.get("more_body", False):
                return True

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > self.max_bytes:
            error = self._too_large()
            return await error_response(error.status, error.message, {"Connection": "close"})(scope, receive, send)
        deadline = time.monotonic() + self.body_timeout_s
        reserved = declared or 0
        if not self.budget.take(reserved):
            # read and drop the body, so the client sees the answer (and its Retry-After) instead of a reset
            error = self.budget.overloaded() if await self._discard_body(receive, deadline) else self._too_slow()
            return await error_response(error.status, error.message, error.headers)(scope, receive, send)
        received = 0
        body_done = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, reserved, body_done
            if body_done:  # the whole body is in: later messages (a disconnect) have no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise self._too_slow() from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            if received > reserved:  # a chunked body (or one longer than it said): reserve as it arrives
                if not self.budget.take(received - reserved):
                    raise self.budget.overloaded()
                reserved = received
            body_done = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.budget.give_back(reserved)


class HeaderTimeoutHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline from a request's first byte (or the connection's start) to
    the end of its headers."""

    header_timeout_s = 10.0
    _ANSWER = json.dumps({"error": "the request headers did not arrive in time; send them at once"}).encode()

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                             b"content-length: " + str(len(self._ANSWER)).encode() + b"\r\n\r\n" + self._ANSWER)
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if getattr(self, "_header_timer", None) is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # between requests uvicorn's keep-alive timeout applies; a next request re-arms it

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def header_timeout_protocol(seconds: float) -> type:
    """The protocol class for ``uvicorn.Config(http=...)`` with a header deadline of ``seconds``."""
    return type("HeaderTimeoutHttpTools", (HeaderTimeoutHttpTools,), {"header_timeout_s": seconds})


class DrainMiddleware:
    """Counts requests in flight (``state.in_flight``); while ``state.draining`` new work answers 503."""

    def __init__(self, app: Any, state: Any):
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.state.draining and scope["path"] not in PROBE_PATHS:
            return await error_response(503, "the server is shutting down; retry on another replica",
                                {"Retry-After": "1", "Connection": "close"})(scope, receive, send)
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1
