"""Prior streams end to end: ``target_prior: "estimated"`` over HTTP on a real server (the shipped CIFAR-10-LT model,
real CIFAR-10 test images), stream isolation, concurrent requests on one stream, GET/PUT/DELETE of
``/models/{model}/prior`` with the API key, v2, the stream cap, estimation turned off; and the ring in process."""
from __future__ import annotations

import asyncio
import base64
import math

import httpx
import pytest
import torch

from serve.settings import ServeSettings
from serve.streams import PriorStreams
from serve_images import cifar_test_images
from server_process import ServerProcess

MODEL = "gcl_resnet32_cifar10_lt.ir100"
KEY = "stream-key-7"
AUTH = {"X-API-Key": KEY}
WINDOW, MAX_STREAMS = 256, 4
CAT, DOG = 3, 5


@pytest.fixture(scope="module")
def server():
    with ServerProcess(["--model", MODEL, "--runtime", "torch", "--max-wait-ms", "20", "--prior-window", str(WINDOW),
                        "--max-prior-streams", str(MAX_STREAMS)], env={"GCL_ZOO_API_KEY": KEY}) as proc:
        yield proc


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=120, headers=AUTH) as client:
        yield client


@pytest.fixture(scope="module")
def images(cifar10_zip) -> list[tuple]:
    return cifar_test_images(cifar10_zip, per_class=20, start=100)


def predict(http, server, images, **parameters) -> list[list[float]]:
    """The probabilities of every class per image (top_k = all), as ``/predict`` answers them."""
    body = {"inputs": [base64.b64encode(data).decode() for _, data, _ in images],
            "parameters": {"top_k": 10, **parameters}}
    response = http.post(f"{server.url}/predict", json=body)
    assert response.status_code == 200, response.text
    labels = http.get(f"{server.url}/models").json()["models"][0]["labels"]
    return [[{p["label"]: p["score"] for p in row}[label] for label in labels] for row in response.json()]


def stream_state(http, server, name: str) -> httpx.Response:
    return http.get(f"{server.url}/models/{MODEL}/prior", params={"stream": name})


def test_estimated_moves_answers_toward_the_streams_classes(server, http, images):
    pets = [image for image in images if image[2] in (CAT, DOG)]
    probe = [image for image in images if image[2] not in (CAT, DOG)][:40] + pets[:8]
    uniform = predict(http, server, probe, target_prior="uniform")
    for start in range(8, len(pets), 8):  # traffic of cats and dogs only
        predict(http, server, pets[start:start + 8], target_prior="estimated", prior_stream="pets")
    state = stream_state(http, server, "pets").json()
    assert state["images"] == len(pets) - 8 and state["shift"]["shifted"]
    assert state["estimated"][CAT] + state["estimated"][DOG] > 0.5
    estimated = predict(http, server, probe, target_prior="estimated", prior_stream="pets")
    mass = [sum(row[CAT] + row[DOG] for row in scores) for scores in (uniform, estimated)]
    assert mass[1] > 1.2 * mass[0]
    assert stream_state(http, server, "pets").json()["images"] == len(pets) - 8 + len(probe)  # its own included


def test_one_streams_traffic_leaves_anothers_answers_alone(server, http, images):
    probe = images[:16]
    before = predict(http, server, probe, target_prior="estimated", prior_stream="iso")
    before_state = stream_state(http, server, "iso").json()
    dogs = [image for image in images if image[2] == DOG]
    predict(http, server, dogs, target_prior="estimated", prior_stream="dogs")
    assert stream_state(http, server, "iso").json() == before_state
    assert predict(http, server, probe, target_prior="estimated", prior_stream="iso-fresh") == before


def test_concurrent_requests_on_one_stream_all_count(server, images):
    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=120, headers=AUTH) as client:
            body = {"inputs": [base64.b64encode(data).decode() for _, data, _ in images[:8]],
                    "parameters": {"target_prior": "estimated", "prior_stream": "busy"}}
            replies = await asyncio.gather(*(client.post(f"{server.url}/predict", json=body) for _ in range(20)))
            return [reply.status_code for reply in replies]

    assert asyncio.run(run()) == [200] * 20
    with httpx.Client() as client:
        state = stream_state(client, server, "busy").json()
    assert state["images"] == 160 and state["window"] == WINDOW


def test_put_get_delete_with_the_api_key(server, http, images):
    url = f"{server.url}/models/{MODEL}/prior"
    prior = [1.0] * 10
    prior[7] = 200.0
    assert httpx.put(url, params={"stream": "ops"}, json={"prior": prior}).status_code == 401
    put = http.put(url, params={"stream": "ops"}, json={"prior": prior})
    assert put.status_code == 200, put.text
    state = put.json()
    assert state["images"] == 0 and state["put_images"] == WINDOW and state["shift"]["shifted"]
    assert state["estimated"] == pytest.approx([p / sum(prior) for p in prior])
    assert httpx.get(url, params={"stream": "ops"}).json() == state  # reading needs no key
    horses = [sum(max(range(10), key=row.__getitem__) == 7 for row in predict(http, server, images[:20], **asked))
              for asked in ({"target_prior": "uniform"}, {"target_prior": "estimated", "prior_stream": "ops"})]
    assert horses[1] >= horses[0] + 4
    after = stream_state(http, server, "ops").json()
    assert after["images"] == 20 and after["put_images"] == WINDOW - 20 and after["estimated"][7] > 0.5
    assert httpx.delete(url, params={"stream": "ops"}).status_code == 401
    assert http.delete(url, params={"stream": "ops"}).json()["images"] == 20
    assert stream_state(http, server, "ops").status_code == 404


@pytest.mark.parametrize("call, status, phrase", [
    (lambda h, u: h.get(u, params={"stream": "never-used"}), 404, "no prior stream 'never-used'"),
    (lambda h, u: h.delete(u, params={"stream": "never-used"}), 404, "no prior stream 'never-used'"),
    (lambda h, u: h.get(u.replace(MODEL, "nope")), 404, "unknown model 'nope'"),
    (lambda h, u: h.get(u, params={"stream": "bad name!"}), 422, "stream"),
    (lambda h, u: h.put(u, json={"prior": [1.0] * 9}), 422, "9 weights but the model has 10"),
    (lambda h, u: h.put(u, json={"prior": [1.0] * 9 + [-1.0]}), 422, "negative"),
    (lambda h, u: h.put(u, content="{\"prior\": [NaN, 1, 1, 1, 1, 1, 1, 1, 1, 1]}",
                        headers={"content-type": "application/json"}), 422, "NaN"),
    (lambda h, u: h.put(u, json={"prior": [0.0] * 10}), 422, "all zero"),
])
def test_bad_stream_calls_are_refused_by_name(server, http, call, status, phrase):
    response = call(http, f"{server.url}/models/{MODEL}/prior")
    assert response.status_code == status and phrase in response.json()["error"], response.text


def test_a_bad_stream_name_in_a_request_is_refused(server, http, images):
    body = {"inputs": [base64.b64encode(images[0][1]).decode()],
            "parameters": {"target_prior": "estimated", "prior_stream": "x" * 65}}
    response = http.post(f"{server.url}/predict", json=body)
    assert response.status_code == 422 and "prior_stream" in response.json()["error"]


def test_v2_takes_the_estimated_prior_and_its_stream(server, http, images):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [12],
                        "data": [base64.b64encode(data).decode() for _, data, _ in images[:12]]}],
            "parameters": {"target_prior": "estimated", "prior_stream": "v2-stream"}}
    response = http.post(f"{server.url}/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200, response.text
    probabilities = next(o for o in response.json()["outputs"] if o["name"] == "probabilities")["data"]
    assert math.isclose(sum(probabilities[:10]), 1.0, rel_tol=1e-4)
    assert stream_state(http, server, "v2-stream").json()["images"] == 12


def test_the_least_recently_used_stream_is_dropped_at_the_cap(server, http, images):
    names = [f"cap-{i}" for i in range(MAX_STREAMS + 1)]
    for name in names:
        predict(http, server, images[:2], target_prior="estimated", prior_stream=name)
    assert stream_state(http, server, names[0]).status_code == 404
    assert all(stream_state(http, server, name).status_code == 200 for name in names[1:])
    metrics = http.get(f"{server.url}/metrics").text
    assert f'gcl_serve_prior_stream_images{{model="{MODEL}",stream="cap-1"}} 2' in metrics
    assert f'gcl_serve_prior_stream_shift{{model="{MODEL}",stream="cap-1"}}' in metrics
    dropped = [line for line in metrics.splitlines() if line.startswith("gcl_serve_prior_streams_dropped_total{")]
    assert dropped and float(dropped[0].rsplit(" ", 1)[1]) >= 1


def test_estimated_with_the_window_off_names_the_flag(images):
    with ServerProcess(["--model", MODEL, "--runtime", "torch", "--prior-window", "0"],
                       env={"GCL_ZOO_API_KEY": ""}) as off, httpx.Client(timeout=60) as client:
        body = {"inputs": [base64.b64encode(images[0][1]).decode()], "parameters": {"target_prior": "estimated"}}
        refused = client.post(f"{off.url}/predict", json=body)
        assert refused.status_code == 422 and "--prior-window" in refused.json()["error"]
        read = client.get(f"{off.url}/models/{MODEL}/prior")
        assert read.status_code == 422 and "--prior-window" in read.json()["error"]
        assert client.post(f"{off.url}/predict", json={**body, "parameters": {}}).status_code == 200


def test_estimated_by_default_needs_a_window():
    with pytest.raises(ValueError, match="--prior-window"):
        ServeSettings(target_prior="estimated", prior_window=0)
    assert ServeSettings(target_prior="estimated").target_prior_for(ServeSettings().models[0]) == "estimated"


# ------------------------------------------------------------------------------------------------------- in process
def test_the_ring_keeps_the_last_window_and_a_put_prior_is_replaced_image_by_image():
    streams = PriorStreams(window=8, max_streams=2, source=torch.full((4,), 0.25, dtype=torch.float64))
    stream, _ = streams.add("s", torch.zeros(5, 4))
    assert (stream.images, stream.filled) == (5, 5)
    streams.add("s", torch.eye(4)[[2] * 6] * 20)
    assert stream.images == 8 and int((stream.rows.argmax(dim=1) == 2).sum()) == 6  # the oldest 3 went
    stream = streams.put("s", [0.0, 1.0, 0.0, 3.0])
    assert stream.put_images == 8 and streams.refresh(stream).prior.tolist() == [0.0, 0.25, 0.0, 0.75]
    assert stream.rows.sum(dim=0).tolist() == [0.0, 2.0, 0.0, 6.0]
    streams.add("s", torch.eye(4)[[0] * 3] * 20)
    assert (stream.images, stream.put_images) == (3, 5)
    streams.add("s", torch.eye(4)[[0] * 5] * 20)
    assert (stream.images, stream.put_images) == (8, 0) and streams.refresh(stream).prior.argmax() == 0
