"""The server's stages one at a time, in process: settings, decoding checks, pre-processing, runner, batching,
metrics."""
from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from pydantic import ValidationError

import gcl_zoo  # noqa: F401  (registers the zoo)
from serve.batching import BatchingEngine
from serve.decoding import (ImagePayload, RequestError, check_top_k, decode_base64, decode_pil, inspect_image,
                            payloads_from_json)
from serve.metrics import ServerMetrics
from serve.preprocess import data_config, eval_transform, resize_crop_normalize
from serve.runner import ModelRunner, batch_buckets
from serve.settings import ServeSettings
from serve_images import cifar_test_images, png_header_only, reencode


@pytest.fixture(scope="module")
def images(cifar10_zip):
    return cifar_test_images(cifar10_zip, per_class=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("gcl_resnet32_cifar10_lt").eval()


# ------------------------------------------------------------------------------------------------------ settings
def test_settings_flags_override_environment_over_defaults():
    env = {"GCL_ZOO_SERVE_MAX_BATCH_SIZE": "16", "GCL_ZOO_SERVE_MODELS": "a, b", "GCL_ZOO_SERVE_PORT": "9000"}
    settings = ServeSettings.from_sources({"port": 8080, "max_wait_ms": None}, environ=env)
    assert (settings.max_batch_size, settings.models, settings.port, settings.max_wait_ms) == (16, ["a", "b"], 8080, 5.0)
    with pytest.raises(ValidationError, match="max_batch_size"):
        ServeSettings.from_sources({"max_batch_size": 0}, environ={})
    with pytest.raises(ValidationError, match="max_queue"):
        ServeSettings.from_sources({"max_queue": 4}, environ={})


def test_api_key_is_read_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("MY_KEY", "s3cret")
    assert ServeSettings(api_key_env="MY_KEY").api_key == "s3cret"
    monkeypatch.setenv("MY_KEY", "")
    assert ServeSettings(api_key_env="MY_KEY").api_key is None


# ------------------------------------------------------------------------------------------------------ decoding
def test_inspect_image_checks_headers_before_decoding(images):
    webp = images[0][1]
    assert inspect_image(ImagePayload("a", webp), max_pixels=10_000) == "WEBP"
    assert inspect_image(ImagePayload("a", reencode(webp, "JPEG")), max_pixels=10_000) == "JPEG"
    with pytest.raises(RequestError) as bomb:
        inspect_image(ImagePayload("bomb.png", png_header_only(5000, 5000)), max_pixels=1_000_000)
    assert bomb.value.status == 413 and "bomb.png" in bomb.value.message and "5000x5000" in bomb.value.message
    with pytest.raises(RequestError) as ppm:
        inspect_image(ImagePayload("x.ppm", reencode(webp, "PPM")), max_pixels=10_000)
    assert ppm.value.status == 415
    with pytest.raises(RequestError) as text:
        inspect_image(ImagePayload("x.txt", b"just words"), max_pixels=10_000)
    assert text.value.status == 422 and "x.txt" in text.value.message


def test_decode_pil_reports_truncated_files(images):
    jpeg = reencode(images[0][1], "JPEG", size=(128, 128))
    assert decode_pil(ImagePayload("ok", jpeg)).size == (128, 128)
    with pytest.raises(RequestError) as cut:
        decode_pil(ImagePayload("cut.jpg", jpeg[:300]))
    assert cut.value.status == 422 and "cut.jpg" in cut.value.message


def test_base64_and_json_parsing():
    assert decode_base64("data:image/png;base64,aGVsbG8=", "x") == b"hello"
    for bad in ("aGVsbG8", "a b c!", ""):
        with pytest.raises(RequestError, match="x"):
            decode_base64(bad, "x")
    payloads, top_k, model = payloads_from_json(b'{"inputs": ["aGk=", "aGVsbG8="], "parameters": {"top_k": 2}}')
    assert [p.name for p in payloads] == ["inputs[0]", "inputs[1]"] and (top_k, model) == (2, None)
    with pytest.raises(RequestError, match="parameters.top_k"):
        payloads_from_json(b'{"inputs": "aGk=", "parameters": {"top_k": "all"}}')
    assert check_top_k(None, 3, default=5) == 3
    with pytest.raises(RequestError, match="1 to 10"):
        check_top_k(11, 10, default=5)


# ----------------------------------------------------------------------------------------------- pre-processing
@pytest.mark.parametrize("name,size", [("gcl_resnet32_cifar10_lt", (32, 32)), ("gcl_resnet32_cifar10_lt", (61, 45)),
                                       ("gcl_resnet50_imagenet_lt", (300, 260))])
def test_tensor_path_matches_the_evaluation_transform(images, name, size):
    """The GPU path's steps (run here on CPU tensors) reproduce timm's PIL evaluation transform."""
    config = data_config(timm.create_model(name, pretrained=False))
    img = Image.open(io.BytesIO(reencode(images[3][1], "PNG", size=size))).convert("RGB")
    reference = eval_transform(config)(img)
    tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    batch = resize_crop_normalize([tensor], config)
    assert batch.shape == (1, *reference.shape)
    # identical without resizing; resampling PIL vs torch differs by at most a grey level or two
    tolerance = 1e-5 if size == (32, 32) else 3 / 255 / min(config["std"])
    assert (batch[0] - reference).abs().max() <= tolerance
    assert (batch[0] - reference).abs().mean() <= 0.01


# --------------------------------------------------------------------------------------------------------- runner
def test_runner_probabilities_use_the_logit_scale(model):
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = torch.softmax(model.logit_scale * model(x), dim=1)
    for optimize in ("eager", "trace"):
        runner = ModelRunner("m", model, torch.device("cpu"), optimize=optimize, max_batch_size=8)
        assert runner.optimization == optimize
        assert torch.allclose(runner.probabilities(x), expected, atol=1e-6)
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 64] and batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]


# ------------------------------------------------------------------------------------------------------- batching
def test_engine_batches_concurrent_requests_and_bounds_its_queue(model):
    runner = ModelRunner("m", model, torch.device("cpu"), optimize="eager", max_batch_size=16)
    batches = []
    items = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(12)]  # prepared images

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            engine = BatchingEngine("m", runner.predict, pool, max_batch_size=16, max_wait_s=0.2, max_queue=12,
                                    on_batch=lambda size, seconds: batches.append(size))
            engine.start()
            results = await asyncio.gather(*(engine.submit([item], timeout_s=10) for item in items))
            with pytest.raises(RequestError) as full:
                await engine.submit(items + items[:1], timeout_s=10)
            await engine.stop()
            return results, full.value

    results, full = asyncio.run(scenario())
    assert batches == [12]  # all twelve waited for one another within max_wait
    for item, (probs,) in zip(items, results):
        assert torch.allclose(probs, runner.predict([item])[0], atol=1e-5)
    assert full.status == 503 and full.headers["Retry-After"] and "overloaded" in full.message


def test_engine_times_out_with_504_and_skips_expired_work(model):
    runner = ModelRunner("m", model, torch.device("cpu"), optimize="eager", max_batch_size=4)
    batches = []

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            engine = BatchingEngine("m", runner.predict, pool, max_batch_size=4, max_wait_s=0.5, max_queue=8,
                                    on_batch=lambda size, seconds: batches.append(size))
            engine.start()
            with pytest.raises(RequestError) as late:
                await engine.submit([torch.zeros(3, 32, 32, dtype=torch.uint8)], timeout_s=0.05)
            await asyncio.sleep(0.6)  # the batch closes after the request gave up: nothing is computed for it
            await engine.stop()
            return late.value

    assert asyncio.run(scenario()).status == 504
    assert batches == []


# -------------------------------------------------------------------------------------------------------- metrics
def test_metrics_text_format():
    metrics = ServerMetrics(max_batch_size=8, queue_depths=lambda: {'we"ird': 3})
    metrics.observe_request("/predict", 200, 0.02)
    metrics.observe_batch('we"ird', 5, 0.1)
    text = metrics.render()
    assert 'gcl_serve_requests_total{endpoint="/predict",status="200"} 1' in text
    assert 'gcl_serve_batch_size_bucket{model="we\\"ird",le="4"} 0' in text
    assert 'gcl_serve_batch_size_bucket{model="we\\"ird",le="8"} 1' in text
    assert 'gcl_serve_batch_size_count{model="we\\"ird"} 1' in text
    assert 'gcl_serve_queue_depth{model="we\\"ird"} 3' in text
    assert "# TYPE gcl_serve_request_duration_seconds histogram" in text


def test_cli_rejects_invalid_settings_before_loading_anything(capsys):
    from serve.cli import main

    assert main(["--max-batch-size", "0"]) == 2
    assert "max_batch_size" in capsys.readouterr().err
