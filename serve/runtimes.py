"""Inference runtimes for CPU serving: OpenVINO and ONNX Runtime run the model's ONNX graph.

Each runtime turns a pre-processed float32 NCHW batch (a CPU tensor) into the model's raw outputs (cosine
logits) and is called from the server's inference threads, several at once (one per stream):

* ``openvino``: one compiled model with ``NUM_STREAMS`` streams and an infer request per inference thread. The CPU
  plugin computes in bf16 on CPUs with bf16 instructions, but whether that pays depends on the CPU: on some it
  is much faster than float32, on others slower (``bench/serve_runtimes.py`` measures both). So
  ``precision="auto"`` times both at start-up and keeps bf16 only where it is clearly faster
  (``choose_precision``); ``precision="f32"`` pins float32.
* ``precision="int8"`` (either runtime): the folder's or Hub repo's ``model.int8.onnx`` (or the one shipped beside a
  packaged checkpoint), quantised and checked at export (``gcl_zoo.quantize``); it cannot be made at start-up, since
  calibration needs images of the model's domain.
* ``onnxruntime``: one session per inference thread, each with its own intra-op threads and no spin-waiting (a
  spinning pool takes the cores that HTTP parsing and decoding need); the CPU execution provider computes float32.

The graph is the exported folder's ``model.onnx`` when the model comes from one (``local-dir:`` or ``hf-hub:``),
otherwise it is exported from the loaded model at start-up (``gcl_zoo.onnx_export``, checked against PyTorch).
"""
from __future__ import annotations

import importlib
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["RUNTIMES", "PRECISIONS", "EXTRA_FOR", "MIN_SPEEDUP_FOR_BF16", "runtime_installed", "resolve_runtime",
           "onnx_graph", "OpenVINOForward", "OnnxRuntimeForward", "choose_precision", "create_onnx_forward"]

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "openvino", "onnxruntime")
PRECISIONS = ("auto", "f32", "int8")
EXTRA_FOR = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
# bf16 serves only when it pays for what it costs: it moves probabilities a little and can flip the top-1 label of
# near-ties (bench/int8_accuracy.py compares the answers); a gain within timing noise is not worth that, so exact
# float32 answers win unless bf16 is at least 10% faster
MIN_SPEEDUP_FOR_BF16 = 1.1
Forward = Callable[[torch.Tensor], torch.Tensor]


def runtime_installed(runtime: str) -> bool:
    """Whether ``runtime`` imports here (a broken install counts as missing)."""
    if runtime == "torch":
        return True
    try:
        importlib.import_module(runtime)
    except ImportError:
        return False
    return True


def resolve_runtime(runtime: str, device: torch.device, optimize: str = "auto", precision: str = "auto") -> str:
    """``auto``: OpenVINO on CPU when installed (the fastest here, see the serving benchmark), else PyTorch;
    PyTorch on CUDA, or when a PyTorch optimisation (``--optimize``) is asked for; for ``int8``, OpenVINO or else
    ONNX Runtime. An ONNX runtime asked for on CUDA, or one not installed, and int8 asked of PyTorch, are refused
    with the fix."""
    if runtime == "auto":
        wants_torch = device.type != "cpu" or optimize != "auto"
        runtime = "openvino" if not wants_torch and runtime_installed("openvino") else "torch"
        if precision == "int8" and runtime == "torch" and not wants_torch and runtime_installed("onnxruntime"):
            runtime = "onnxruntime"
    if precision == "int8" and runtime == "torch":
        raise ValueError("--precision int8 runs the model's int8 ONNX graph in OpenVINO or ONNX Runtime, on the CPU: "
                         "pip install 'gcl-zoo[openvino]' and serve with --runtime auto or openvino on --device cpu")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose auto, {', '.join(RUNTIMES)}")
    if runtime != "torch" and device.type != "cpu":
        raise ValueError(f"--runtime {runtime} serves on the CPU; on {device.type.upper()} use --runtime torch "
                         "(or --device cpu)")
    if not runtime_installed(runtime):
        raise ValueError(f"--runtime {runtime} needs the {runtime} package: pip install 'gcl-zoo[{EXTRA_FOR[runtime]}]'")
    return runtime


def onnx_graph(model_id: str, model: nn.Module, workdir: Path, precision: str = "auto") -> tuple[Path, str]:
    """The model's ONNX file and where it came from: the folder's or Hub repo's ``model.onnx`` (``model.int8.onnx``
    for int8; for a checkpoint shipped in the package, the int8 graph shipped beside it), else a fresh float32 export
    into ``workdir``; an int8 graph that is not there is refused with the fix."""
    from gcl_zoo.onnx_export import ONNX_NAME, export_onnx
    from gcl_zoo.quantize import INT8_ONNX_NAME, embedded_int8_graph

    name = INT8_ONNX_NAME if precision == "int8" else ONNX_NAME
    if model_id.startswith("local-dir:"):
        path = Path(model_id.split(":", 1)[1]) / name
        if path.is_file():
            return path, str(path)
    elif model_id.startswith("hf-hub:"):
        found = _hub_file(model_id.split(":", 1)[1], name)
        if found is not None:
            return found, f"{model_id}/{name}"
    elif precision == "int8":
        shipped = embedded_int8_graph(model)
        if shipped is not None:
            return shipped, f"shipped in the package ({shipped.name})"
    if precision == "int8":
        raise ValueError(f"--precision int8 needs {INT8_ONNX_NAME} beside the weights of {model_id}, and it has none: "
                         f"write one with `gcl-zoo export SOURCE OUT --int8-calibration TRAINING_IMAGES` and serve "
                         "--model local-dir:OUT (or push OUT to the Hub)")
    path = workdir / ONNX_NAME
    export_onnx(model, path)
    return path, "exported at start-up"


def _hub_file(repo: str, filename: str) -> Path | None:
    """``filename`` of Hub repo ``ORG/NAME[@revision]`` (downloaded or cached); None when the repo has none."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo_id, _, revision = repo.partition("@")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None))
    except EntryNotFoundError:
        return None


class OpenVINOForward:
    """An ONNX graph compiled by OpenVINO for the CPU, callable from ``streams`` threads at once."""

    runtime = "openvino"

    def __init__(self, path: Path, streams: int, threads: int, precision: str):
        import openvino

        config = {"NUM_STREAMS": str(streams), "INFERENCE_NUM_THREADS": str(streams * threads)}
        if precision in ("f32", "int8"):  # int8: the quantised layers run in int8, the others in float32
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = openvino.Core().compile_model(str(path), "CPU", config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.precision = "int8" if precision == "int8" else hint
        self._local = threading.local()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({0: batch.numpy()}, share_inputs=True)
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, dtype=np.float32))


def choose_precision(candidates: dict[str, Forward], batch: torch.Tensor,
                     rounds: int = 3) -> tuple[str, dict[str, float]]:
    """The precision to serve among ``candidates`` (``"f32"`` and a reduced one, each a compiled forward), and the
    images/s each reached on ``batch``.

    Each is called once untimed, then the candidates take turns for ``rounds`` timed calls each (a noisy machine
    then slows both alike) and the median call counts. The reduced precision wins only when at least
    ``MIN_SPEEDUP_FOR_BF16`` times as fast as float32.
    """
    times: dict[str, list] = {name: [] for name in candidates}
    for forward in candidates.values():
        forward(batch)
    for _ in range(rounds):
        for name, forward in candidates.items():
            start = time.perf_counter()
            forward(batch)
            times[name].append(time.perf_counter() - start)
    speed = {name: batch.shape[0] / statistics.median(seconds) for name, seconds in times.items()}
    reduced = [name for name in speed if name != "f32"]
    best = max(reduced, key=speed.get, default="f32")
    chosen = best if "f32" not in speed or speed[best] >= MIN_SPEEDUP_FOR_BF16 * speed["f32"] else "f32"
    return chosen, speed


class OnnxRuntimeForward:
    """An ONNX Runtime CPU session per calling thread, each with ``threads`` intra-op threads."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, streams: int, threads: int, precision: str):
        import onnxruntime

        self.precision = "int8" if precision == "int8" else "f32"  # the CPU provider computes float32 otherwise
        self.model_bytes = Path(path).read_bytes()  # sessions are made in the inference threads, after the file may be gone
        self.options = onnxruntime.SessionOptions()
        self.options.intra_op_num_threads = threads
        self.options.inter_op_num_threads = 1
        self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._local = threading.local()
        self._session()  # fail at start-up, not on the first request

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            import onnxruntime

            session = self._local.session = onnxruntime.InferenceSession(
                self.model_bytes, self.options, providers=["CPUExecutionProvider"])
        return session

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        session = self._session()
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0])


def create_onnx_forward(runtime: str, model_id: str, model: nn.Module, streams: int, threads: int, precision: str,
                        batch: torch.Tensor) -> tuple[Forward, str, dict[str, float] | None]:
    """The model's ONNX graph loaded into ``runtime``; also says where the graph came from, and, when ``auto``
    precision had a choice to make, the images/s each precision reached on ``batch`` (``choose_precision``)."""
    forward_cls = {"openvino": OpenVINOForward, "onnxruntime": OnnxRuntimeForward}[runtime]
    speeds = None
    with tempfile.TemporaryDirectory(prefix="gcl-zoo-onnx-") as tmp:
        path, origin = onnx_graph(model_id, model, Path(tmp), precision)
        forward = forward_cls(path, streams, threads, precision)
        if precision == "auto" and forward.precision != "f32":
            candidates = {forward.precision: forward, "f32": forward_cls(path, streams, threads, "f32")}
            chosen, speeds = choose_precision(candidates, batch)
            forward = candidates[chosen]
            log.info("%s: %s", model_id, ", ".join(f"{name} {ips:.0f} images/s" for name, ips in speeds.items()))
    log.info("%s runs %s (%s, %s precision)", runtime, model_id, origin, forward.precision)
    return forward, origin, speeds
