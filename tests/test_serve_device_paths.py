"""The compiled and GPU serving paths, on the CPU: compiled graphs that live traffic really uses, decoded images
held at the model's input size, GPU decode fallbacks counted, and a broken device taking the server out of
readiness. (A CUDA device itself is stood in for only where a CPU cannot show the behaviour.)"""
from __future__ import annotations

import io

import timm
import torch
import torch._dynamo
from PIL import Image

import gcl_zoo  # noqa: F401  (registers the zoo)
from serve.decoding import ImagePayload, decode_uint8, inspect_image
from serve.preprocess import DevicePipeline, data_config, resize_crop_normalize
from serve.runner import ModelRunner


def _encoded(fmt: str, size, mode: str = "RGB") -> ImagePayload:
    out = io.BytesIO()
    Image.radial_gradient("L").resize(size).convert(mode).save(out, format=fmt)
    return ImagePayload(f"a {fmt} {mode} image", out.getvalue())


def test_compiled_runners_of_two_models_serve_the_graphs_warm_up_built(monkeypatch):
    """Warm-up compiles every bucket of every model; live batches of every size, from images and from tensors,
    reuse those graphs: none is rebuilt on live traffic and no model falls back to eager at the recompile limit."""
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, **{**kw, "backend": counting_backend}))
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(config, name, 2)  # a low starting limit: the runners must raise it for all their graphs
    torch._dynamo.reset()
    runners = [ModelRunner(model_id, timm.create_model(model_id).eval(), torch.device("cpu"), optimize="compile",
                           max_batch_size=4) for model_id in ("gcl_resnet32_cifar10_lt", "gcl_resnet32_cifar100_lt")]
    for runner in runners:
        runner.warmup(rounds=1)
    assert len(graphs) == 2 * len(runners[0].buckets) == 6
    for runner in runners:
        for n in (1, 2, 3, 4):
            runner.predict([torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)] * n)
            runner.predict_tensors([torch.randn(3, 32, 32)] * n)
    assert len(graphs) == 6
    torch._dynamo.reset()


def test_the_gpu_pipeline_holds_decoded_images_at_the_model_input_size():
    """PNG, WebP and CMYK JPEG files are decoded in the thread pool; what waits for the batch is the model's input
    (3 x 32 x 32 bytes), not the full image (3 x 1200 x 900), and the batch is what it was before."""
    config = data_config(timm.create_model("gcl_resnet32_cifar10_lt", pretrained=False))
    pipeline = DevicePipeline(config, torch.device("cpu"))
    payloads = [_encoded("PNG", (1200, 900)), _encoded("WEBP", (900, 1200)), _encoded("JPEG", (1000, 700), "CMYK"),
                _encoded("JPEG", (640, 480))]
    headers = [inspect_image(p, max_pixels=2_000_000) for p in payloads]
    items = [pipeline.prepare(p, h) for p, h in zip(payloads, headers)]
    assert [tuple(item.shape) for item in items[:3]] == [(3, 32, 32)] * 3
    assert items[3] is payloads[3]  # an RGB JPEG waits encoded, for the GPU decoder
    batch, failed = pipeline.collate(items, torch.device("cpu"))
    expected = resize_crop_normalize([decode_uint8(p, h) for p, h in zip(payloads, headers)], config)
    assert failed == {} and torch.equal(batch, expected)
