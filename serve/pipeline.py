"""One request pipeline with named steps, shared by every protocol that classifies images.

A protocol (``/predict``'s Hugging Face task, the v2 Open Inference Protocol) is a ``ProtocolSpec``: its
``decode_request`` reads and checks a request into an ``InferenceJob`` and its ``encode_response`` writes the
scores back in its own shape, as LitServe's ``LitSpec`` does. Everything between is here, one function a step:

1. ``spec.decode_request``: every check a request can fail (its body, its parameters against the model that
   answers) happens here, before any image is decoded; the job carries what was checked;
2. ``prepare``: in the decode pool, each image's header checked, then decoded and pre-processed on the CPU or,
   for a JPEG on a GPU, kept encoded for step 4;
3. ``batch``: the images join a batch with other requests' (``serve.batching.BatchingEngine``, which runs
   ``predict_batch`` per batch in the inference thread);
4. ``predict``: the batch's inputs collated (GPU JPEG decoding included) and the forward pass, scaled logits;
5. ``unbatch``: one row per item again, in order, with an item that failed to decode as its own error;
6. ``target_prior`` and ``output_scores``: the request's images join its prior stream (``serve.streams``), if
   it names one, whose estimate is the prior of an ``"estimated"`` request; the rows moved to the target prior
   and through the output function (``serve.priors``);
7. ``spec.encode_response``.

Pre-processed tensors (the v2 ``FP32`` input) skip steps 2 and 4's collation. ``answer`` runs the sequence.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch
from fastapi import Request
from fastapi.responses import Response

from .decoding import ImagePayload, inspect_image
from .errors import RequestError
from .parsing import AnswerOptions
from .priors import output_scores
from .runner import ModelRunner
from .served import ServedModel, ServedModels
from .settings import ServeSettings

__all__ = ["InferenceJob", "ProtocolSpec", "PipelineHost", "answer", "prepare", "batch", "predict", "unbatch", "predict_batch",
           "predict_tensors", "target_prior"]

ReplyT = TypeVar("ReplyT")


@dataclass(frozen=True)
class InferenceJob(Generic[ReplyT]):
    """A checked request, whichever protocol it came in: encoded ``images`` or an already pre-processed NCHW
    ``tensor`` for ``runner``, answered as its checked ``options`` say (``top_k``, the target prior, the output
    function); ``reply`` is what only its protocol needs for the answer's shape."""

    runner: ModelRunner
    options: AnswerOptions
    reply: ReplyT
    images: Sequence[ImagePayload] | None = None
    tensor: torch.Tensor | None = None


class ProtocolSpec(Protocol[ReplyT]):
    """A protocol's two ends of the pipeline: its request in, its answer out."""

    async def decode_request(self, request: Request, models: ServedModels) -> InferenceJob[ReplyT]:
        """Parse and check ``request`` against the model ``models`` resolves for it; every fault a
        ``RequestError`` naming it."""

    def encode_response(self, job: InferenceJob[ReplyT], scores: torch.Tensor) -> Response:
        """The answer carrying ``scores`` (``output_scores``: one row per image, in request order)."""


class PipelineHost(Protocol):
    """What ``answer`` needs of the server: its readiness, models, limits and decode pool (``ServerState``)."""

    settings: ServeSettings
    models: ServedModels
    decode_pool: Executor | None

    def check_ready(self) -> None:
        """Raise the 503 that answers while the server cannot serve."""


def prepare(runner: ModelRunner, payloads: Sequence[ImagePayload], max_pixels: int) -> list[Any]:
    """Step 2, in the decode pool: check each image's header, then decode/pre-process it for ``runner``."""
    return [runner.prepare(payload, inspect_image(payload, max_pixels)) for payload in payloads]


def batch(runner: ModelRunner, items: Sequence[Any]) -> tuple:
    """Step 4's first half: the model's input batch from prepared ``items`` (None when none decodes) and the items
    that failed to decode, by position."""
    return runner.pipeline.collate(items, runner.device)


def predict(runner: ModelRunner, inputs: torch.Tensor) -> torch.Tensor:
    """Step 4's second half: scaled logits (float32, CPU), one row per input."""
    return runner.scaled_logits(inputs)


def unbatch(rows: torch.Tensor | None, failed: dict[int, RequestError],
            count: int) -> list[torch.Tensor | RequestError]:
    """Step 5: ``count`` results in item order, the ``failed`` items' errors in their places."""
    good = iter(rows) if rows is not None else iter(())
    return [failed[i] if i in failed else next(good) for i in range(count)]


def predict_batch(runner: ModelRunner, items: Sequence[Any]) -> list[torch.Tensor | RequestError]:
    """Steps 4 and 5 for one batch of prepared images, in an inference thread (what the image engine runs)."""
    with runner.computing():
        inputs, failed = batch(runner, items)
        rows = predict(runner, inputs) if inputs is not None else None
    return unbatch(rows, failed, len(items))


def predict_tensors(runner: ModelRunner, items: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Steps 4 and 5 for already pre-processed CHW float images (what the tensor engine runs)."""
    with runner.computing():
        return list(predict(runner, torch.stack(list(items)).to(runner.device)))


async def _rows(state: PipelineHost, served: ServedModel, job: InferenceJob) -> list[torch.Tensor]:
    """Steps 2-5: scaled logits, one row per image of ``job``, from ``served``'s engines."""
    settings = state.settings
    if job.images is not None:
        items = await asyncio.get_running_loop().run_in_executor(state.decode_pool, prepare, job.runner, job.images,
                                                                 settings.max_pixels)
        return await served.images.submit(items, settings.request_timeout_s)
    return await served.tensors.submit(list(job.tensor), settings.request_timeout_s)


async def answer(spec: ProtocolSpec, request: Request, state: PipelineHost) -> Response:
    """The shared sequence: ready check, the protocol's checked request, decoding and batched inference, scores,
    the protocol's answer."""
    state.check_ready()
    job = await spec.decode_request(request, state.models)
    served = state.models.served[job.runner.model_id]
    rows = torch.stack(list(await _rows(state, served, job)))
    prior = await target_prior(served, job.options, rows)
    scores = output_scores(rows, job.runner, prior, job.options.function_to_apply)
    return spec.encode_response(job, scores)


async def target_prior(served: ServedModel, options: AnswerOptions, rows: torch.Tensor) -> torch.Tensor | None:
    """Step 6's prior: the request's images join its prior stream, if it names one, and an ``"estimated"``
    request gets the stream's estimate with them included (``serve.streams``); any other, its checked prior."""
    if options.prior_stream is None:
        return options.prior
    if options.estimated:
        return await served.streams.observe(options.prior_stream, rows)
    served.streams.add(options.prior_stream, rows)
    return options.prior
