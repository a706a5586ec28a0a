"""``POST /predict`` (and ``POST /``): the Hugging Face image-classification task, plus multipart forms.

``PredictSpec`` is the protocol's two ends of ``serve.pipeline``: ``decode_request`` reads the body
(``serve.parsing``) and checks its parameters against the model that answers, ``encode_response`` writes the
top ``k`` labels per image.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import APIRouter, Request, Security
from fastapi.responses import Response

from .dependencies import State, require_api_key
from .parsing import answer_options, parse_predict_request
from .pipeline import InferenceJob, answer
from .schemas import ERRORS, PREDICT_ANSWERS, predict_body
from .served import ServedModels

__all__ = ["PredictSpec", "PredictReply", "predict_response", "predict_router"]


@dataclass(frozen=True)
class PredictReply:
    """The answer's shape a ``/predict`` request asked for (``ParsedRequest.hf_schema`` and ``single``)."""

    hf_schema: bool
    single: bool


def predict_response(model_id: str, scores: torch.Tensor, labels: Sequence[str], top_k: int,
                     reply: PredictReply) -> Response:
    """The answer for one row of ``scores`` per image (``output_scores``), serialised directly: building and
    re-validating pydantic objects for every image's labels would cost more than the rest of the request's
    event-loop work.

    Hugging Face task shape for JSON and raw-image requests (``[{label, score}]`` for one image, one such list per
    image for a list of inputs), the ``{"model", "predictions"}`` envelope for multipart forms; the model that
    answered is in the ``X-Model-Id`` header either way.
    """
    best, indices = torch.topk(scores, top_k, dim=1)
    predictions = [[{"label": labels[i], "score": s} for s, i in zip(row_scores, row_indices)]
                   for row_scores, row_indices in zip(best.tolist(), indices.tolist())]
    if not reply.hf_schema:
        body: Any = {"model": model_id, "predictions": predictions}
    else:
        body = predictions[0] if reply.single else predictions
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json",
                    headers={"X-Model-Id": model_id})


class PredictSpec:
    """``/predict``'s request in (any of its body forms, its parameters checked against the model), labels out."""

    async def decode_request(self, request: Request, models: ServedModels) -> InferenceJob[PredictReply]:
        parsed = await parse_predict_request(request, models.max_images)
        model = models.pick(parsed.model)
        return InferenceJob(model.runner, answer_options(parsed.parameters, model, models.default_top_k),
                            PredictReply(parsed.hf_schema, parsed.single), images=parsed.payloads)

    def encode_response(self, job: InferenceJob[PredictReply], scores: torch.Tensor) -> Response:
        return predict_response(job.runner.model_id, scores, job.runner.labels, job.options.top_k, job.reply)


PREDICT = PredictSpec()


async def predict(request: Request, state: State, _auth: None = Security(require_api_key)) -> Response:
    """One image as the body (``image/*``, ``application/octet-stream``), JSON ``{"inputs": <base64> |
    [<base64>, ...], "parameters": {"top_k": 5, "function_to_apply": "softmax", "target_prior": "uniform"},
    "model": "..."}`` (both the Hugging Face image-classification task: the answer is its ``[{label, score}]``
    list), or multipart files (answered as ``{"model", "predictions": [[...], ...]}``); the top_k labels per
    image, sorted by score."""
    return await answer(PREDICT, request, state)


def predict_router(max_images: int) -> APIRouter:
    """``POST /predict``, and the root too: Hugging Face clients post to the endpoint URL itself. The OpenAPI
    document states the body forms with the ``max_images`` limit."""
    router = APIRouter()
    for path in ("/predict", "/"):
        router.add_api_route(path, predict, methods=["POST"], responses={200: PREDICT_ANSWERS, **ERRORS},
                             openapi_extra=predict_body(max_images), summary="classify one or many images",
                             operation_id="predict" if path == "/predict" else "predict_root")
    return router
