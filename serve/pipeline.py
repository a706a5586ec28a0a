"""One request pipeline with named steps, shared by every protocol that classifies images.

A protocol (``/predict``'s Hugging Face task, the v2 Open Inference Protocol) is a ``ProtocolSpec``: it reads
its request into an ``InferenceJob`` and writes the scores back in its own shape, as LitServe's ``LitSpec``
does. ``answer`` runs the steps between, the same for every protocol:

1. ``state.check_ready``: 503 while the models load, the device failed or the server drains;
2. ``spec.decode_request``: parse and check the request (``serve.parsing``), pick the model;
3. ``prepare_images`` in the decode pool: each image's header checked, then decoded and pre-processed on the
   CPU, or, for a JPEG on a GPU, kept encoded for step 5 (``serve.preprocess``);
4. ``BatchingEngine.submit``: the images join a batch with other requests' (``serve.batching``);
5. in the inference thread, per batch: ``decode_on_device`` (GPU JPEG decoding), ``collate`` and the forward
   pass (``ModelRunner.predict``);
6. ``output_scores``: the scaled logits moved to the target prior and through the output function
   (``serve.priors``);
7. ``spec.encode_response``.

Pre-processed tensors (the v2 ``FP32`` input) skip steps 3 and 5.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, List, Optional, Protocol, Sequence

import torch
from fastapi import Request
from fastapi.responses import Response

from .decoding import ImagePayload, inspect_image
from .priors import output_scores
from .runner import ModelRunner
from .settings import ServeSettings
from .state import ServerState

__all__ = ["InferenceJob", "ProtocolSpec", "answer", "prepare_images"]


@dataclass(frozen=True)
class InferenceJob:
    """What a request asks the models for, whichever protocol it came in: encoded ``images`` or an already
    pre-processed NCHW ``tensor`` for ``runner``, scored against ``prior`` (None: the model's own calibration)
    through ``function_to_apply``; ``request`` is the protocol's parsed request, for its answer."""

    runner: ModelRunner
    prior: Optional[torch.Tensor]
    request: Any
    images: Optional[Sequence[ImagePayload]] = None
    tensor: Optional[torch.Tensor] = None
    function_to_apply: str = "softmax"


class ProtocolSpec(Protocol):
    """A protocol's two ends of the pipeline: its request in, its answer out."""

    async def decode_request(self, request: Request, state: ServerState) -> InferenceJob:
        """Parse and check ``request``; every fault a ``RequestError`` naming it."""

    def encode_response(self, job: InferenceJob, scores: torch.Tensor, settings: ServeSettings) -> Response:
        """The answer carrying ``scores`` (``output_scores``: one row per image, in request order); ``settings``
        hold the server's defaults for what the request left out."""


def prepare_images(runner: ModelRunner, payloads: Sequence[ImagePayload], max_pixels: int) -> List[Any]:
    """Check each image's header, then decode/pre-process it for ``runner`` (runs in the decode pool)."""
    return [runner.prepare(payload, inspect_image(payload, max_pixels)) for payload in payloads]


async def infer(state: ServerState, job: InferenceJob) -> List[torch.Tensor]:
    """Scaled logits, one row per image of ``job``: images decoded in the decode pool, then batched; tensors
    batched as they are."""
    settings = state.settings
    model_id = job.runner.model_id
    if job.images is not None:
        items = await asyncio.get_running_loop().run_in_executor(state.decode_pool, prepare_images, job.runner,
                                                                 job.images, settings.max_pixels)
        return await state.engines[model_id].submit(items, settings.request_timeout_s)
    return await state.tensor_engines[model_id].submit(list(job.tensor), settings.request_timeout_s)


async def answer(spec: ProtocolSpec, request: Request, state: ServerState) -> Response:
    """The shared sequence: ready check, the protocol's request, decoding and batched inference, scores, the
    protocol's answer."""
    state.check_ready()
    job = await spec.decode_request(request, state)
    rows = await infer(state, job)
    settings = state.settings
    scores = output_scores(torch.stack(list(rows)), job.runner, job.prior, job.function_to_apply)
    return spec.encode_response(job, scores, settings)
