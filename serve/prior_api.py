"""``/models/{model}/prior``: read, set and reset a model's prior streams (``serve.streams``).

``GET ?stream=NAME`` answers the stream's estimate (what ``target_prior: "estimated"`` answers with) beside the
source prior and how far it moved; ``PUT {"prior": [...]}`` sets it (so replicas behind a load balancer can share
an estimate), ``DELETE`` forgets the stream; both need the API key when one is set. ``{model}`` is the model's
name as the v2 routes spell it (``serve.oip.protocol_name``: the id when URL-safe, else its last path component).
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Security

from gcl_zoo.prior import PriorError

from .dependencies import State, require_api_key
from .errors import RequestError
from .oip import model_named, protocol_name
from .schemas import PRIOR_ERRORS, PriorShift, PriorStreamResponse, PriorUpdate
from .served import ServedModel
from .streams import DEFAULT_STREAM, STREAM_NAME_PATTERN, PriorStream, PriorStreams, total_variation

__all__ = ["router", "stream_response"]

router = APIRouter(tags=["prior streams"])
StreamName = Annotated[str, Query(pattern=STREAM_NAME_PATTERN, description="the stream (a request's prior_stream)")]


def stream_response(name: str, served: ServedModel, stream: PriorStream) -> PriorStreamResponse:
    """What the routes answer for ``stream``: its estimate, brought up to date."""
    streams = served.streams
    estimate = streams.refresh(stream, settle=True)
    shift = PriorShift(log_likelihood_ratio=estimate.log_likelihood_ratio, shifted=estimate.shifted,
                       total_variation=total_variation(estimate.prior, streams.source),
                       iterations=estimate.iterations, converged=estimate.converged)
    return PriorStreamResponse(model=protocol_name(served.runner.model_id), stream=name, window=stream.window,
                               images=stream.images, put_images=stream.put_images,
                               estimated=estimate.prior.tolist(), source=streams.source.tolist(), shift=shift)


def _streams(state: State, model: str) -> ServedModel:
    """The model ``model`` names, its prior streams on (422 naming the flag otherwise)."""
    state.check_ready()
    served = model_named(state.models, model)
    if served.streams is None or not served.streams.enabled:
        raise RequestError(422, "the prior streams are off (--prior-window 0); start the server with "
                                "--prior-window N (e.g. 1024) to estimate or set a stream's prior")
    return served


def _known(streams: PriorStreams, name: str) -> PriorStream:
    stream = streams.get(name)
    if stream is None:
        known = ", ".join(n for n, _ in streams) or "none yet"
        raise RequestError(404, f"no prior stream {name!r} (streams: {known}); a stream starts with the first "
                                "request that names it as prior_stream, or with a PUT")
    return stream


@router.get("/models/{model}/prior", response_model=PriorStreamResponse, responses=PRIOR_ERRORS,
            summary="a prior stream's estimated class prior")
async def read_prior(model: str, state: State, stream: StreamName = DEFAULT_STREAM) -> PriorStreamResponse:
    served = _streams(state, model)
    return stream_response(stream, served, _known(served.streams, stream))


@router.put("/models/{model}/prior", response_model=PriorStreamResponse, responses=PRIOR_ERRORS,
            summary="set a prior stream's class prior (it counts as a full window of images)")
async def set_prior(model: str, update: PriorUpdate, state: State, stream: StreamName = DEFAULT_STREAM,
                    _auth: None = Security(require_api_key)) -> PriorStreamResponse:
    served = _streams(state, model)
    try:
        target = served.streams.put(stream, update.prior)
    except PriorError as exc:
        raise RequestError(422, f"prior: {exc}") from None
    return stream_response(stream, served, target)


@router.delete("/models/{model}/prior", response_model=PriorStreamResponse, responses=PRIOR_ERRORS,
               summary="forget a prior stream: its next request starts a fresh one")
async def delete_prior(model: str, state: State, stream: StreamName = DEFAULT_STREAM,
                       _auth: None = Security(require_api_key)) -> PriorStreamResponse:
    served = _streams(state, model)
    gone = _known(served.streams, stream)
    served.streams.delete(stream)
    return stream_response(stream, served, gone)
