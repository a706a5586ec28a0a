"""The shipped zoo checkpoints: timm lists exactly them, and each one, evaluated here independently on the full
CIFAR test set, scores what the JSON beside it (and so its model card) states."""
import functools
import json

import pytest
import timm
import torch

import gcl_zoo  # noqa: F401
from gcl_zoo.data import CIFARLongTail
from gcl_zoo.data.preprocessing import Normalize
from gcl_zoo.metrics import accuracy_report
from gcl_zoo.models.zoo import WEIGHTS_DIR
from gcl_zoo.quantize import MIN_TOP1_AGREEMENT

SHIPPED = sorted(p.name[: -len(".safetensors")] for p in WEIGHTS_DIR.glob("*.safetensors"))


def test_timm_lists_exactly_the_shipped_checkpoints():
    assert sorted(timm.list_pretrained("gcl_*")) == SHIPPED
    assert {"gcl_resnet32_cifar10_lt.ir100", "gcl_resnet32_cifar10_lt.ir50", "gcl_resnet32_cifar10_lt.ir200"} <= set(SHIPPED)
    for name in SHIPPED:
        assert (WEIGHTS_DIR / f"{name}.json").is_file(), f"{name} ships without its evaluation JSON"


def test_every_shipped_checkpoint_has_its_checked_int8_graph():
    """``gcl-zoo serve --precision int8`` runs these graphs; their record says how they were calibrated and checked."""
    for name in SHIPPED:
        entry = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())["onnx_int8"]
        assert entry["file"] == f"{name}.int8.onnx" and (WEIGHTS_DIR / entry["file"]).stat().st_size > 100_000
        assert entry["calibration_source"].endswith(":train/") and entry["held_out_images"] == 500
        assert entry["top1_agreement_vs_float32"] >= MIN_TOP1_AGREEMENT


CIFAR_ZIPS = {"gcl_resnet32_cifar10_lt": "cifar10_zip", "gcl_resnet32_cifar100_lt": "cifar100_zip"}


@functools.lru_cache(maxsize=None)
def decoded_test_set(archive, num_classes: int):
    """The full test set as tensors, decoded once for every checkpoint of a data set."""
    return CIFARLongTail(archive, num_classes=num_classes, train=False).as_tensors()


@pytest.mark.parametrize("name", [n for n in SHIPPED if n.split(".")[0] in CIFAR_ZIPS])
def test_independent_evaluation_gives_the_stated_accuracy(name, request):
    stated = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    archive = request.getfixturevalue(CIFAR_ZIPS[name.split(".")[0]])
    model = timm.create_model(name, pretrained=True).eval()
    images, labels = decoded_test_set(archive, model.num_classes)
    normalize = Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"], torch.device("cpu"))
    with torch.no_grad():
        logits = torch.cat([model(normalize(images[i:i + 1000])) for i in range(0, len(images), 1000)])
    train = CIFARLongTail(archive, num_classes=model.num_classes, imb_ratio=stated["imb_ratio"])  # its class counts define many/medium/few
    report = accuracy_report(logits, labels, train.cls_num_list)
    assert report["num_samples"] == stated["num_samples"] == 10_000
    for key in ("top1", "top5", "many", "medium", "few"):
        if stated[key] is None:
            assert report[key] is None, key
        else:
            assert report[key] == pytest.approx(stated[key], abs=0.02), key
