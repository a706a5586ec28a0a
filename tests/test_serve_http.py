"""The inference server end to end: real uvicorn processes on 127.0.0.1, real HTTP, real CIFAR-10 images.

The models are randomly initialised zoo architectures saved as model folders (``local-dir:``), so these tests
need no trained weights; test_serve_accuracy.py checks the embedded trained model.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from pathlib import Path

import httpx
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

import gcl_zoo
from gcl_zoo.hub import save_model_folder
from gcl_zoo.prior import adjust_logits, check_prior
from serve.oip import protocol_name
from serve.runner import inference_plan
from serve_images import cifar_test_images, png_header_only, reencode
from server_process import ServerProcess

API_KEY = "test-key-123"
NO_KEY = {"GCL_ZOO_API_KEY": ""}  # the servers without a key must not pick one up from the environment
# the CIFAR-10 test model's implied prior (as if measured on validation data), and deployment priors for it
IMPLIED_10 = [0.16, 0.14, 0.12, 0.11, 0.1, 0.09, 0.08, 0.07, 0.07, 0.06]
REQUEST_PRIOR = [50, 30, 20, 10, 6, 4, 2, 1.5, 1, 0.5]
SERVER_PRIOR = [1, 1, 1, 1, 1, 8, 8, 8, 8, 8]
TRAIN_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    models = {name: timm.create_model(name) for name in ("gcl_resnet32_cifar10_lt", "gcl_resnet32_cifar100_lt")}
    models["gcl_resnet32_cifar10_lt"].implied_prior.copy_(torch.tensor(IMPLIED_10))
    return {name: save_model_folder(model, root / name) for name, model in models.items()}


@pytest.fixture(scope="module")
def model10_id(model_dirs) -> str:
    return f"local-dir:{model_dirs['gcl_resnet32_cifar10_lt']}"


@pytest.fixture(scope="module")
def model100_id(model_dirs) -> str:
    return f"local-dir:{model_dirs['gcl_resnet32_cifar100_lt']}"


@pytest.fixture(scope="module")
def server(model10_id, model100_id):
    """The PyTorch runtime's production configuration (TorchScript on CPU), two models, a wait long enough for
    concurrent requests to meet in batches (the ONNX runtimes: test_serve_runtimes.py)."""
    with ServerProcess(["--model", model10_id, model100_id, "--max-wait-ms", "20", "--runtime", "torch"],
                       env=NO_KEY) as proc:
        yield proc


@pytest.fixture(scope="module")
def http():
    """One client for the module (a fresh ``httpx.post`` builds a TLS context per call)."""
    with httpx.Client(timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def images(cifar10_zip) -> list[tuple]:
    return cifar_test_images(cifar10_zip, per_class=4)


@pytest.fixture(scope="module")
def offline(model10_id):
    """The offline reference: timm's calibrated logits ``model(transform(image))`` with its eval transform, moved to
    a deployment's ``prior`` (a list of class weights; None: the uniform one, the balanced answer) by the library
    against the model's source prior, then through ``function``."""
    model = timm.create_model(model10_id, pretrained=True).eval()
    transform = create_transform(**resolve_model_data_config(model))

    def probabilities(blobs: list[bytes], function: str = "softmax", prior=None) -> torch.Tensor:
        with torch.no_grad():
            x = torch.stack([transform(Image.open(io.BytesIO(data)).convert("RGB")) for data in blobs])
            target = check_prior(prior if prior is not None else [1] * model.num_classes, model.num_classes)
            logits = adjust_logits(model(x), target, model.implied_prior)
        return {"softmax": lambda: logits.softmax(dim=1), "sigmoid": logits.sigmoid, "none": lambda: logits}[function]()

    return model.pretrained_cfg["label_names"], probabilities


# ------------------------------------------------------------------------------------------------------ helpers
def files(*blobs: bytes, kind: str = "image/webp") -> list:
    return [("files", (f"img{i}.bin", blob, kind)) for i, blob in enumerate(blobs)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_same(answer: list, reference: list, tol: float = 1e-5) -> None:
    """Same labels in the same order, scores equal up to float rounding of different batch compositions."""
    assert [p["label"] for p in answer] == [p["label"] for p in reference]
    for got, want in zip(answer, reference):
        assert got["score"] == pytest.approx(want["score"], abs=tol)


def assert_matches_offline(answer: list, probs: torch.Tensor, labels) -> None:
    top = torch.topk(probs, len(answer))
    assert [p["label"] for p in answer] == [labels[i] for i in top.indices.tolist()]
    for got, want in zip(answer, top.values.tolist()):
        assert got["score"] == pytest.approx(want, abs=1e-5)


def prior_answers(http: httpx.Client, url: str, blobs: list[bytes], prior, function: str = "softmax",
                  headers: dict[str, str] = None) -> dict[str, list[list]]:
    """The top-10 answers for ``blobs`` with ``prior`` in each encoding /predict reads: the JSON body's parameters,
    a form field (weights separated by commas) and the query string (a JSON list's text)."""
    words = isinstance(prior, str)
    options = {"top_k": "10", "function_to_apply": function}
    as_json = http.post(url, json={"inputs": [b64(b) for b in blobs], "parameters": {**options, "target_prior": prior}},
                        headers=headers)
    as_form = http.post(url, files=files(*blobs), data={**options, "target_prior": prior if words else
                                                        ",".join(map(str, prior))}, headers=headers)
    as_query = http.post(url, files=files(*blobs), params={**options, "target_prior": prior if words else
                                                           json.dumps(prior)}, headers=headers)
    return {"json": as_json.json(), "form": as_form.json()["predictions"], "query": as_query.json()["predictions"]}


def assert_all_match_offline(answers: dict[str, list[list]], probs: torch.Tensor, labels) -> None:
    for encoding, answer in answers.items():
        assert len(answer) == len(probs), encoding
        for row, one in zip(probs, answer):
            assert_matches_offline(one, row, labels)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (labels given must match; others may be present)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in metrics")


def batch_histogram(text: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'gcl_serve_batch_size_bucket\{model="[^"]*cifar10_lt",'
                                                                r'le="([^"]+)"\} (\S+)', text)}


# ------------------------------------------------------------------------------------------------ basic routes
def test_health_ready_models_docs(http, server, model10_id, model100_id):
    assert http.get(f"{server.url}/health").json() == {"status": "alive", "models": [model10_id, model100_id]}
    assert http.get(f"{server.url}/ready").json() == {"status": "ready", "models": [model10_id, model100_id]}
    listing = http.get(f"{server.url}/models").json()
    assert listing["default"] == model10_id
    first = listing["models"][0]
    assert first["num_classes"] == 10 and first["labels"][0] == "airplane" and first["logit_scale"] == 20.0
    assert first["preprocessing"]["input_size"] == [3, 32, 32] and first["optimization"] == "trace"
    assert first["implied_prior"] == pytest.approx(IMPLIED_10) and first["has_train_class_counts"] is False
    assert first["target_prior"] == "uniform"
    assert (first["inference_streams"], first["threads_per_stream"]) == inference_plan(None, torch.device("cpu"), "trace")
    assert listing["models"][1]["num_classes"] == 100
    spec = http.get(f"{server.url}/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json", "image/jpeg", "image/png", "image/webp",
                         "application/octet-stream"}
    assert spec["paths"]["/"]["post"]["requestBody"] == spec["paths"]["/predict"]["post"]["requestBody"]
    assert "PredictRequest" in spec["components"]["schemas"] and "PredictResponse" in spec["components"]["schemas"]
    lists = spec["components"]["schemas"]["TargetPrior"]["anyOf"][1:]  # one list length per served model's classes
    assert [(o["minItems"], o["maxItems"]) for o in lists] == [(10, 10), (100, 100)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_server(http, server, page):
    """No CDN: every script, style sheet and icon the page names is served by this server (works offline)."""
    html = http.get(f"{server.url}{page}").text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        response = http.get(f"{server.url}{asset}")
        assert response.status_code == 200 and len(response.content) > 100, asset
    assert "/openapi.json" in html


# ------------------------------------------------------------------------------------ predictions equal offline
@pytest.mark.parametrize("fmt", ["WEBP", "PNG", "JPEG"])
def test_prediction_equals_offline_model(http, server, images, offline, fmt):
    labels, probabilities = offline
    blobs = [data if fmt == "WEBP" else reencode(data, fmt, quality=90) for _, data, _ in images[:6]]
    # top_k above the class count gives every class, as Hugging Face's pipelines do
    multipart = http.post(f"{server.url}/predict", files=files(*blobs), data={"top_k": "50"}).json()
    response = http.post(f"{server.url}/predict", json={"inputs": [b64(b) for b in blobs], "parameters": {"top_k": 10}})
    as_json = response.json()  # the Hugging Face task's shape: one [{label, score}] list per input
    assert response.headers["x-model-id"] == multipart["model"] and len(multipart["predictions"]) == len(as_json) == 6
    for probs, answer, answer_json in zip(probabilities(blobs), multipart["predictions"], as_json):
        assert_matches_offline(answer, probs, labels)
        assert_same(answer_json, answer)
        assert sum(p["score"] for p in answer) == pytest.approx(1.0, abs=1e-4)  # all 10 classes: a distribution


def test_resized_input_equals_offline_model(http, server, images, offline):
    """A larger, non-square photo goes through the same resize + centre crop as evaluation."""
    labels, probabilities = offline
    blob = reencode(images[0][1], "JPEG", size=(77, 50), quality=95)
    answer = http.post(f"{server.url}/predict", files=files(blob, kind="image/jpeg")).json()["predictions"][0]
    assert len(answer) == 5
    assert_matches_offline(answer, probabilities([blob])[0], labels)


def test_single_base64_input_data_uri_and_model_choice(http, server, images, model100_id):
    data = images[0][1]
    single = http.post(f"{server.url}/predict", json={"inputs": b64(data), "parameters": {"top_k": 3}}).json()
    assert len(single) == 3 and set(single[0]) == {"label", "score"}  # one input string: one flat list
    scores = [p["score"] for p in single]
    assert scores == sorted(scores, reverse=True)
    uri = http.post(f"{server.url}/predict", json={"inputs": "data:image/webp;base64," + b64(data),
                                                    "parameters": {"top_k": 3}}).json()
    assert_same(uri, single)
    other = http.post(f"{server.url}/predict", files=files(data), data={"model": model100_id}).json()
    assert other["model"] == model100_id
    assert all(p["label"] in gcl_zoo.data.CIFAR100_CLASSES for p in other["predictions"][0])


# ------------------------------------------------------------------------------------ Hugging Face clients
def test_hugging_face_inference_client_at_the_root_and_at_predict(server, images, offline, tmp_path):
    """huggingface_hub's InferenceClient, unmodified, against the real server: raw bytes, a file path, JSON with
    top_k and function_to_apply; the answers are the task's [{label, score}] list and equal the offline model."""
    from huggingface_hub import InferenceClient

    labels, probabilities = offline
    jpeg = reencode(images[3][1], "JPEG", quality=92)
    path = tmp_path / "image.jpg"
    path.write_bytes(jpeg)
    for url in (server.url, f"{server.url}/predict"):
        client = InferenceClient(model=url)
        for image in (jpeg, path):
            answer = [{"label": e.label, "score": e.score} for e in client.image_classification(image)]
            assert_matches_offline(answer, probabilities([jpeg])[0], labels)
        for function in ("softmax", "sigmoid", "none"):
            elements = client.image_classification(jpeg, top_k=3, function_to_apply=function)
            answer = [{"label": e.label, "score": e.score} for e in elements]
            assert len(answer) == 3
            assert_matches_offline(answer, probabilities([jpeg], function)[0], labels)
    called = InferenceClient().image_classification(jpeg, model=server.url)  # the endpoint given per call
    assert [e.label for e in called] == [e.label for e in InferenceClient(model=server.url).image_classification(jpeg)]


@pytest.mark.parametrize("kind", ["image/jpeg", "image/png", "image/webp", "application/octet-stream"])
def test_raw_image_bodies_as_endpoints_and_torchserve_take_them(http, server, images, offline, kind):
    labels, probabilities = offline
    fmt = {"image/jpeg": "JPEG", "image/png": "PNG"}.get(kind)
    blob = reencode(images[5][1], fmt, quality=90) if fmt else images[5][1]
    response = http.post(f"{server.url}/predict", content=blob, headers={"content-type": kind},
                         params={"top_k": 4, "function_to_apply": "softmax"})
    assert response.status_code == 200, response.text
    assert_matches_offline(response.json(), probabilities([blob])[0], labels)
    refused = http.post(f"{server.url}/predict", content=blob, headers={"content-type": kind}, params={"topk": 4})
    assert refused.status_code == 422 and "topk" in refused.json()["error"]
    empty = http.post(f"{server.url}/predict", content=b"", headers={"content-type": kind})
    assert empty.status_code == 422 and "empty" in empty.json()["error"]


def test_query_parameters_apply_to_every_body_and_the_body_wins(http, server, images):
    """The document lists top_k, function_to_apply and model as /predict's query parameters for every body."""
    url, blob = f"{server.url}/predict", images[0][1]
    from_query = http.post(url, files=files(blob), params={"top_k": 2, "function_to_apply": "none"}).json()
    assert len(from_query["predictions"][0]) == 2 and from_query["predictions"][0][0]["score"] > 1  # scaled logits
    body_wins = http.post(url, json={"inputs": b64(blob), "parameters": {"top_k": 3}}, params={"top_k": 2})
    assert len(body_wins.json()) == 3
    bad = http.post(url, json={"inputs": b64(blob)}, params={"top_k": 0})
    assert bad.status_code == 422 and "top_k" in bad.json()["error"]


# ---------------------------------------------------------------------------------- the deployment's class prior
def test_default_and_uniform_target_prior_give_the_balanced_answer(http, server, images, offline):
    labels, probabilities = offline
    url, blobs = f"{server.url}/predict", [data for _, data, _ in images[:4]]
    calibrated = probabilities(blobs)
    by_default = http.post(url, files=files(*blobs), data={"top_k": "10"}).json()["predictions"]
    equal_weights = prior_answers(http, url, blobs, [3] * 10)
    assert_all_match_offline({"default": by_default, **prior_answers(http, url, blobs, "uniform"),
                              **{f"{k}, equal weights": v for k, v in equal_weights.items()}}, calibrated, labels)
    body_wins = http.post(url, json={"inputs": [b64(b) for b in blobs], "parameters": {"top_k": 10,
                                                                                      "target_prior": "uniform"}},
                          params={"target_prior": json.dumps(REQUEST_PRIOR)}).json()
    assert_all_match_offline({"body over query": body_wins}, calibrated, labels)


@pytest.mark.parametrize("function", ["softmax", "sigmoid", "none"])
def test_target_prior_moves_the_scores_as_the_library_does(http, server, images, offline, function):
    """softmax(logits + log pi - log q), q the model's implied prior, before the output function: every encoding
    answers what gcl_zoo.prior computes offline on the same images."""
    labels, probabilities = offline
    blobs = [data for _, data, _ in images[:4]]
    expected = probabilities(blobs, function, REQUEST_PRIOR)
    assert not torch.allclose(expected, probabilities(blobs, function), atol=1e-2)
    assert_all_match_offline(prior_answers(http, f"{server.url}/predict", blobs, REQUEST_PRIOR, function), expected,
                             labels)


def test_open_inference_protocol_takes_target_prior(http, server, images, offline, model10_id):
    labels, probabilities = offline
    blobs = [data for _, data, _ in images[:3]]
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "data": [b64(b) for b in blobs]}],
               "parameters": {"top_k": 3, "target_prior": REQUEST_PRIOR}}
    answer = http.post(f"{server.url}/v2/models/{protocol_name(model10_id)}/infer", json=request).json()
    outputs = {output["name"]: output["data"] for output in answer["outputs"]}
    expected = probabilities(blobs, prior=REQUEST_PRIOR)
    assert torch.allclose(torch.tensor(outputs["probabilities"]).view(3, 10), expected, atol=1e-5)
    assert outputs["labels"] == [labels[i] for row in expected.topk(3, dim=1).indices.tolist() for i in row]


# ------------------------------------------------------------------------- KServe / Triton: Open Inference Protocol
def test_open_inference_protocol_with_the_triton_client(server, images, offline, model10_id, model100_id):
    """tritonclient[http], unmodified: health, metadata, and inference from encoded images (BYTES) and from
    pre-processed tensors (FP32), in the binary tensor extension (its default) and in plain JSON."""
    import numpy as np
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    labels, probabilities = offline
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    name = protocol_name(model10_id)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    assert client.is_model_ready(protocol_name(model100_id))
    meta = client.get_model_metadata(name)
    assert [i["name"] for i in meta["inputs"]] == ["image", "input"] and meta["outputs"][0]["shape"] == [-1, 10]
    blobs = [data for _, data, _ in images[:3]]
    expected = probabilities(blobs)
    model = timm.create_model(model10_id, pretrained=True)
    transform = create_transform(**resolve_model_data_config(model))
    tensor = torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]).numpy()
    for binary in (True, False):
        image = triton.InferInput("image", [3], "BYTES")
        image.set_data_from_numpy(np.array(blobs if binary else [b64(b) for b in blobs], dtype=object),
                                  binary_data=binary)
        pre = triton.InferInput("input", list(tensor.shape), "FP32")
        pre.set_data_from_numpy(tensor, binary_data=binary)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "labels")]
        for given in (image, pre):
            result = client.infer(name, [given], outputs=outputs, parameters={"top_k": 3}, request_id="r1")
            probs = result.as_numpy("probabilities")
            assert probs.shape == (3, 10) and np.allclose(probs, expected.numpy(), atol=1e-5)
            top = [[labels[i] for i in row] for row in expected.topk(3, dim=1).indices.tolist()]
            as_text = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in result.as_numpy("labels")]
            assert as_text == top
            assert result.get_response()["id"] == "r1"
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("resnet9000", [image])
    wrong = triton.InferInput("input", [1, 3, 16, 16], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 16, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"takes \[N, 3, 32, 32\]"):
        client.infer(name, [wrong])


def test_open_inference_protocol_errors_are_its_json_errors(http, server, images, model10_id):
    url = f"{server.url}/v2/models/{protocol_name(model10_id)}/infer"
    good = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(images[0][1])]}
    cases = [
        (dict(content=b"{", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(json={"inputs": []}), 400, "'inputs' list"),
        (dict(json={"inputs": [good, good]}), 400, "exactly one input"),
        (dict(json={"inputs": [{**good, "name": "pixels"}]}), 400, "unknown input 'pixels'"),
        (dict(json={"inputs": [good], "outputs": [{"name": "logits"}]}), 400, "unknown output 'logits'"),
        (dict(json={"inputs": [{**good, "data": ["%%%"]}]}), 422, "image[0] is not valid base64"),
        (dict(json={"inputs": [{**good, "data": [b64(b"text")]}]}), 422, "not an image"),
        (dict(json={"inputs": [good], "parameters": {"top_k": 0}}), 422, "top_k"),
        (dict(json={"inputs": [good], "parameters": {"target_prior": [1, 2]}}), 422, "2 weights but the model has 10"),
        (dict(json={"inputs": [good], "parameters": {"target_prior": "balanced"}}), 422, '"balanced"'),
        (dict(json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0]}]}),
         400, "holds 1 values"),
        (dict(content=b'{"inputs": []}', headers={"content-type": "application/json",
                                                 "Inference-Header-Content-Length": "999"}), 400, "does not fit"),
    ]
    failures = []
    for kwargs, status, phrase in cases:
        response = http.post(url, **kwargs)
        if response.status_code != status or phrase not in response.json().get("error", ""):
            failures.append(f"{kwargs}: {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    assert http.post(f"{server.url}/v2/models/nope/infer", json={"inputs": [good]}).status_code == 404


# -------------------------------------------------------------------------------------------------- concurrency
def test_concurrent_clients_get_single_request_answers_in_batches(http, server, images):
    """32 clients x 10 requests: every request answered, equal to its single-request answer, batched."""
    blobs = [data for _, data, _ in images[:32]]
    alone = [http.post(f"{server.url}/predict", files=files(b)).json()["predictions"][0] for b in blobs]
    before = batch_histogram(http.get(f"{server.url}/metrics").text)

    async def client(i: int, http: httpx.AsyncClient) -> list[list]:
        answers = []
        for _ in range(10):
            response = await http.post(f"{server.url}/predict", files=files(blobs[i]))
            assert response.status_code == 200, response.text
            answers.append(response.json()["predictions"][0])
        return answers

    async def run_all() -> list[list[list]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as http:
            return await asyncio.gather(*(client(i, http) for i in range(32)))

    results = asyncio.run(run_all())
    assert sum(len(r) for r in results) == 320
    for i, answers in enumerate(results):
        for answer in answers:
            assert_same(answer, alone[i])
    after = batch_histogram(http.get(f"{server.url}/metrics").text)
    batched = (after["+Inf"] - after["1"]) - (before["+Inf"] - before["1"])
    assert batched > 0, f"no batch of more than one image was formed: {after}"


def test_metrics_exposition(http, server, images, model10_id):
    http.post(f"{server.url}/predict", files=files(images[0][1]))
    text = http.get(f"{server.url}/metrics").text
    assert metric_value(text, "gcl_serve_requests_total", endpoint="/predict", status="200") >= 1
    assert metric_value(text, "gcl_serve_request_duration_seconds_count", endpoint="/predict") >= 1
    assert metric_value(text, "gcl_serve_queue_depth", model=model10_id) == 0
    assert metric_value(text, "gcl_serve_images_per_second", model=model10_id) > 0
    assert metric_value(text, "gcl_serve_images_total", model=model10_id) >= 1
    assert "# TYPE gcl_serve_batch_size histogram" in text


def test_a_v2_request_with_a_bad_parameter_classifies_nothing(http, server, images, model10_id):
    """Every check happens before an image is decoded: a v2 request with top_k 0 (or a prior of the wrong length)
    is refused without a batch running."""
    url = f"{server.url}/v2/models/{protocol_name(model10_id)}/infer"
    good = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(images[0][1])]}
    assert http.post(url, json={"inputs": [good]}).status_code == 200
    before = metric_value(http.get(f"{server.url}/metrics").text, "gcl_serve_images_total", model=model10_id)
    for parameters in ({"top_k": 0}, {"target_prior": [1, 2]}):
        refused = http.post(url, json={"inputs": [good], "parameters": parameters})
        assert refused.status_code == 422, refused.text
    after = metric_value(http.get(f"{server.url}/metrics").text, "gcl_serve_images_total", model=model10_id)
    assert after == before


def test_early_refusals_are_counted_under_their_route_template(http, server, model10_id):
    """A body over the limit is refused before routing; its 413 is counted under the v2 route's template, not as
    'unmatched'."""
    url = f"{server.url}/v2/models/{protocol_name(model10_id)}/infer"
    refused = http.post(url, content=b"\0" * (11 * 2 ** 20), headers={"content-type": "application/json"})
    assert refused.status_code == 413
    text = http.get(f"{server.url}/metrics").text
    assert metric_value(text, "gcl_serve_requests_total", endpoint="/v2/models/{name}/infer", status="413") >= 1
    assert 'endpoint="unmatched",status="413"' not in text


# ---------------------------------------------------------------------------------------------------- bad input
def bad_requests(images, model10_id) -> list:
    """(description, request kwargs, expected status, a phrase the error must contain)."""
    webp = images[0][1]
    jpeg = reencode(webp, "JPEG", size=(256, 256), quality=90)
    too_many = [("files", (f"i{i}.webp", webp, "image/webp")) for i in range(65)]

    def prior(value) -> dict:
        return dict(json={"inputs": b64(webp), "parameters": {"target_prior": value}})

    def prior_token(token: str) -> dict:  # NaN, Infinity: what Python's JSON reads though no JSON encoder writes it
        body = f'{{"inputs": "{b64(webp)}", "parameters": {{"target_prior": [{token}, 1, 1, 1, 1, 1, 1, 1, 1, 1]}}}}'
        return dict(content=body.encode(), headers={"content-type": "application/json"})

    return [
        ("not an image", dict(files=[("files", ("notes.png", b"hello, not pixels", "image/png"))]), 422, "notes.png"),
        ("truncated jpeg", dict(files=[("files", ("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"))]), 422, "cut.jpg"),
        ("text part", dict(files=[("files", ("a.txt", webp, "text/plain"))]), 415, "text/plain"),
        ("ppm format", dict(files=[("files", ("a.ppm", reencode(webp, "PPM"), "image/x-portable-pixmap"))]), 415, "PPM"),
        ("text body", dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "text/plain"),
        ("untyped body that is no image", dict(content=b"hello"), 422, "the request body is not an image"),
        ("body over 10 MB", dict(files=files(b"\0" * (11 * 2 ** 20))), 413, "10 MB"),
        ("chunked body over 10 MB", dict(content=iter([b"\0" * 2 ** 20] * 11),
                                         headers={"content-type": "application/json"}), 413, "10 MB"),
        ("65 files", dict(files=too_many), 413, "64"),
        ("65 base64 images", dict(json={"inputs": [b64(webp)] * 65}), 413, "65 images"),
        ("pixel bomb", dict(files=[("files", ("bomb.png", png_header_only(8000, 8000), "image/png"))]), 413, "bomb.png"),
        ("huge pixel bomb", dict(files=[("files", ("big.png", png_header_only(30000, 30000), "image/png"))]), 413,
         "big.png"),
        ("no images", dict(files=[("model", (None, model10_id))]), 422, "no image"),
        ("bad base64", dict(json={"inputs": "not*base64!"}), 422, "base64"),
        ("bad base64 in list", dict(json={"inputs": [b64(webp), "%%%"]}), 422, "inputs[1]"),
        ("base64 of text", dict(json={"inputs": b64(b"plain text")}), 422, "not an image"),
        ("bad json", dict(content=b'{"inputs": ', headers={"content-type": "application/json"}), 422, "JSON"),
        ("json without inputs", dict(json={"images": [b64(webp)]}), 422, "inputs"),
        ("top_k zero", dict(json={"inputs": b64(webp), "parameters": {"top_k": 0}}), 422, "top_k"),
        ("top_k not a number", dict(files=files(webp), data={"top_k": "many"}), 422, "top_k"),
        ("unknown form field", dict(files=files(webp), data={"topk": "3"}), 422, "topk"),
        ("unknown model", dict(json={"inputs": b64(webp), "model": "resnet9000"}), 404, "resnet9000"),
        ("unknown output function", dict(json={"inputs": b64(webp), "parameters": {"function_to_apply": "max"}}), 422,
         "function_to_apply"),
        ("unknown output function in a form", dict(files=files(webp), data={"function_to_apply": "max"}), 422,
         "function_to_apply"),
        ("prior of the wrong length", prior([1, 2, 3]), 422, "3 weights but the model has 10 classes"),
        ("negative prior weight", prior([1] * 9 + [-1]), 422, "weight for class 9 is negative"),
        ("all-zero prior", prior([0] * 10), 422, "all zero"),
        ("NaN prior weight", prior_token("NaN"), 422, "NaN"),
        ("infinite prior weight", prior_token("Infinity"), 422, "infinite"),
        ("prior that is no list", prior(5), 422, "not 'uniform', 'train', 'estimated' or a list of class weights"),
        ("unknown prior word", prior("balanced"), 422, '"balanced"'),
        ("train prior without class counts", prior("train"), 422, "does not know its training class counts"),
        ("prior of the wrong length in a form", dict(files=files(webp), data={"target_prior": "1,2"}), 422,
         "2 weights"),
        ("negative prior weight in the query", dict(files=files(webp), params={"target_prior": "1,-2"}), 422,
         "'1,-2'"),
    ]


def test_bad_inputs_answer_json_errors_and_the_server_keeps_serving(http, server, images, model10_id):
    failures = []
    for description, kwargs, status, phrase in bad_requests(images, model10_id):
        response = http.post(f"{server.url}/predict", timeout=60, **kwargs)
        body = response.json()
        if response.status_code != status or phrase not in body.get("error", ""):
            failures.append(f"{description}: {response.status_code} {body}")
    assert not failures, "\n".join(failures)
    assert http.get(f"{server.url}/ready").status_code == 200
    assert http.post(f"{server.url}/predict", files=files(images[0][1])).status_code == 200
    text = http.get(f"{server.url}/metrics").text
    assert metric_value(text, "gcl_serve_requests_total", endpoint="/predict", status="413") >= 6


def test_unknown_path_is_a_json_404(http, server):
    response = http.get(f"{server.url}/nothing-here")
    assert response.status_code == 404 and "error" in response.json()


# ----------------------------------------------------------------------------- API key, overload and timeouts
@pytest.fixture(scope="module")
def small_server(model10_id, tmp_path_factory):
    """Eager model, a queue of 8 images, an API key from the environment, a server-wide deployment prior from a
    file mapping model ids to priors."""
    priors = tmp_path_factory.mktemp("priors") / "priors.json"
    priors.write_text(json.dumps({model10_id: SERVER_PRIOR}))
    args = ["--model", model10_id, "--optimize", "eager", "--max-queue", "8", "--max-images", "8",
            "--max-batch-size", "8", "--api-key-env", "TEST_SERVE_KEY", "--target-prior", str(priors)]
    with ServerProcess(args, env={"TEST_SERVE_KEY": API_KEY}) as proc:
        yield proc


def test_api_key(http, small_server, images):
    url, body = f"{small_server.url}/predict", files(images[0][1])
    missing = http.post(url, files=body)
    assert missing.status_code == 401 and "API key" in missing.json()["error"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = http.post(url, files=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]
    assert http.post(url, files=body, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert http.post(url, files=body, headers={"X-API-Key": API_KEY}).status_code == 200
    assert http.get(f"{small_server.url}/ready").status_code == 200  # probes stay open
    models = http.get(f"{small_server.url}/models").json()["models"]
    infer = f"{small_server.url}/v2/models/{protocol_name(models[0]['id'])}/infer"
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(images[0][1])]}]}
    assert http.post(infer, json=request).status_code == 401  # the v2 protocol takes the same key
    assert http.post(infer, json=request, headers={"X-API-Key": API_KEY}).status_code == 200
    assert http.get(f"{small_server.url}/v2/health/ready").json() == {"ready": True}


def test_server_wide_target_prior_applies_and_a_request_overrides_it(http, small_server, images, offline):
    labels, probabilities = offline
    url, headers = f"{small_server.url}/predict", {"X-API-Key": API_KEY}
    blobs = [data for _, data, _ in images[:4]]
    by_default = http.post(url, files=files(*blobs), data={"top_k": "10"}, headers=headers).json()["predictions"]
    assert_all_match_offline({"default": by_default}, probabilities(blobs, prior=SERVER_PRIOR), labels)
    assert_all_match_offline(prior_answers(http, url, blobs, "uniform", headers=headers), probabilities(blobs), labels)
    assert_all_match_offline(prior_answers(http, url, blobs, REQUEST_PRIOR, headers=headers),
                             probabilities(blobs, prior=REQUEST_PRIOR), labels)
    described = http.get(f"{small_server.url}/models").json()["models"][0]
    assert described["target_prior"] == SERVER_PRIOR
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [4], "data": [b64(b) for b in blobs]}]}
    answer = http.post(f"{small_server.url}/v2/models/{protocol_name(described['id'])}/infer", json=request,
                       headers=headers).json()
    served = torch.tensor(answer["outputs"][0]["data"]).view(4, 10)
    assert torch.allclose(served, probabilities(blobs, prior=SERVER_PRIOR), atol=1e-5)


def test_overload_answers_503_never_hangs_and_recovers(http, small_server, images):
    """64 simultaneous 8-image requests against a queue of 8 images: each is answered 200 or 503."""
    body = [("files", (f"{i}.webp", data, "image/webp")) for i, (_, data, _) in enumerate(images[:8])]
    headers = {"X-API-Key": API_KEY}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:
            return await asyncio.gather(*(http.post(f"{small_server.url}/predict", files=body, headers=headers)
                                          for _ in range(64)))

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) > 0 and statuses.count(200) > 0, statuses
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1 and "overloaded" in response.json()["error"]
        else:
            assert len(response.json()["predictions"]) == 8
    after = http.post(f"{small_server.url}/predict", files=body, headers=headers)
    assert after.status_code == 200 and len(after.json()["predictions"]) == 8
    text = http.get(f"{small_server.url}/metrics").text
    assert metric_value(text, "gcl_serve_requests_total", endpoint="/predict", status="503") == statuses.count(503)


def test_request_that_waits_too_long_answers_504(http, model10_id, images):
    """A batch that waits 3 s to fill up outlasts a 0.5 s request timeout; the server stays ready."""
    args = ["--model", model10_id, "--optimize", "eager", "--max-wait-ms", "3000", "--request-timeout-s", "0.5"]
    with ServerProcess(args, env=NO_KEY) as proc:
        response = http.post(f"{proc.url}/predict", files=files(images[0][1]), timeout=30)
        assert response.status_code == 504 and "0.5 s" in response.json()["error"]
        assert http.get(f"{proc.url}/ready").status_code == 200


@pytest.fixture(scope="module")
def counted_model10_id(model10_id, tmp_path_factory) -> str:
    """The CIFAR-10 test model with its training class counts, saved as a model folder."""
    model = timm.create_model(model10_id, pretrained=True)
    model.train_class_counts.copy_(torch.tensor(TRAIN_COUNTS))
    return f"local-dir:{save_model_folder(model, tmp_path_factory.mktemp('counted') / 'model')}"


def test_train_prior_is_the_models_training_class_counts(http, counted_model10_id, images, offline):
    """--target-prior train as the server-wide default, and "train" in a request."""
    labels, probabilities = offline
    blobs = [data for _, data, _ in images[:4]]
    args = ["--model", counted_model10_id, "--optimize", "eager", "--target-prior", "train"]
    with ServerProcess(args, env=NO_KEY) as server:
        url = f"{server.url}/predict"
        described = http.get(f"{server.url}/models").json()["models"][0]
        assert described["has_train_class_counts"] is True and described["target_prior"] == "train"
        by_default = http.post(url, files=files(*blobs), data={"top_k": "10"}).json()["predictions"]
        trained = probabilities(blobs, prior=TRAIN_COUNTS)
        assert_all_match_offline({"default": by_default, **prior_answers(http, url, blobs, "train")}, trained, labels)
        assert_all_match_offline(prior_answers(http, url, blobs, "uniform"), probabilities(blobs), labels)


def test_server_wide_prior_that_does_not_fit_the_model_stops_the_server(model10_id, tmp_path):
    prior = tmp_path / "prior.json"
    prior.write_text("[1, 2, 3]")
    with pytest.raises(RuntimeError, match="exited with code 1") as failure:
        ServerProcess(["--model", model10_id, "--optimize", "eager", "--target-prior", str(prior)], env=NO_KEY).start()
    assert f"--target-prior for {model10_id}: the class prior has 3 weights but the model has 10" in str(failure.value)


def test_model_that_cannot_load_stops_the_server_with_a_message(tmp_path):
    with pytest.raises(RuntimeError, match="exited with code 1") as failure:
        ServerProcess(["--model", f"local-dir:{tmp_path / 'missing'}", "--optimize", "eager"]).start()
    assert "could not load the models" in str(failure.value)
