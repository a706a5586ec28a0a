"""Model runners: load a zoo model, make it fast for its device, warm it up, and turn batches into scaled logits.

Every runtime computes the model's raw logits (``gcl_zoo.models.gcl.raw_logits_module``: cosines in [-1, 1] for
a GCL head, the same graph an exported ``model.onnx`` holds); the runner applies the calibration saved with the
weights (``score_affine``: scale, class scales and biases) after any runtime and precision, so ``softmax`` of its
rows is the model's calibrated (balanced) probabilities, the same numbers as ``model(x).softmax(-1)`` in timm.

Speed per device (``optimize="auto"``):

* CPU: TorchScript trace, frozen and ``optimize_for_inference`` (conv+BN folding, oneDNN): about as fast as
  ``torch.compile`` and several times eager, and it starts in a second instead of half a minute. Two batches
  run at once, each on half the cores (``inference_plan``): a stream that loses its core for a moment (to HTTP
  or decoding) no longer stalls the other core at a parallel region's barrier. ``bench/serve_load.py``
  measures these layouts side by side (its results: ``docs/benchmarks.md``).
* CUDA: channels_last weights and inputs, bf16 autocast, pre-processing on the GPU; each inference thread
  works on its own CUDA stream, so ``--inference-streams 2`` overlaps one batch's decoding and copies with
  another's forward pass (one stream stays the default until a GPU measurement says two pay); ``compile`` adds
  ``torch.compile`` warmed at start-up for fixed batch-size buckets (a batch is padded up to its bucket, so no
  request ever waits for a recompilation).
* ``runtime="openvino"`` or ``"onnxruntime"`` (CPU): the model's ONNX graph in that runtime (``serve.runtimes``),
  checked against the PyTorch model once at start-up; pre-processing, batching and answers are the same. With
  ``precision="auto"`` OpenVINO's bf16 is timed against float32 on a full batch at start-up and serves only where
  it is clearly faster.
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from PIL import Image

from gcl_zoo.devices import autocast_for
from gcl_zoo.models.gcl import checked_label_names, raw_logits_module, score_affine, score_scale
from gcl_zoo.models.weights import explain_offline
from gcl_zoo.prior import PriorError, check_prior

from .decoding import ImageHeader, ImagePayload, inspect_image
from .preprocess import DevicePipeline, Pipeline, create_pipeline, data_config
from .runtimes import create_onnx_forward, resolve_runtime

__all__ = ["ModelRunner", "Execution", "create_runner", "resolve_optimization", "inference_plan", "load_model",
           "batch_buckets", "device_works", "implied_prior_of", "train_prior_of"]

log = logging.getLogger(__name__)


def resolve_optimization(optimize: str, device: torch.device) -> str:
    """'auto' is a TorchScript trace on CPU and eager (bf16 autocast) on CUDA; trace is refused on CUDA."""
    if optimize == "auto":
        return "trace" if device.type == "cpu" else "eager"
    if optimize == "trace" and device.type != "cpu":
        raise ValueError("--optimize trace is for CPU; on CUDA use --compile (or eager, the default)")
    return optimize


def inference_plan(streams: int | None, device: torch.device, optimization: str) -> tuple[int, int]:
    """How many batches run at once, and the intra-op threads of each.

    Unless told otherwise: on CPU two streams share the cores PyTorch uses (traced models only; a compiled
    model runs one batch at a time), one stream on CUDA, where the GPU does the work.
    """
    cores = torch.get_num_threads()
    if streams is None:
        streams = min(2, cores) if device.type == "cpu" and optimization != "compile" else 1
    return streams, max(1, cores // streams)


def load_model(model_id: str) -> nn.Module:
    """A timm model with its weights: a zoo name, ``hf-hub:ORG/NAME`` or ``local-dir:PATH``."""
    import timm

    import gcl_zoo  # noqa: F401  (registers the zoo and the local-dir loader's architectures)

    with explain_offline(model_id):
        return timm.create_model(model_id, pretrained=True)


def _model_prior(weights: Any, model: nn.Module, what: str) -> torch.Tensor | None:
    """``weights`` the model carries as a probability vector; a broken one stops the model from loading."""
    if weights is None:
        return None
    try:
        return check_prior(weights, int(model.num_classes))
    except PriorError as exc:
        raise ValueError(f"the model's {what} cannot be used: {exc}") from None


def implied_prior_of(model: nn.Module) -> torch.Tensor | None:
    """The class prior a GCL model's calibrated scores imply (its ``implied_prior`` buffer); None for a plain
    classifier, whose scores count as balanced."""
    buffer = getattr(model, "implied_prior", None)
    return _model_prior(buffer.detach().cpu() if buffer is not None else None, model, "implied_prior")


def train_prior_of(model: nn.Module) -> torch.Tensor | None:
    """A GCL model's training class counts (its ``train_class_counts`` buffer), normalised; None when unknown."""
    counts = getattr(model, "train_class_counts", None)
    if counts is None or not bool(counts.any()):
        return None
    return _model_prior(counts.detach().cpu(), model, "train_class_counts")


def batch_buckets(max_batch_size: int) -> list[int]:
    """Batch sizes a compiled model is specialised for: powers of two below the maximum, and the maximum."""
    buckets = [1 << i for i in range(max_batch_size.bit_length()) if (1 << i) < max_batch_size]
    return buckets + [max_batch_size]


def device_works(device: torch.device) -> bool:
    """Whether ``device`` still runs a tiny operation and copies the result back (the copy waits for it, so an
    asynchronous CUDA error surfaces here)."""
    try:
        return float(torch.ones(1, device=device).add_(1).cpu()) == 2.0
    except Exception:  # a failed device raises whatever its runtime raises
        return False


def _trace(model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but still the fastest on CPU
        with torch.inference_mode():
            return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))


def pads_to_buckets(device: torch.device, optimization: str) -> bool:
    """Whether batches are padded up to a warmed batch size: compiled graphs are specialised per size, and on CUDA
    ``cudnn.benchmark`` autotunes every new input shape (seconds, on live traffic) unless the shapes repeat."""
    return optimization == "compile" or device.type == "cuda"


# largest difference allowed between the cosine logits (in [-1, 1]) of an ONNX runtime and of the PyTorch model on a
# random batch, checked once at start-up. Each limit sits well above the rounding of its precision (float32: about
# 1e-7 relative; bf16: 8 bits of mantissa, about 4e-3 relative; int8: quantised weights and activations, whose
# labels are checked on real images at export) and well below what a graph of other weights is off by, a sizeable
# fraction of the cosines' range: a stale or foreign model.onnx is refused, rounding never is.
AGREEMENT = {"f32": 1e-4, "bf16": 2e-2, "int8": 0.25}


@dataclass(frozen=True)
class Execution:
    """How a runner computes: the runtime, its precision setting, and the inference threads it is called from."""

    runtime: str = "torch"
    precision: str = "auto"
    streams: int = 1
    threads: int = 1


class ModelRunner:
    """One loaded model on one device: ``prepare`` images (thread pool), ``scaled_logits`` of batches (inference
    thread, inside ``computing``); ``serve.pipeline`` runs the steps."""

    def __init__(self, model_id: str, model: nn.Module, device: torch.device, optimize: str = "auto",
                 max_batch_size: int = 64, execution: Execution = Execution()):
        self.model_id = model_id
        self.device = device
        names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names") or None
        self.labels = list(checked_label_names(int(model.num_classes), names))
        self.logit_scale = score_scale(model)
        self.score_weight, self.score_bias = score_affine(model)  # raw logits to calibrated ones
        self.implied_prior = implied_prior_of(model)  # what the deployment's prior is measured against
        self.source_images = int(getattr(model, "source_images", 0)) or None  # validation images behind it
        self.train_prior = train_prior_of(model)  # what target_prior "train" names
        self.config = data_config(model)
        self.pipeline: Pipeline = create_pipeline(self.config, device)
        self.buckets = batch_buckets(max_batch_size)
        self.runtime = resolve_runtime(execution.runtime, device, optimize, execution.precision)
        self.graph_origin: str | None = None
        self.precision_speeds: dict[str, float] | None = None  # images/s per precision, when auto had a choice
        self.device_error: str | None = None  # set when the device fails for good (see _watching_device)
        self._thread_state = threading.local()  # each inference thread's CUDA stream
        model = model.eval().to(device)
        if self.runtime != "torch":
            if optimize != "auto":
                raise ValueError(f"--optimize {optimize} is for --runtime torch; {self.runtime} optimises the graph itself")
            self.optimization = None
            self.pads_to_buckets = False
            self.autocast_dtype = None
            self.forward, self.graph_origin, self.precision_speeds = create_onnx_forward(
                self.runtime, model_id, model, execution.streams, execution.threads, execution.precision,
                self._random_batch(self.buckets[-1]))
            self.precision = self.forward.precision
            self._check_agreement(model)
            return
        self.optimization = resolve_optimization(optimize, device)
        self.pads_to_buckets = pads_to_buckets(device, self.optimization)
        self.autocast_dtype = torch.bfloat16 if device.type == "cuda" and execution.precision != "f32" else None
        self.precision = "bf16" if self.autocast_dtype is not None else "f32"
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.forward = self._optimized(raw_logits_module(model))

    def _check_agreement(self, model: nn.Module) -> None:
        """Refuse to serve a graph that does not compute what the model does (a stale or foreign model.onnx)."""
        batch = self._random_batch(4)
        with torch.inference_mode():
            diff = float((self.forward(batch) - raw_logits_module(model)(batch).float()).abs().max())
        limit = AGREEMENT.get(self.precision, AGREEMENT["bf16"])
        if not diff <= limit:
            raise ValueError(f"the ONNX graph of {self.model_id} ({self.graph_origin}) differs from its weights by "
                             f"{diff:.3g} (limit {limit:g} at {self.precision}); re-export the folder with gcl-zoo export")

    def _optimized(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.optimization == "trace":
            return _trace(model, self._dummy(1))
        if self.optimization == "compile":
            return torch.compile(model, dynamic=False)
        return model

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def describe(self) -> dict[str, Any]:
        """What ``/models`` reports: classes, pre-processing and how the model runs."""
        return {
            "id": self.model_id, "num_classes": self.num_classes, "labels": self.labels,
            "logit_scale": self.logit_scale, "device": str(self.device), "runtime": self.runtime,
            "implied_prior": self.implied_prior.tolist() if self.implied_prior is not None else None,
            "has_train_class_counts": self.train_prior is not None,
            "precision": self.precision, "precision_speeds": self.precision_speeds, "graph": self.graph_origin,
            "optimization": self.optimization,
            "autocast": "bfloat16" if self.autocast_dtype is not None else None,
            "preprocessing": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.items()},
                              "where": "gpu" if isinstance(self.pipeline, DevicePipeline) else "cpu"},
        }

    def _random_batch(self, batch_size: int) -> torch.Tensor:
        return torch.randn((batch_size, *self.config["input_size"]), generator=torch.Generator().manual_seed(0))

    def _dummy(self, batch_size: int) -> torch.Tensor:
        with torch.inference_mode():  # what live batches are: see scaled_logits
            return torch.zeros((batch_size, *self.config["input_size"]), device=self.device)

    def _sample_jpeg(self) -> ImagePayload:
        out = io.BytesIO()
        Image.new("RGB", tuple(self.config["input_size"][:0:-1]), (128, 96, 64)).save(out, format="JPEG")
        return ImagePayload("warm-up image", out.getvalue())

    def scaled_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The calibrated logits ``cos * weight + bias`` (float32, CPU; ``score_affine``) for a pre-processed NCHW
        batch: softmax of it is the model's probabilities; the response applies the function the client asked for.

        The model always sees an inference tensor: Dynamo guards on a tensor's dispatch keys, so a graph compiled
        for one kind is rebuilt for the other, and past the recompile limit the model runs eagerly for good. Warm-up
        and both predict paths make their batches in inference mode; anything else is copied into one here."""
        n = batch.shape[0]
        with torch.inference_mode():
            if not batch.is_inference():
                batch = batch.clone()
            if self.pads_to_buckets:  # the shapes warm-up compiled or autotuned, never a new one on live traffic
                size = next(b for b in self.buckets if b >= n)
                if size > n:
                    batch = torch.cat([batch, batch.new_zeros((size - n, *batch.shape[1:]))])
            if self.device.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast_for(self.device, self.autocast_dtype):
                logits = self.forward(batch)[:n].float()
        return logits.cpu() * self.score_weight + self.score_bias

    def prepare(self, payload: ImagePayload, header: ImageHeader) -> Any:
        """Per-image work done before queueing (decode + transform on CPU; almost nothing on GPU)."""
        return self.pipeline.prepare(payload, header)

    def _own_stream(self) -> AbstractContextManager:
        """On CUDA, this inference thread's own stream, so that with ``--inference-streams 2`` one batch's decode,
        resize and copy-back overlap another's forward pass instead of queueing behind it on the default stream;
        nothing elsewhere. A new stream first waits for the default one (the weights were copied there)."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        stream = getattr(self._thread_state, "stream", None)
        if stream is None:
            stream = self._thread_state.stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.default_stream(self.device))
        return torch.cuda.stream(stream)

    @contextlib.contextmanager
    def _watching_device(self) -> Iterator[None]:
        """Let a batch's error through, and when the device no longer runs even a tiny operation afterwards (a
        sticky CUDA error: every later call in this process fails), record it in ``device_error``, which takes
        the server out of readiness."""
        try:
            yield
        except Exception as exc:
            if self.device_error is None and not device_works(self.device):
                self.device_error = f"{type(exc).__name__}: {exc}"
                log.error("%s: device %s fails every operation since a batch failed with %s; restart the server",
                          self.model_id, self.device, self.device_error)
            raise

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """Where a batch is computed (``serve.pipeline.predict_batch``): inference mode, this thread's own CUDA
        stream, and the device watched for a failure that outlives the batch."""
        with self._watching_device(), torch.inference_mode(), self._own_stream():
            yield

    def decode_fallbacks(self) -> dict[str, int]:
        """How often GPU JPEG decoding fell back, by kind (``DecodeFallbacks``); empty on the CPU pipeline."""
        fallbacks = getattr(self.pipeline, "fallbacks", None)
        return fallbacks.counts() if fallbacks is not None else {}

    def warmup(self, rounds: int = 2) -> float:
        """Run every batch bucket ``rounds`` times and one real JPEG through the whole path (compiles, profiles,
        initialises the GPU decoder and allocates now, not on live traffic); returns the seconds it took."""
        start = time.perf_counter()
        for size in self.buckets:
            for _ in range(rounds):
                self.scaled_logits(self._dummy(size))
        sample = self._sample_jpeg()
        with self.computing():
            inputs, _ = self.pipeline.collate([self.prepare(sample, inspect_image(sample, max_pixels=sys.maxsize))],
                                              self.device)
            self.scaled_logits(inputs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        log.info("warmed up %s (%s %s, %s on %s, batch sizes %s) in %.1f s", self.model_id, self.runtime,
                 self.precision, self.optimization, self.device, self.buckets, seconds)
        return seconds


def create_runner(model_id: str, device: torch.device, optimize: str, max_batch_size: int,
                  execution: Execution = Execution()) -> ModelRunner:
    """Load ``model_id`` and wrap it in a warmed-up runner."""
    runner = ModelRunner(model_id, load_model(model_id), device, optimize, max_batch_size, execution)
    runner.warmup()
    return runner
