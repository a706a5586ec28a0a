"""The routes that report on the server: ``/health`` (liveness), ``/ready`` (readiness), ``/models`` and
``/metrics`` (Prometheus). They need no API key and still answer while the server drains."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from .dependencies import State
from .metrics import CONTENT_TYPE
from .schemas import NOT_READY, ModelDescription, ModelsResponse, StatusResponse

__all__ = ["router"]

router = APIRouter()


@router.get("/health", response_model=StatusResponse, summary="liveness: the process answers")
async def health(state: State) -> StatusResponse:
    return StatusResponse(status="alive", models=list(state.models.served))


@router.get("/ready", response_model=StatusResponse, responses=NOT_READY,
            summary="readiness: every model loaded and warmed up, and its device still working")
async def ready(state: State) -> StatusResponse:
    state.check_ready()
    return StatusResponse(status="ready", models=list(state.models.served))


@router.get("/models", response_model=ModelsResponse, summary="loaded models: classes and pre-processing")
async def models(state: State) -> ModelsResponse:
    descriptions = [ModelDescription(**runner.describe(), **state.inference,
                                     target_prior=state.settings.target_prior_for(runner.model_id))
                    for runner in state.models.runners().values()]
    return ModelsResponse(default=next(iter(state.models.served), None), models=descriptions)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def metrics(state: State) -> PlainTextResponse:
    return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)
