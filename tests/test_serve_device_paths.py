"""The compiled and GPU serving paths, on the CPU: compiled graphs that live traffic really uses, decoded images
held at the model's input size, GPU decode fallbacks counted, and a broken device taking the server out of
readiness. (A CUDA device itself is stood in for only where a CPU cannot show the behaviour.)"""
from __future__ import annotations

import io
import logging

import pytest
import timm
import torch
import torch._dynamo
from PIL import Image

import gcl_zoo  # noqa: F401  (registers the zoo)
from serve import runner as runner_module
from serve.decoding import ImagePayload, decode_jpegs_on_device, decode_uint8, inspect_image
from serve.errors import RequestError
from serve.metrics import ServerMetrics
from serve.pipeline import predict_batch, predict_tensors
from serve.preprocess import DevicePipeline, data_config, resize_crop_normalize
from serve.runner import ModelRunner
from serve.served import ServedModel, ServedModels
from serve.settings import ServeSettings
from serve.startup import configure_torch
from serve.state import ServerState


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
    # a low starting limit: the start-up step must raise it for all their graphs (config.patch restores it; pytest's
    # monkeypatch would delete, and so hide, the option on undo)
    with config.patch({name: 2}):
        torch._dynamo.reset()
        configure_torch(torch.device("cpu"), "compile", max_batch_size=4, models=2)  # the server's start-up step
        runners = [ModelRunner(model_id, timm.create_model(model_id).eval(), torch.device("cpu"), optimize="compile",
                               max_batch_size=4)
                   for model_id in ("gcl_resnet32_cifar10_lt", "gcl_resnet32_cifar100_lt")]
        for runner in runners:
            runner.warmup(rounds=1)
        assert len(graphs) == 2 * len(runners[0].buckets) == 6
        for runner in runners:
            for n in (1, 2, 3, 4):
                predict_batch(runner, [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)] * n)
                predict_tensors(runner, [torch.randn(3, 32, 32)] * n)
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


@pytest.fixture()
def cifar_runner():
    torch.manual_seed(0)
    return ModelRunner("m", timm.create_model("gcl_resnet32_cifar10_lt").eval(), torch.device("cpu"), optimize="eager",
                       max_batch_size=4)


def test_gpu_jpeg_decoding_fallbacks_are_logged_and_counted_in_the_metrics(cifar_runner, caplog):
    """A batch with a truncated JPEG: the batched call fails (per_image), the bad file goes to PIL (pil) and fails
    alone; both are logged and reach /metrics. (The GPU pipeline's logic, on CPU tensors.)"""
    cifar_runner.pipeline = DevicePipeline(cifar_runner.config, torch.device("cpu"))
    good, cut = _encoded("JPEG", (40, 40)), _encoded("JPEG", (48, 48))
    payloads = [good, ImagePayload("the cut file", cut.data[:len(cut.data) * 3 // 4])]
    with caplog.at_level(logging.WARNING, logger="serve.decoding"):
        results = predict_batch(cifar_runner, [cifar_runner.prepare(p, inspect_image(p, 10_000)) for p in payloads])
    assert isinstance(results[0], torch.Tensor) and isinstance(results[1], RequestError)
    assert cifar_runner.decode_fallbacks() == {"per_image": 1, "pil": 1}
    assert "batched GPU JPEG decoding of 2 images failed" in caplog.text and "refused the cut file" in caplog.text
    metrics = ServerMetrics(4, dict, decode_fallbacks=lambda: {"m": cifar_runner.decode_fallbacks()}).render()
    assert 'gcl_serve_gpu_jpeg_fallbacks_total{model="m",fallback="per_image"} 1' in metrics
    assert 'gcl_serve_gpu_jpeg_fallbacks_total{model="m",fallback="pil"} 1' in metrics
    assert "# TYPE gcl_serve_gpu_jpeg_fallbacks_total counter" in metrics


def test_a_device_that_fails_for_good_takes_the_server_out_of_readiness(cifar_runner, monkeypatch):
    """A failing batch on a device that still works (a model error) changes nothing; one after which the device
    runs nothing more (a sticky CUDA error: stood in for by device_works) makes /ready and /predict answer 503."""
    models = ServedModels(max_images=4, default_top_k=5, served={"m": ServedModel(cifar_runner, None, None, None)})
    state = ServerState(settings=ServeSettings(), metrics=ServerMetrics(4, dict), models=models, ready=True)
    wrong_channels = [torch.zeros(5, 32, 32)]
    with pytest.raises(RuntimeError):
        predict_tensors(cifar_runner, wrong_channels)
    state.check_ready()
    assert state.serving()
    monkeypatch.setattr(runner_module, "device_works", lambda device: False)
    with pytest.raises(RuntimeError):
        predict_tensors(cifar_runner, wrong_channels)
    with pytest.raises(RequestError) as refused:
        state.check_ready()
    assert refused.value.status == 503 and "m (RuntimeError" in refused.value.message
    assert "restart" in refused.value.message and not state.serving()  # the v2 protocol's readiness too


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_jpeg_decoding_waits_for_work_queued_on_the_callers_stream():
    """torchvision's CUDA decoder writes from a private stream (pytorch/vision#9606): blocks freed while reads
    of them are still queued on the caller's stream must not be overwritten before those reads run."""
    device = torch.device("cuda")
    payloads = [_encoded("JPEG", (256, 256))] * 8
    reference = [image.cpu() for image in decode_jpegs_on_device(payloads, device)]
    elements = reference[0].numel() // 4  # float32 tensors the size of one decoded image
    for _ in range(10):
        tensors = [torch.full((elements,), float(i), device=device) for i in range(len(payloads))]
        torch.cuda.synchronize(device)
        torch.cuda._sleep(100_000_000)  # a long kernel first, so the reads below are still queued
        sums = [tensor.sum() for tensor in tensors]
        del tensors  # freed with reads pending: the decoder's outputs may be given these blocks
        images = decode_jpegs_on_device(payloads, device)
        assert [float(total) for total in sums] == [float(i * elements) for i in range(len(payloads))]
        assert all(torch.equal(image.cpu(), ref) for image, ref in zip(images, reference))
