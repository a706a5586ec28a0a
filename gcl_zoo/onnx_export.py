"""ONNX export of a zoo model, checked against PyTorch before it is kept.

``model.onnx`` sits beside ``model.safetensors`` in an exported folder so CPU servers can run the model with
OpenVINO or ONNX Runtime. The graph takes a float32 NCHW batch of any size (one dynamic batch axis) and returns
the model's raw logits (``GCLModel.forward_raw``: the cosine logits of a GCL head): the consumer multiplies them by
the calibrated ``logit_scale`` (``model_args`` in ``config.json``) before a softmax, as ``serve`` does, so a model
recalibrated with ``gcl-zoo calibrate`` keeps its graphs. ``config.json``'s ``onnx`` entry says so
(``ONNX_CONFIG_KEY``).
The exporter is PyTorch's ``torch.export``-based one, which needs the ``onnx`` and ``onnxscript`` packages
(the ``[openvino]`` and ``[onnxruntime]`` extras bring them).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .files import replace_file
from .models.gcl import raw_logits_module

__all__ = ["ONNX_NAME", "ONNX_CONFIG_KEY", "OPSET", "INPUT_NAME", "OUTPUT_NAME", "ExportUnavailable",
           "export_onnx", "onnx_exporter_missing", "onnx_runner", "check_onnx"]

ONNX_NAME = "model.onnx"
ONNX_CONFIG_KEY = "onnx"
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"  # per-node metadata naming the exporting machine's source files
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# float32 runtimes agree with PyTorch to rounding error on cosine logits; a wrong graph is off by far more
MAX_ABS_DIFF = 1e-4


class ExportUnavailable(RuntimeError):
    """The packages the exporter needs are not installed."""


def onnx_exporter_missing() -> str | None:
    """Why ``export_onnx`` cannot run here (the packages to install), or None when it can."""
    missing = [name for name in ("onnx", "onnxscript") if _absent(name)]
    if not missing:
        return None
    return (f"the ONNX exporter needs {' and '.join(missing)}: pip install 'gcl-zoo[openvino]' or "
            "'gcl-zoo[onnxruntime]'")


def _absent(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def onnx_runner(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """Run an ONNX file in float32 with whichever runtime is installed (ONNX Runtime, else OpenVINO), for checks."""
    if not _absent("onnxruntime"):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {INPUT_NAME: batch})[0]
    if not _absent("openvino"):
        import openvino

        compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return lambda batch: compiled(batch)[0]
    raise ExportUnavailable("checking an ONNX file needs ONNX Runtime or OpenVINO: pip install 'gcl-zoo[onnxruntime]'")


def check_onnx(path: str | Path, model: nn.Module, input_size: tuple, batch_size: int = 3) -> float:
    """Largest absolute difference between the file's and the model's outputs on a random batch; raises
    ``ValueError`` above ``MAX_ABS_DIFF`` (an export that changed what the model computes is never kept)."""
    batch = torch.randn((batch_size, *input_size), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model.eval()(batch).float().numpy()
    got = onnx_runner(path)(batch.numpy())
    diff = float(np.abs(got - expected).max())
    if not diff <= MAX_ABS_DIFF:
        raise ValueError(f"{path}: the exported graph differs from the PyTorch model by {diff:.2e} (limit "
                         f"{MAX_ABS_DIFF:.0e}); the export is not faithful, report it with the model name")
    return diff


def export_onnx(model: nn.Module, path: str | Path, input_size: tuple | None = None) -> dict[str, Any]:
    """Export ``model`` (eval mode, float32, CPU) to ``path`` with a dynamic batch axis, check it against PyTorch,
    and return the ``config.json`` entry that describes it. The file is replaced atomically."""
    reason = onnx_exporter_missing()
    if reason:
        raise ExportUnavailable(reason)
    input_size = tuple(input_size or model.pretrained_cfg["input_size"])
    path = Path(path)
    model = raw_logits_module(model.eval().float().cpu())
    example = torch.zeros((2, *input_size))
    fd, staging = tempfile.mkstemp(prefix=".exporting-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with _quiet():
            torch.onnx.export(model, (example,), staging, dynamo=True, opset_version=OPSET, external_data=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        _drop_stack_traces(staging)
        diff = check_onnx(staging, model, input_size)
        replace_file(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)
    return {"file": path.name, "opset": OPSET, "input": INPUT_NAME, "output": OUTPUT_NAME,
            "input_shape": ["batch", *input_size], "dynamic_batch": True, "dtype": "float32",
            "outputs_are": "raw logits (cosines): multiply by model_args.logit_scale before the softmax",
            "max_abs_diff_vs_pytorch": diff}


def _drop_stack_traces(path: str) -> None:
    """The exporter records the Python stack behind every node, with the absolute paths of the machine that
    exported it; a graph meant for publishing keeps the node's other metadata and drops those."""
    import onnx

    graph = onnx.load(path)
    for node in graph.graph.node:
        kept = [prop for prop in node.metadata_props if prop.key != STACK_TRACE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(graph, path)


@contextlib.contextmanager
def _quiet():
    """The exporter prints its progress and warns about deprecated internals; a CLI export shows neither."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
