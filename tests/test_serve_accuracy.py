"""Zoo models, served over HTTP, classify real CIFAR test images with the accuracy their model cards state (the JSON
beside the weights in ``gcl_zoo/weights/``, measured on all 10,000 test images): the embedded default model
(CIFAR-10) and the CIFAR-100 entry, which answers with CIFAR-100's label names."""
from __future__ import annotations

import base64
import json
import math

import httpx
import pytest
import torch

from gcl_zoo.calibration import confidence_bins, ece_of_bins
from gcl_zoo.data import CIFAR10_CLASSES, CIFAR100_CLASSES
from gcl_zoo.models.weights import WEIGHTS_DIR
from serve_images import cifar_test_images
from server_process import ServerProcess

REQUEST_SIZE = 50


def card_top1(name: str) -> float:
    """The top-1 accuracy the shipped checkpoint's JSON (and so its model card) states."""
    card, weights = WEIGHTS_DIR / f"{name}.json", WEIGHTS_DIR / f"{name}.safetensors"
    assert card.is_file() and weights.is_file(), f"{name} must ship in gcl_zoo/weights/"
    return float(json.loads(card.read_text())["top1"])


@pytest.fixture(scope="module")
def stated_top1() -> float:
    return card_top1("gcl_resnet32_cifar10_lt.ir100")


@pytest.fixture(scope="module")
def default_server(stated_top1):
    with ServerProcess([], env={"GCL_ZOO_API_KEY": ""}) as proc:  # no --model: the embedded default
        yield proc


def classify(url: str, images: list, as_base64: bool) -> list:
    """Top-1 label per image, sending ``REQUEST_SIZE`` images per request."""
    return [label for label, _ in classify_scored(url, images, as_base64)]


def classify_scored(url: str, images: list, as_base64: bool) -> list:
    """Top-1 (label, score) per image, sending ``REQUEST_SIZE`` images per request."""
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
            labels += [(p[0]["label"], p[0]["score"]) for p in (answer if as_base64 else answer["predictions"])]
    return labels


def check_accuracy(url: str, images: list, stated_top1: float, sigmas: float, classes=CIFAR10_CLASSES) -> None:
    multipart = classify(url, images, as_base64=False)
    assert classify(url, images, as_base64=True) == multipart  # same bytes, same answers either way
    assert set(multipart) <= set(classes), "answers must be the data set's label names"
    correct = sum(classes[label] == got for (_, _, label), got in zip(images, multipart))
    accuracy = 100.0 * correct / len(images)
    p = stated_top1 / 100
    tolerance = sigmas * 100 * math.sqrt(p * (1 - p) / len(images)) + 0.05  # sampling error (+ rounding)
    assert abs(accuracy - stated_top1) <= tolerance, (
        f"served accuracy {accuracy:.2f}% on {len(images)} images, model card says {stated_top1:.2f}% "
        f"(allowed +-{tolerance:.2f})")


def test_default_model_accuracy_matches_its_card(default_server, cifar10_zip, stated_top1):
    """300 test images (30 per class, as balanced as the full test set): within 3 standard errors."""
    check_accuracy(default_server.url, cifar_test_images(cifar10_zip, per_class=30), stated_top1, sigmas=3)


def test_cifar100_model_answers_with_cifar100_labels_at_its_card_accuracy(cifar100_zip):
    """``--model gcl_resnet32_cifar100_lt`` (the .ir100 default tag, shipped in the package): 500 test images, 5 per
    class, answered with CIFAR-100's fine label names, within 3 standard errors of its card."""
    stated = card_top1("gcl_resnet32_cifar100_lt.ir100")
    images = cifar_test_images(cifar100_zip, per_class=5, classes=CIFAR100_CLASSES)
    with ServerProcess(["--model", "gcl_resnet32_cifar100_lt"], env={"GCL_ZOO_API_KEY": ""}) as server:
        models = httpx.get(f"{server.url}/models", timeout=30).json()
        check_accuracy(server.url, images, stated, sigmas=3, classes=CIFAR100_CLASSES)
    (described,) = models["models"]
    assert described["num_classes"] == 100 and described["labels"] == list(CIFAR100_CLASSES)


@pytest.mark.slow
def test_default_model_accuracy_on_the_full_test_set(default_server, cifar10_zip, stated_top1):
    """All 10,000 test images: the served accuracy is the card's figure (float ties aside)."""
    check_accuracy(default_server.url, cifar_test_images(cifar10_zip, per_class=1000), stated_top1, sigmas=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name, zip_fixture, classes", [
    ("gcl_resnet32_cifar10_lt.ir100", "cifar10_zip", CIFAR10_CLASSES),
    ("gcl_resnet32_cifar100_lt.ir100", "cifar100_zip", CIFAR100_CLASSES)])
def test_served_scores_are_calibrated_on_the_full_test_set(name, zip_fixture, classes, request):
    """The served top-1 scores over HTTP on the whole test set: ECE (15 bins) at most 2.5%, and near the record's
    figure (the default CPU runtime may serve bf16, which moves scores by a few thousandths)."""
    images = cifar_test_images(request.getfixturevalue(zip_fixture), per_class=1000 if len(classes) == 10 else 100,
                               classes=classes)
    with ServerProcess(["--model", name], env={"GCL_ZOO_API_KEY": ""}) as server:
        answers = classify_scored(server.url, images, as_base64=False)
    confidence = torch.tensor([score for _, score in answers])
    correct = torch.tensor([classes[label] == got for (_, _, label), (got, _) in zip(images, answers)])
    ece = 100 * ece_of_bins(confidence_bins(confidence, correct))
    stated = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())["calibration"]["after"]["ece"]
    assert ece <= 2.5 and abs(ece - stated) < 0.25, f"served ECE {ece:.2f}%, record {stated:.2f}%"
