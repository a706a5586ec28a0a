"""The server's stages one at a time, in process: settings, decoding checks, pre-processing, runner, batching,
metrics."""
from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from pydantic import ValidationError

import gcl_zoo  # noqa: F401  (registers the zoo)
from gcl_zoo.data.preprocessing import eval_transform
from serve.batching import BatchingEngine
from serve.decoding import (
    TENSOR_DECODABLE,
    ImageHeader,
    ImagePayload,
    decode_jpegs_on_device,
    decode_pil,
    decode_uint8,
    inspect_image,
)
from serve.errors import RequestError
from serve.headers import read_header
from serve.metrics import ServerMetrics
from serve.parsing import check_top_k, decode_base64, payloads_from_json
from serve.pipeline import predict_batch
from serve.preprocess import DevicePipeline, PilPipeline, data_config, resize_crop_normalize, uint8_transform
from serve.runner import ModelRunner, batch_buckets, inference_plan, pads_to_buckets
from serve.settings import ServeSettings
from serve.startup import allow_graphs_per_bucket
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
    assert inspect_image(ImagePayload("a", webp), max_pixels=10_000) == ("WEBP", "RGB", (32, 32))
    assert inspect_image(ImagePayload("a", reencode(webp, "JPEG", size=(40, 30))), max_pixels=10_000) == (
        "JPEG", "RGB", (40, 30))
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


def _encoded_variants(data: bytes):
    """The image saved in every (format, mode) the tensor decoders read, and in two they must leave to PIL."""
    rgb = Image.open(io.BytesIO(data)).convert("RGB").resize((45, 29), Image.BICUBIC)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    sources = {"RGB": rgb, "L": rgb.convert("L"), "LA": rgb.convert("LA"), "P": rgb.convert("P"), "RGBA": rgba,
               "CMYK": rgb.convert("CMYK"), "I;16": rgb.convert("I").point(lambda v: v * 200).convert("I;16")}
    cases = [(fmt, mode) for fmt, mode in TENSOR_DECODABLE] + [("JPEG", "CMYK"), ("PNG", "I;16")]
    for fmt, mode in cases:
        for options in ([{"quality": 80}, {"lossless": True}] if fmt == "WEBP" else
                        [{"quality": 90}, {"quality": 75, "subsampling": 0}] if fmt == "JPEG" else [{}]):
            out = io.BytesIO()
            sources[mode].save(out, format=fmt, **options)
            yield f"{fmt}/{mode}/{options}", out.getvalue()


def test_tensor_decoding_gives_exactly_the_pixels_pil_gives(images):
    """``decode_uint8`` (the tensor decoders where they agree with PIL) equals ``convert("RGB")``, for every
    (format, mode) it decodes itself and for the ones it hands to PIL; corrupt files answer PIL's 422."""
    for _, data, _ in images[:3]:
        for name, blob in _encoded_variants(data):
            payload = ImagePayload(name, blob)
            header = inspect_image(payload, max_pixels=10_000)
            expected = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
            decoded = decode_uint8(payload, header)
            assert decoded.dtype == torch.uint8, name
            assert np.array_equal(decoded.permute(1, 2, 0).numpy(), expected), name
    jpeg = reencode(images[0][1], "JPEG")
    with pytest.raises(RequestError) as cut:
        decode_uint8(ImagePayload("cut.jpg", jpeg[:len(jpeg) // 2]), ImageHeader("JPEG", "RGB", (32, 32)))
    assert cut.value.status == 422 and "cut.jpg" in cut.value.message


def _pil_header(blob: bytes):
    with Image.open(io.BytesIO(blob)) as img:
        return img.format, img.mode, img.size


def test_byte_header_reader_agrees_with_pillow_or_leaves_the_file_to_it(images):
    """``read_header`` gives Pillow's (format, mode, size) for every file it reads, reads the common ones (8-bit
    PNG, simple WebP, 8-bit JPEG) itself, and leaves the rest (16-bit PNG, extended WebP, multi-picture JPEG,
    damaged headers) to Pillow."""
    variants = dict(_encoded_variants(images[0][1]))
    rgb = Image.open(io.BytesIO(images[1][1])).convert("RGB").resize((300, 200))
    extra = {}
    for name, fmt, options in [("progressive", "JPEG", {"progressive": True}), ("exif", "JPEG", {"exif": b"Exif\0\0"}),
                               ("mpo", "MPO", {"save_all": True, "append_images": [rgb]}),
                               ("animated", "WEBP", {"save_all": True, "append_images": [rgb.rotate(90)], "lossless": True}),
                               ("icc", "WEBP", {"icc_profile": b"\0" * 64}), ("lossy", "WEBP", {"quality": 50}),
                               ("interlaced", "PNG", {"optimize": True})]:
        out = io.BytesIO()
        rgb.save(out, format=fmt, **options)
        extra[name] = out.getvalue()
    read_itself = set()
    for name, blob in {**variants, **extra, "cifar": images[2][1]}.items():
        expected = _pil_header(blob)
        got = read_header(blob)
        if got is not None:
            assert got == expected, name
            read_itself.add(name)
        for cut in (10, 20, 28):  # a header cut short is never misread
            partial = read_header(blob[:cut])
            assert partial is None or partial == expected, (name, cut)
    assert {"cifar", "progressive", "exif", "lossy", "interlaced"} <= read_itself
    assert {n for n in variants if n.split("/")[0] in ("PNG", "JPEG") or "lossless" in n} - {
        n for n in variants if "I;16" in n or "CMYK" in n} <= read_itself
    assert not {"mpo", "animated", "icc", "PNG/I;16/{}"} & read_itself
    assert extra["mpo"][:3] == b"\xff\xd8\xff" and _pil_header(extra["mpo"])[0] == "MPO"


@pytest.mark.parametrize("name,unchanged", [("gcl_resnet32_cifar10_lt", (32, 32)), ("gcl_resnet50_imagenet_lt", None)])
def test_cpu_pipeline_skips_only_stages_that_change_nothing(images, name, unchanged):
    """Images of the input size skip the PIL resize and crop only when those are the identity (crop_pct 1);
    either way the prepared image is the evaluation transform's."""
    config = data_config(timm.create_model(name, pretrained=False))
    pipeline = PilPipeline(config, torch.device("cpu"))
    assert pipeline.unchanged_size == unchanged
    size = tuple(config["input_size"][:0:-1])
    for fmt in ("WEBP", "PNG", "JPEG"):
        blob = reencode(images[1][1], fmt, size=size)
        payload = ImagePayload(fmt, blob)
        prepared = pipeline.prepare(payload, inspect_image(payload, max_pixels=10 ** 6))
        assert torch.equal(prepared, uint8_transform(config)(Image.open(io.BytesIO(blob)).convert("RGB"))), fmt


def test_base64_and_json_parsing():
    assert decode_base64("data:image/png;base64,aGVsbG8=", "x") == b"hello"
    for bad in ("aGVsbG8", "a b c!", ""):
        with pytest.raises(RequestError, match="x"):
            decode_base64(bad, "x")
    parsed = payloads_from_json(b'{"inputs": ["aGk=", "aGVsbG8="], "parameters": {"top_k": 2}}')
    assert [p.name for p in parsed.payloads] == ["inputs[0]", "inputs[1]"]
    assert (parsed.parameters.top_k, parsed.model) == (2, None)
    # unset: softmax, or the query's
    assert parsed.hf_schema and not parsed.single and parsed.parameters.function_to_apply is None
    one = payloads_from_json(b'{"inputs": "aGk=", "parameters": {"function_to_apply": "sigmoid"}}')
    assert one.single and one.parameters.function_to_apply == "sigmoid"
    with pytest.raises(RequestError, match="parameters.top_k"):
        payloads_from_json(b'{"inputs": "aGk=", "parameters": {"top_k": "all"}}')
    assert check_top_k(None, 3, default=5) == 3
    assert check_top_k(11, 10, default=5) == 10  # more than the classes: all of them, as Hugging Face's pipelines
    with pytest.raises(RequestError, match="1 or more"):
        check_top_k(0, 10, default=5)


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


def test_device_pipeline_batches_decodes_and_isolates_a_corrupt_file(images):
    """The GPU pipeline's logic, run on CPU tensors: JPEGs stay encoded until the batch, are decoded together,
    other formats are decoded in ``prepare``; a corrupt JPEG fails alone with 422 and the batch holds the rest,
    each equal to the evaluation transform (no resize at the input size)."""
    config = data_config(timm.create_model("gcl_resnet32_cifar10_lt", pretrained=False))
    pipeline = DevicePipeline(config, torch.device("cpu"))
    cut = reencode(images[2][1], "JPEG")
    blobs = [reencode(images[0][1], "JPEG"), reencode(images[1][1], "PNG"), cut[:len(cut) * 3 // 4], images[3][1]]
    payloads = [ImagePayload(f"f{i}", blob) for i, blob in enumerate(blobs)]
    items = [pipeline.prepare(p, inspect_image(p, max_pixels=10_000)) for p in payloads]
    assert isinstance(items[0], ImagePayload) and isinstance(items[1], torch.Tensor)
    batch, failed = pipeline.collate(items, torch.device("cpu"))
    assert list(failed) == [2] and failed[2].status == 422 and "f2" in failed[2].message
    reference = torch.stack([eval_transform(config)(Image.open(io.BytesIO(blobs[i])).convert("RGB"))
                             for i in (0, 1, 3)])
    assert torch.allclose(batch, reference, atol=1e-5)


# --------------------------------------------------------------------------------------------------------- runner
def test_runner_logits_use_the_logit_scale(model):
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)  # calibrated logits: logit_scale times the raw ones
    for optimize in ("eager", "trace"):
        runner = ModelRunner("m", model, torch.device("cpu"), optimize=optimize, max_batch_size=8)
        assert runner.optimization == optimize
        assert torch.allclose(runner.scaled_logits(x), expected, atol=1e-5)
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 64] and batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]


def test_compiled_runner_pads_batches_to_warmed_buckets(model):
    """``--compile``: every bucket is compiled at warm-up; a batch between buckets is padded up to the next one
    and answers what the eager model answers."""
    runner = ModelRunner("m", model, torch.device("cpu"), optimize="compile", max_batch_size=4)
    assert runner.buckets == [1, 2, 4]
    runner.warmup(rounds=1)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(runner.scaled_logits(x), expected, atol=1e-4)


def test_device_pipeline_takes_a_batch_without_jpegs_and_keeps_cmyk_for_pil(images, monkeypatch):
    """The CUDA pipeline's branches on CPU tensors: a PNG/WebP-only batch (nothing for the JPEG decoder: it used to
    raise), a CMYK JPEG decoded by PIL as on the CPU path, and no normalisation constants built per batch."""
    config = data_config(timm.create_model("gcl_resnet32_cifar10_lt", pretrained=False))
    pipeline = DevicePipeline(config, torch.device("cpu"))
    cmyk = io.BytesIO()
    Image.open(io.BytesIO(images[4][1])).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    blobs = [reencode(images[0][1], "PNG"), images[1][1], cmyk.getvalue()]
    payloads = [ImagePayload(f"f{i}", blob) for i, blob in enumerate(blobs)]
    items = [pipeline.prepare(p, inspect_image(p, max_pixels=10_000)) for p in payloads]
    assert all(isinstance(item, torch.Tensor) for item in items)  # the CMYK JPEG was decoded here, by PIL
    made = []
    real_tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **kw: made.append(1) or real_tensor(*a, **kw))
    batch, failed = pipeline.collate(items[:2], torch.device("cpu"))
    assert failed == {} and batch.shape == (2, 3, 32, 32) and made == []
    reference = torch.stack([eval_transform(config)(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    assert torch.allclose(pipeline.collate(items, torch.device("cpu"))[0], reference, atol=1e-5)
    assert decode_jpegs_on_device([], torch.device("cpu")) == []


def test_cuda_batches_are_padded_to_warmed_sizes_and_compile_keeps_every_bucket():
    import torch._dynamo

    assert pads_to_buckets(torch.device("cuda"), "eager") and pads_to_buckets(torch.device("cpu"), "compile")
    assert not pads_to_buckets(torch.device("cpu"), "trace")
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    before = getattr(config, name)
    try:
        allow_graphs_per_bucket(len(batch_buckets(512)) + 20)
        assert getattr(config, name) > len(batch_buckets(512)) + 20
    finally:
        setattr(config, name, before)


# ------------------------------------------------------------------------------------------------------- batching
def test_engine_batches_concurrent_requests_and_bounds_its_queue(model):
    runner = ModelRunner("m", model, torch.device("cpu"), optimize="eager", max_batch_size=16)
    batches = []
    items = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(12)]  # prepared images

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            engine = BatchingEngine("m", partial(predict_batch, runner), pool, max_batch_size=16, max_wait_s=0.2, max_queue=12,
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
        assert torch.allclose(probs, predict_batch(runner, [item])[0], atol=1e-5)
    assert full.status == 503 and full.headers["Retry-After"] and "overloaded" in full.message


def test_engine_runs_as_many_batches_at_once_as_it_has_streams():
    """With two streams a second batch is collected and computed while the first still runs; never more than
    two at once; stopping fails the batches in flight with 503 instead of leaving their requests hanging."""
    running, most = [0], [0]
    lock = threading.Lock()

    def slow_predict(items):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.15)
        with lock:
            running[0] -= 1
        return [item * 2 for item in items]

    async def scenario(streams):
        with ThreadPoolExecutor(streams) as pool:
            engine = BatchingEngine("m", slow_predict, pool, max_batch_size=2, max_wait_s=0.0, max_queue=64,
                                    streams=streams)
            engine.start()
            results = await asyncio.gather(*(engine.submit([i], timeout_s=10) for i in range(8)))
            late = asyncio.ensure_future(engine.submit([99], timeout_s=10))
            await asyncio.sleep(0.05)  # the batch holding 99 is computing now
            await engine.stop()
            with pytest.raises(RequestError) as stopped:
                await late
            return results, stopped.value

    for streams in (1, 2):
        most[0] = 0
        results, stopped = asyncio.run(scenario(streams))
        assert results == [[2 * i] for i in range(8)]
        assert most[0] == streams
        assert stopped.status == 503
    assert inference_plan(None, torch.device("cpu"), "trace")[0] == min(2, torch.get_num_threads())
    assert inference_plan(None, torch.device("cpu"), "compile")[0] == 1
    assert inference_plan(3, torch.device("cpu"), "trace") == (3, max(1, torch.get_num_threads() // 3))


def test_engine_splits_a_request_over_batches_and_keeps_each_answer_in_order():
    """A request larger than the room left in a batch fills it and starts the next; an item's own error fails its
    request alone."""
    batches = []

    def predict(items):
        batches.append(list(items))
        return [RequestError(422, "item 5 is corrupt") if i == 5 else 10 * i for i in items]

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            engine = BatchingEngine("m", predict, pool, max_batch_size=4, max_wait_s=0.05, max_queue=64)
            engine.start()
            answers = await asyncio.gather(engine.submit([1, 2, 3], 10), engine.submit([4, 5, 6, 7, 8, 9], 10),
                                           engine.submit([10, 11], 10), return_exceptions=True)
            depth = engine.depth
            await engine.stop()
            return answers, depth

    (first, second, third), depth = asyncio.run(scenario())
    assert batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]] and depth == 0
    assert first == [10, 20, 30] and third == [100, 110]
    assert isinstance(second, RequestError) and second.status == 422 and "item 5" in second.message


def test_engine_times_out_with_504_and_skips_expired_work(model):
    runner = ModelRunner("m", model, torch.device("cpu"), optimize="eager", max_batch_size=4)
    batches = []

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            engine = BatchingEngine("m", partial(predict_batch, runner), pool, max_batch_size=4, max_wait_s=0.5, max_queue=8,
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
    assert main(["--inference-streams", "0"]) == 2
    assert "inference_streams" in capsys.readouterr().err


def test_the_metrics_middleware_knows_every_route_template_once():
    """Early refusals are matched against route templates; each route is listed once, whichever way this FastAPI
    version lists the routes of included routers."""
    from serve.app import create_app
    from serve.metrics import route_template

    app = create_app(ServeSettings())
    routes = next(m.kwargs["routes"] for m in app.user_middleware if "routes" in m.kwargs)
    keys = [(r.path, tuple(sorted(getattr(r, "methods", None) or ()))) for r in routes]
    assert len(keys) == len(set(keys)) and ("/v2/models/{name}/infer", ("POST",)) in keys
    scope = {"type": "http", "path": "/v2/models/some-model/infer", "method": "POST", "root_path": "", "headers": []}
    assert route_template(scope, routes) == "/v2/models/{name}/infer"
    assert route_template({**scope, "path": "/nowhere"}, routes) == "unmatched"


def test_the_api_key_has_one_source_read_on_every_request(monkeypatch):
    """The key comes from the settings' environment variable when a request is checked, not from a copy taken at
    start-up: rotating the variable's value takes effect for the next request."""
    from types import SimpleNamespace

    from serve.dependencies import require_api_key

    state = SimpleNamespace(settings=ServeSettings(api_key_env="ROTATED_KEY"))
    monkeypatch.setenv("ROTATED_KEY", "first")
    asyncio.run(require_api_key(state, None, "first"))
    monkeypatch.setenv("ROTATED_KEY", "second")
    with pytest.raises(RequestError, match="wrong API key"):
        asyncio.run(require_api_key(state, None, "first"))
    asyncio.run(require_api_key(state, None, "second"))
    monkeypatch.delenv("ROTATED_KEY")
    asyncio.run(require_api_key(state, None, None))  # no key configured: no check
