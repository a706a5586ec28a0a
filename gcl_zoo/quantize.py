"""An int8 copy of an exported ONNX graph, for CPU servers: post-training quantisation with NNCF, checked on real
images before it is kept.

``model.int8.onnx`` sits beside ``model.onnx``: the same input and output (cosine logits), with weights and
activations quantised to int8 (QuantizeLinear/DequantizeLinear pairs, which OpenVINO and ONNX Runtime run with int8
kernels). Activation ranges come from calibration images of the model's own domain (a folder or zip of images: its
training data is the right choice), read through the model's evaluation transform. Images held out of the
calibration then measure what quantisation changed: the export is refused when more than
``1 - MIN_TOP1_AGREEMENT`` of their top-1 labels move, and ``config.json`` records the figures
(``INT8_CONFIG_KEY``). NNCF is OpenVINO's quantisation tool (the ``[int8]`` extra).
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .data.preprocessing import eval_transform
from .data.sources import ImageSource
from .files import replace_file
from .onnx_export import INPUT_NAME, ExportUnavailable, onnx_runner

__all__ = ["INT8_ONNX_NAME", "INT8_CONFIG_KEY", "IMAGE_SUFFIXES", "MIN_TOP1_AGREEMENT", "int8_quantizer_missing",
           "calibration_images", "quantize_onnx", "embedded_int8_graph"]

INT8_ONNX_NAME = "model.int8.onnx"
INT8_CONFIG_KEY = "onnx_int8"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# a graph that moves more top-1 labels than this is refused; the shipped graphs' agreement is in their records
# (gcl_zoo/weights/<name>.json) and bench/results/int8_accuracy.json
MIN_TOP1_AGREEMENT = 0.95


def embedded_int8_graph(model: nn.Module) -> Path | None:
    """The int8 ONNX graph shipped beside the packaged weights ``model`` was built from (``<name>.int8.onnx``), or None
    for a model whose weights do not come from the package or have no such graph."""
    from .models.weights import WEIGHTS_DIR

    file = (getattr(model, "pretrained_cfg", None) or {}).get("file")
    if not file or Path(file).parent != WEIGHTS_DIR or not file.endswith(".safetensors"):
        return None
    graph = WEIGHTS_DIR / (Path(file).name[: -len(".safetensors")] + ".int8.onnx")
    return graph if graph.is_file() else None


def int8_quantizer_missing() -> str | None:
    """Why ``quantize_onnx`` cannot run here (the packages to install), or None when it can."""
    missing = [name for name in ("nncf", "onnx") if importlib.util.find_spec(name) is None]
    return f"int8 quantisation needs {' and '.join(missing)}: pip install 'gcl-zoo[int8]'" if missing else None


def calibration_images(model: nn.Module, root: str | Path, count: int) -> tuple[torch.Tensor, str]:
    """``count`` images under ``root`` (a folder or .zip, searched recursively; only its ``train/`` folder when it
    has one, as the CIFAR zips and ImageFolder data sets do: the test images stay unseen) as the model's evaluation
    transform gives them (a float NCHW batch), and a description of where they came from. The images are evenly
    spaced over the sorted file list, so every class folder contributes."""
    source = ImageSource(root)
    names = [n for n in source.names() if n.lower().endswith(IMAGE_SUFFIXES)]
    training = [n for n in names if n.startswith("train/")]
    names, where = (training, f"{source.root.name}:train/") if training else (names, source.root.name)
    if len(names) < count:
        raise ValueError(f"{where} holds {len(names)} images ({', '.join(IMAGE_SUFFIXES)}); int8 calibration and its "
                         f"check need {count}: give a folder with more images of the model's domain, or fewer "
                         "--int8-images")
    transform = eval_transform(model.pretrained_cfg)
    step = len(names) / count
    return torch.stack([transform(source.load(names[int(i * step)])) for i in range(count)]), where


def _agreement(float_path: Path, int8_path: Path, images: torch.Tensor) -> dict[str, float]:
    batch = images.numpy()
    expected, got = onnx_runner(float_path)(batch), onnx_runner(int8_path)(batch)
    return {"top1_agreement_vs_float32": float((expected.argmax(1) == got.argmax(1)).mean()),
            "max_abs_logit_diff_vs_float32": float(np.abs(expected - got).max())}


def quantize_onnx(float_path: str | Path, out_path: str | Path, calibration: torch.Tensor,
                  held_out: torch.Tensor, source: str) -> dict[str, Any]:
    """Quantise ``float_path`` to int8 with activation ranges from ``calibration``, check it on ``held_out`` images
    and write it atomically to ``out_path``; returns its ``config.json`` entry (``source`` names the images)."""
    reason = int8_quantizer_missing()
    if reason:
        raise ExportUnavailable(reason)
    import nncf
    import onnx

    float_path, out_path = Path(float_path), Path(out_path)
    samples: list[dict[str, np.ndarray]] = [{INPUT_NAME: image[None].numpy()} for image in calibration]
    # full bias correction: on the shipped CIFAR-10 ResNet-32 it kept more test-set labels than NNCF's fast variant,
    # at the same top-1, for a few more seconds of export
    quantized = nncf.quantize(onnx.load(str(float_path)), nncf.Dataset(samples), subset_size=len(samples),
                              fast_bias_correction=False)
    fd, staging = tempfile.mkstemp(prefix=".quantizing-", suffix=".onnx", dir=out_path.parent)
    os.close(fd)
    try:
        onnx.save(quantized, staging)
        check = _agreement(float_path, Path(staging), held_out)
        if check["top1_agreement_vs_float32"] < MIN_TOP1_AGREEMENT:
            raise ValueError(f"int8 quantisation moved {1 - check['top1_agreement_vs_float32']:.1%} of top-1 labels "
                             f"on {len(held_out)} held-out images (at most {1 - MIN_TOP1_AGREEMENT:.0%} allowed); "
                             "calibrate on more images of the model's training data, or serve float32")
        replace_file(staging, out_path)
    finally:
        Path(staging).unlink(missing_ok=True)
    return {"file": out_path.name, "quantizer": f"nncf {nncf.__version__}", "calibration_source": source,
            "calibration_images": len(calibration), "held_out_images": len(held_out), **check}
