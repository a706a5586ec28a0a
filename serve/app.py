"""The FastAPI application: ``create_app(settings)``.

The lifespan starts loading and warming the models in the background, so ``/health`` answers at once and
``/ready`` turns from 503 to 200 when every model can serve. Every error a client can cause is a
``RequestError`` and answers ``{"error": "<what is wrong and how to fix it>"}`` with its status code
(``serve.errors``).

The factory only wires: the routes are routers (``predict``: ``/predict``; ``oip``: the v2 protocol; ``prior_api``:
the prior streams; ``probes``: health, readiness, models, metrics) reaching the ``ServerState`` through the ``get_state`` dependency
(``serve.dependencies``); both protocols run one pipeline (``serve.pipeline``). Around them: ``schemas`` (the
OpenAPI document), ``state`` (model loading), ``limits`` (body budget, timeouts, draining), ``metrics``
(Prometheus, its middleware).
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from . import __version__, oip, prior_api, probes
from .errors import install_error_handlers
from .limits import BodyBudget, BodyLimitMiddleware, DrainMiddleware
from .metrics import MetricsMiddleware, ServerMetrics, templated_routes
from .predict import predict_router
from .schemas import install_openapi
from .served import ServedModels
from .settings import ServeSettings
from .state import ServerState, load_models

__all__ = ["create_app", "ServerState"]


def create_state(settings: ServeSettings) -> ServerState:
    """The state the routes share, its metrics reading the engines' queues, the runners' decode fallbacks and
    the prior streams."""
    models = ServedModels(settings.max_images, settings.default_top_k)
    metrics = ServerMetrics(settings.max_batch_size, lambda: {m: s.images.depth for m, s in models.served.items()},
                            decode_fallbacks=lambda: {m: r.decode_fallbacks() for m, r in models.runners().items()},
                            prior_streams=lambda: {m: s.streams.gauges() for m, s in models.served.items() if s.streams},
                            prior_streams_dropped=lambda: {m: s.streams.dropped for m, s in models.served.items()
                                                           if s.streams})
    return ServerState(settings=settings, metrics=metrics, models=models)


def lifespan_for(state: ServerState, on_load_failure: Callable[[str], None] | None) -> Callable:
    """Start the decode pool and the model loading (in the background); on shutdown stop the engines and pools."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.decode_pool = ThreadPoolExecutor(state.settings.decode_workers, thread_name_prefix="decode")
        loading = asyncio.get_running_loop().create_task(load_models(state, on_load_failure))
        try:
            yield
        finally:
            loading.cancel()
            engines = [engine for model in state.models.served.values() for engine in (model.images, model.tensors)]
            await asyncio.gather(loading, *(engine.stop() for engine in engines), return_exceptions=True)
            for pool in (state.decode_pool, state.inference_pool):
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)

    return lifespan


def create_app(settings: ServeSettings, on_load_failure: Callable[[str], None] | None = None) -> FastAPI:
    """The server for ``settings``; ``on_load_failure(message)`` is called if the models cannot be loaded."""
    state = create_state(settings)
    # /docs and /redoc with their scripts and styles served by this server (no CDN: they work offline)
    app = FastAPIOffline(title="gcl-zoo inference server", version=__version__,
                         lifespan=lifespan_for(state, on_load_failure),
                         description="Long-tailed image classification with GCL zoo models: dynamic batching, "
                                     "the Hugging Face image-classification task, Prometheus metrics.")
    app.state.server = state
    routers = (predict_router(settings.max_images), oip.router, prior_api.router, probes.router)
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       budget=BodyBudget(settings.max_inflight_bytes), body_timeout_s=settings.body_timeout_s)
    app.add_middleware(DrainMiddleware, state=state)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics,
                       routes=templated_routes([*app.routes, *(route for router in routers for route in router.routes)]))
    install_error_handlers(app)
    install_openapi(app, settings.max_images, [oip.protocol_name(m) for m in settings.models],
                    settings.api_key is not None, lambda: list(state.models.runners().values()) if state.ready else [],
                    estimating=settings.prior_window > 0)
    return app
