"""The FastAPI application: ``create_app(settings)``.

The lifespan starts loading and warming the models in the background, so ``/health`` answers at once and
``/ready`` turns from 503 to 200 when every model can serve. Every error a client can cause is a
``RequestError`` and answers ``{"error": "<what is wrong and how to fix it>"}`` with its status code.

This module holds the routes and the answer they build; the rest lives beside it: ``schemas`` (request and
response models, the OpenAPI document), ``state`` (what the routes share, model loading), ``limits`` (body
budget, timeouts, draining), ``metrics`` (Prometheus, its middleware), ``oip`` (the v2 protocol's routes).
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, List, Optional, Sequence

import torch
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .decoding import (ImagePayload, ParsedRequest, RequestError, check_target_prior, check_top_k, inspect_image,
                       parse_predict_request)
from .limits import BodyBudget, BodyLimitMiddleware, DrainMiddleware, error_response
from .memory import retain_freed_memory
from .metrics import CONTENT_TYPE, MetricsMiddleware, ServerMetrics
from .oip import protocol_name
from .oip import register_routes as register_open_inference_routes
from .priors import output_scores
from .runner import ModelRunner, start_parallel_runtime
from .schemas import (ERRORS, NOT_READY, PREDICT_ANSWERS, ModelDescription, ModelsResponse, StatusResponse,
                      install_openapi, predict_body)
from .settings import ServeSettings
from .state import ServerState, load_models

__all__ = ["create_app", "ServerState"]

log = logging.getLogger("serve.app")


# ------------------------------------------------------------------------------------------------------ helpers
def prepare_images(runner: ModelRunner, payloads: Sequence[ImagePayload], max_pixels: int) -> List[Any]:
    """Check each image's header, then decode/pre-process it for ``runner`` (runs in the decode pool)."""
    return [runner.prepare(payload, inspect_image(payload, max_pixels)) for payload in payloads]


def predict_response(model_id: str, scores: Sequence[torch.Tensor], labels: Sequence[str], top_k: int,
                     request: ParsedRequest) -> Response:
    """The answer for one row of ``scores`` per image (``output_scores``), serialised directly: building and
    re-validating pydantic objects for 64 images x top_k labels cost more than the rest of the request's event-loop
    work.

    Hugging Face task shape for JSON and raw-image requests (``[{label, score}]`` for one image, one such list per
    image for a list of inputs), the ``{"model", "predictions"}`` envelope for multipart forms; the model that
    answered is in the ``X-Model-Id`` header either way.
    """
    best, indices = torch.topk(torch.stack(list(scores)), top_k, dim=1)
    predictions = [[{"label": labels[i], "score": s} for s, i in zip(row_scores, row_indices)]
                   for row_scores, row_indices in zip(best.tolist(), indices.tolist())]
    if not request.hf_schema:
        body: Any = {"model": model_id, "predictions": predictions}
    else:
        body = predictions[0] if request.single else predictions
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json",
                    headers={"X-Model-Id": model_id})


# ---------------------------------------------------------------------------------------------------------- app
def create_app(settings: ServeSettings, on_load_failure: Optional[Callable[[str], None]] = None) -> FastAPI:
    """The server for ``settings``; ``on_load_failure(message)`` is called if the models cannot be loaded."""
    state = ServerState(settings=settings, api_key=settings.api_key,
                        metrics=ServerMetrics(settings.max_batch_size,
                                              lambda: {m: e.depth for m, e in state.engines.items()},
                                              decode_fallbacks=lambda: {m: r.decode_fallbacks()
                                                                        for m, r in state.runners.items()}))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        start_parallel_runtime()  # on the main thread, before the inference thread runs anything
        if retain_freed_memory():
            log.info("allocator: freed memory is kept for the next batch (no page faults per batch)")
        state.decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        loading = asyncio.get_running_loop().create_task(load_models(state, on_load_failure))
        try:
            yield
        finally:
            loading.cancel()
            engines = [*state.engines.values(), *state.tensor_engines.values()]
            await asyncio.gather(loading, *(engine.stop() for engine in engines), return_exceptions=True)
            for pool in (state.decode_pool, state.inference_pool):
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)

    # /docs and /redoc with their scripts and styles served by this server (no CDN: they work offline)
    app = FastAPIOffline(title="gcl-zoo inference server", version=__version__, lifespan=lifespan,
                         description="Long-tailed image classification with GCL zoo models: dynamic batching, "
                                     "the Hugging Face image-classification task, Prometheus metrics.")
    app.state.server = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       budget=BodyBudget(settings.max_inflight_bytes), body_timeout_s=settings.body_timeout_s)
    app.add_middleware(DrainMiddleware, state=state)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, routes=app.routes)
    install_openapi(app, settings.max_images, [protocol_name(m) for m in settings.models], state.api_key is not None,
                    lambda: list(state.runners.values()) if state.ready else [])

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server logs have the details")

    bearer = HTTPBearer(auto_error=False, description="the API key as a bearer token")
    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")

    async def require_api_key(credentials: Optional[HTTPAuthorizationCredentials] = Security(bearer),
                              key: Optional[str] = Security(header_key)) -> None:
        """When an API key is configured, /predict needs it as a bearer token or an X-API-Key header. A coroutine,
        so FastAPI runs it on the event loop: a plain function would cost every request a hop to a worker thread."""
        if state.api_key is None:
            return
        given = key or (credentials.credentials if credentials else None)
        if not given:
            raise RequestError(401, "this server needs an API key; send 'Authorization: Bearer <key>' or "
                                    "'X-API-Key: <key>'", headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(given.encode(), state.api_key.encode()):
            raise RequestError(401, "wrong API key; check the key the server was started with",
                               headers={"WWW-Authenticate": "Bearer"})

    async def predict(request: Request, _auth: None = Security(require_api_key)) -> Response:
        """One image as the body (``image/*``, ``application/octet-stream``), JSON ``{"inputs": <base64> |
        [<base64>, ...], "parameters": {"top_k": 5, "function_to_apply": "softmax", "target_prior": "uniform"},
        "model": "..."}`` (both the Hugging Face image-classification task: the answer is its ``[{label, score}]``
        list), or multipart files (answered as ``{"model", "predictions": [[...], ...]}``); the top_k labels per
        image, sorted by score."""
        state.check_ready()
        parsed = await parse_predict_request(request, settings.max_images)
        runner = state.pick(parsed.model)
        top_k = check_top_k(parsed.top_k, runner.num_classes, settings.default_top_k)
        prior = check_target_prior(parsed.target_prior, state.default_priors[runner.model_id], runner)
        loop = asyncio.get_running_loop()
        items = await loop.run_in_executor(state.decode_pool, prepare_images, runner, parsed.payloads,
                                           settings.max_pixels)
        rows = await state.engines[runner.model_id].submit(items, settings.request_timeout_s)
        scores = output_scores(torch.stack(list(rows)), runner, prior, parsed.function_to_apply)
        return predict_response(runner.model_id, scores, runner.labels, top_k, parsed)

    for path in ("/predict", "/"):  # the root too: Hugging Face clients post to the endpoint URL itself
        app.add_api_route(path, predict, methods=["POST"], responses={200: PREDICT_ANSWERS, **ERRORS},
                          openapi_extra=predict_body(settings.max_images), summary="classify one or many images",
                          operation_id="predict" if path == "/predict" else "predict_root")

    register_open_inference_routes(app, state, require_api_key, prepare_images)

    @app.get("/health", response_model=StatusResponse, summary="liveness: the process answers")
    async def health() -> StatusResponse:
        return StatusResponse(status="alive", models=list(state.runners))

    @app.get("/ready", response_model=StatusResponse, responses=NOT_READY,
             summary="readiness: every model loaded and warmed up, and its device still working")
    async def ready() -> StatusResponse:
        state.check_ready()
        return StatusResponse(status="ready", models=list(state.runners))

    @app.get("/models", response_model=ModelsResponse, summary="loaded models: classes and pre-processing")
    async def models() -> ModelsResponse:
        descriptions = [ModelDescription(**runner.describe(), **state.inference,
                                         target_prior=settings.target_prior_for(runner.model_id))
                        for runner in state.runners.values()]
        return ModelsResponse(default=next(iter(state.runners), None), models=descriptions)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)

    return app
