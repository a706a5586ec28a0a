"""What the routes share (``ServerState``) and how it fills: the models are loaded, optimised and warmed in the
inference threads, then each gets its batching engines."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import torch

from gcl_zoo.devices import resolve_device

from .batching import BatchingEngine
from .errors import RequestError
from .metrics import ServerMetrics
from .pipeline import predict_batch, predict_tensors
from .priors import default_prior
from .runner import Execution, ModelRunner, create_runner, inference_plan, resolve_optimization
from .served import ServedModel, ServedModels
from .settings import ServeSettings
from .startup import configure_process
from .streams import PriorStreams

__all__ = ["ServerState", "load_models", "prior_streams"]

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    """What the routes share: settings, the served models (runners, batching engines, default priors), pools and
    metrics."""

    settings: ServeSettings
    metrics: ServerMetrics
    models: ServedModels
    ready: bool = False
    load_error: str | None = None
    decode_pool: ThreadPoolExecutor | None = None
    inference_pool: ThreadPoolExecutor | None = None
    inference: dict[str, int] = field(default_factory=dict)  # inference_streams, threads_per_stream
    in_flight: int = 0  # HTTP requests being answered (serve.limits.DrainMiddleware)
    draining: bool = False  # shutting down: /ready and new work answer 503 (serve.lifecycle)

    def serving(self) -> bool:
        """Whether ``check_ready`` passes: what the v2 protocol's readiness answers as a flag."""
        try:
            self.check_ready()
        except RequestError:
            return False
        return True

    def check_ready(self) -> None:
        if self.draining:
            raise RequestError(503, "the server is shutting down", headers={"Retry-After": "1"})
        if self.load_error:
            raise RequestError(503, f"the server failed to load its models: {self.load_error}")
        if not self.ready:
            raise RequestError(503, "the models are still loading and warming up; retry shortly "
                                    "(GET /ready answers 200 once they serve)", headers={"Retry-After": "5"})
        failed = [f"{model_id} ({runner.device_error})" for model_id, runner in self.models.runners().items()
                  if runner.device_error]
        if failed:
            raise RequestError(503, f"the device failed for good under {', '.join(failed)}: every batch on it "
                                    "fails until the server process is restarted; restart it")


def prior_streams(runner: ModelRunner, settings: ServeSettings) -> PriorStreams:
    """``runner``'s model's prior streams, estimating against its source prior (uniform for a plain classifier)."""
    source = runner.implied_prior if runner.implied_prior is not None else \
        torch.full((runner.num_classes,), 1.0 / runner.num_classes, dtype=torch.float64)
    return PriorStreams(settings.prior_window, settings.max_prior_streams, source, runner.source_images)


async def load_models(state: ServerState, on_failure: Callable[[str], None] | None = None) -> None:
    """Make the process-wide settings (``serve.startup``), start the inference threads, load, optimise and warm
    every model in them, then start a batching engine for each."""
    settings = state.settings
    loop = asyncio.get_running_loop()
    try:
        device = resolve_device(settings.device)
        optimization = resolve_optimization(settings.optimize, device)
        streams, threads = inference_plan(settings.inference_streams, device, optimization)
        configure_process(device, optimization, settings.max_batch_size, len(settings.models))
        # intra-op thread counts are per thread in PyTorch's OpenMP backend, so each inference thread sets its own
        state.inference_pool = ThreadPoolExecutor(streams, thread_name_prefix="inference",
                                                  initializer=torch.set_num_threads, initargs=(threads,))
        state.inference = {"inference_streams": streams, "threads_per_stream": threads}
        execution = Execution(settings.runtime, settings.precision, streams, threads)
        for model_id in settings.models:
            runner = await loop.run_in_executor(state.inference_pool, create_runner, model_id, device,
                                                settings.optimize, settings.max_batch_size, execution)
            images, tensors = (BatchingEngine(
                model_id, partial(predict, runner), state.inference_pool, max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.max_queue,
                on_batch=lambda size, seconds, m=model_id: state.metrics.observe_batch(m, size, seconds),
                streams=streams) for predict in (predict_batch, predict_tensors))
            images.start()
            tensors.start()
            state.models.served[model_id] = ServedModel(
                runner, images, tensors, default_prior(settings.target_prior_for(model_id), runner),
                prior_streams(runner, settings))
        state.ready = True
        log.info("ready: %s", ", ".join(state.models.served))
    except Exception as exc:  # reported by /ready and /predict, and handed to on_failure (the CLI exits)
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("could not load the models: %s", state.load_error)
        if on_failure is not None:
            on_failure(state.load_error)
