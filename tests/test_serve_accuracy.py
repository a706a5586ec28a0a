"""The embedded default model, served over HTTP, classifies real CIFAR-10 test images with the accuracy its
model card states (``gcl_zoo/weights/gcl_resnet32_cifar10_lt.ir100.json``, measured on all 10,000 images)."""
from __future__ import annotations

import base64
import json
import math

import httpx
import pytest

from gcl_zoo.models.zoo import WEIGHTS_DIR
from server_process import ServerProcess
from serve_images import CLASSES, cifar_test_images

CARD = WEIGHTS_DIR / "gcl_resnet32_cifar10_lt.ir100.json"
WEIGHTS = WEIGHTS_DIR / "gcl_resnet32_cifar10_lt.ir100.safetensors"
REQUEST_SIZE = 50


@pytest.fixture(scope="module")
def stated_top1() -> float:
    assert CARD.is_file() and WEIGHTS.is_file(), "the embedded default weights must ship in gcl_zoo/weights/"
    return float(json.loads(CARD.read_text())["top1"])


@pytest.fixture(scope="module")
def default_server(stated_top1):
    with ServerProcess([], env={"GCL_ZOO_API_KEY": ""}) as proc:  # no --model: the embedded default
        yield proc


def classify(url: str, images: list, as_base64: bool) -> list:
    """Top-1 label per image, sending ``REQUEST_SIZE`` images per request."""
    labels = []
    with httpx.Client(timeout=120) as http:
        for start in range(0, len(images), REQUEST_SIZE):
            chunk = [data for _, data, _ in images[start:start + REQUEST_SIZE]]
            if as_base64:
                response = http.post(f"{url}/predict", json={"inputs": [base64.b64encode(d).decode() for d in chunk],
                                                              "parameters": {"top_k": 1}})
            else:
                response = http.post(f"{url}/predict", data={"top_k": "1"},
                                     files=[("files", (f"{i}.webp", d, "image/webp")) for i, d in enumerate(chunk)])
            assert response.status_code == 200, response.text
            answer = response.json()  # JSON: the Hugging Face task's list per image; multipart: the envelope
            labels += [p[0]["label"] for p in (answer if as_base64 else answer["predictions"])]
    return labels


def check_accuracy(url: str, images: list, stated_top1: float, sigmas: float) -> None:
    multipart = classify(url, images, as_base64=False)
    assert classify(url, images, as_base64=True) == multipart  # same bytes, same answers either way
    correct = sum(CLASSES[label] == got for (_, _, label), got in zip(images, multipart))
    accuracy = 100.0 * correct / len(images)
    p = stated_top1 / 100
    tolerance = sigmas * 100 * math.sqrt(p * (1 - p) / len(images)) + 0.05  # sampling error (+ rounding)
    assert abs(accuracy - stated_top1) <= tolerance, (
        f"served accuracy {accuracy:.2f}% on {len(images)} images, model card says {stated_top1:.2f}% "
        f"(allowed +-{tolerance:.2f})")


def test_default_model_accuracy_matches_its_card(default_server, cifar10_zip, stated_top1):
    """300 test images (30 per class, as balanced as the full test set): within 3 standard errors."""
    check_accuracy(default_server.url, cifar_test_images(cifar10_zip, per_class=30), stated_top1, sigmas=3)


@pytest.mark.slow
def test_default_model_accuracy_on_the_full_test_set(default_server, cifar10_zip, stated_top1):
    """All 10,000 test images: the served accuracy is the card's figure (float ties aside)."""
    check_accuracy(default_server.url, cifar_test_images(cifar10_zip, per_class=1000), stated_top1, sigmas=0.5)
