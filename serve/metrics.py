"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

Counters, gauges and histograms with labels, enough for the server's few series. All updates happen on the
event loop (HTTP middleware and the batching workers' callbacks), so no locking is needed.
"""
from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from starlette.routing import Match

__all__ = ["Counter", "Gauge", "ReadCounter", "Histogram", "ServerMetrics", "MetricsMiddleware", "route_template", "templated_routes", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value)) if value != int(value) else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = ()):
        self.name, self.help, self.labelnames = name, help_, tuple(labelnames)

    def _key(self, labels: Mapping[str, str]) -> LabelValues:
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = ()):
        super().__init__(name, help_, labelnames)
        self.values: dict[LabelValues, float] = collections.defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[self._key(labels)] += amount

    def lines(self) -> list[str]:
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}"
                                for k, v in sorted(self.values.items())]


class Gauge(_Metric):
    """A gauge whose values are read from ``read()`` at scrape time (label values -> value)."""

    kind = "gauge"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str], read: Callable[[], Mapping[LabelValues, float]]):
        super().__init__(name, help_, labelnames)
        self.read = read

    def lines(self) -> list[str]:
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}"
                                for k, v in sorted(self.read().items())]


class ReadCounter(Gauge):
    """A counter kept elsewhere (only ever growing) and read from ``read()`` at scrape time."""

    kind = "counter"


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str], buckets: Iterable[float]):
        super().__init__(name, help_, labelnames)
        self.bounds = tuple(sorted(buckets)) + (float("inf"),)
        self.counts: dict[LabelValues, list[int]] = {}
        self.sums: dict[LabelValues, float] = collections.defaultdict(float)

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        counts = self.counts.setdefault(key, [0] * len(self.bounds))
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                counts[i] += 1
        self.sums[key] += value

    def lines(self) -> list[str]:
        out = self.header()
        for key, counts in sorted(self.counts.items()):
            for bound, count in zip(self.bounds, counts):
                le = f'le="{_number(bound)}"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {count}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(self.sums[key])}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {counts[-1]}")
        return out


class ServerMetrics:
    """The server's series: requests by status, latency, batch sizes, queue depth and images/s per model, GPU JPEG
    decoding fallbacks per model, and per model and prior stream the images in its window and how far its
    estimate is from the source prior (``prior_streams``: model -> stream -> (images, total variation)), with the
    streams dropped at the cap (``prior_streams_dropped``: model -> count)."""

    def __init__(self, max_batch_size: int, queue_depths: Callable[[], Mapping[str, int]], window_s: float = 10.0,
                 decode_fallbacks: Callable[[], Mapping[str, Mapping[str, int]]] = dict,
                 prior_streams: Callable[[], Mapping[str, Mapping[str, tuple[int, float]]]] = dict,
                 prior_streams_dropped: Callable[[], Mapping[str, int]] = dict):
        self.window_s = window_s
        self.started = time.monotonic()
        self._recent: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(collections.deque)
        batch_bounds = sorted({1 << i for i in range(max_batch_size.bit_length())} | {max_batch_size})
        self.requests = Counter("gcl_serve_requests_total", "HTTP requests answered, by endpoint and status code",
                                ("endpoint", "status"))
        self.latency = Histogram("gcl_serve_request_duration_seconds", "time from request to response",
                                 ("endpoint",), LATENCY_BUCKETS)
        self.batch_size = Histogram("gcl_serve_batch_size", "images per forward pass", ("model",), batch_bounds)
        self.batch_seconds = Histogram("gcl_serve_batch_duration_seconds",
                                       "pre-processing collation plus forward pass per batch", ("model",), LATENCY_BUCKETS)
        self.images = Counter("gcl_serve_images_total", "images classified", ("model",))
        self.queue_depth = Gauge("gcl_serve_queue_depth", "images waiting for a batch", ("model",),
                                 lambda: {(m,): float(d) for m, d in queue_depths().items()})
        self.images_per_second = Gauge(
            "gcl_serve_images_per_second", f"images classified per second over the last {window_s:g} s",
            ("model",), self._rates)
        self.decode_fallbacks = ReadCounter(
            "gcl_serve_gpu_jpeg_fallbacks_total", "GPU JPEG decoding fallbacks: per_image, batched calls that failed "
            "(their images retried one at a time); pil, images the GPU decoder refused (decoded on the CPU)",
            ("model", "fallback"), lambda: {(m, kind): float(n) for m, counts in decode_fallbacks().items()
                                            for kind, n in counts.items()})
        self.prior_images = Gauge(
            "gcl_serve_prior_stream_images", "images of traffic in a prior stream's window", ("model", "stream"),
            lambda: {(m, name): float(images) for m, streams in prior_streams().items()
                     for name, (images, _) in streams.items()})
        self.prior_shift = Gauge(
            "gcl_serve_prior_stream_shift", "total variation distance of a prior stream's estimate from the model's "
            "source prior (0: no shift taken)", ("model", "stream"),
            lambda: {(m, name): shift for m, streams in prior_streams().items() for name, (_, shift) in streams.items()})
        self.prior_dropped = ReadCounter(
            "gcl_serve_prior_streams_dropped_total", "prior streams dropped to make room for a new one "
            "(--max-prior-streams)", ("model",), lambda: {(m,): float(n) for m, n in prior_streams_dropped().items()})
        self._all = (self.requests, self.latency, self.batch_size, self.batch_seconds, self.images,
                     self.queue_depth, self.images_per_second, self.decode_fallbacks, self.prior_images,
                     self.prior_shift, self.prior_dropped)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.inc(endpoint=endpoint, status=str(status))
        self.latency.observe(seconds, endpoint=endpoint)

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.observe(size, model=model)
        self.batch_seconds.observe(seconds, model=model)
        self.images.inc(size, model=model)
        self._recent[model].append((time.monotonic(), size))

    def _rates(self) -> dict[LabelValues, float]:
        now = time.monotonic()
        span = min(self.window_s, max(now - self.started, 1e-3))
        rates = {}
        for model, recent in self._recent.items():
            while recent and recent[0][0] < now - self.window_s:
                recent.popleft()
            rates[(model,)] = sum(n for _, n in recent) / span
        return rates

    def render(self) -> str:
        return "\n".join(line for metric in self._all for line in metric.lines()) + "\n"


def templated_routes(routes: Iterable[Any]) -> list[Any]:
    """The routes that have a path template, each once (an application's own routes and those of the routers it
    includes: some FastAPI versions list the included routes as copies, others wrap them in one object)."""
    seen, unique = set(), []
    for route in routes:
        key = (getattr(route, "path", None), tuple(sorted(getattr(route, "methods", None) or ())))
        if isinstance(key[0], str) and key not in seen:
            seen.add(key)
            unique.append(route)
    return unique


def route_template(scope: dict[str, Any], routes: Sequence[Any]) -> str:
    """The route template a request is counted under (``/v2/models/{name}/infer``, not the path it named): the
    route that answered it, else the first of ``routes`` its path and method match (a response refused before
    routing: an early 413, 408 or 503), else ``unmatched``."""
    route = scope.get("route")
    if route is None:
        matched = [(r.matches(scope)[0], r) for r in routes]
        route = next((r for match, r in matched if match == Match.FULL), None) or next(
            (r for match, r in matched if match == Match.PARTIAL), None)
    return getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    """Count every response by route template (``routes``: ``templated_routes``) and status, and time it."""

    def __init__(self, app: Any, metrics: ServerMetrics, routes: Sequence[Any]):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def record_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            self.metrics.observe_request(route_template(scope, self.routes), status, time.perf_counter() - start)
