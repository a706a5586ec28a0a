"""The shipped zoo checkpoints: timm lists exactly them, and each one, evaluated here independently on the full
CIFAR test set, scores what the JSON beside it (and so its model card) states."""
import functools
import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import gcl_zoo  # noqa: F401
from gcl_zoo.data import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFARLongTail
from gcl_zoo.data.preprocessing import Normalize
from gcl_zoo.metrics import accuracy_report
from gcl_zoo.models.weights import WEIGHTS_DIR
from gcl_zoo.onnx_export import STACK_TRACE_KEY
from gcl_zoo.quantize import MIN_TOP1_AGREEMENT

SHIPPED = sorted(p.name[: -len(".safetensors")] for p in WEIGHTS_DIR.glob("*.safetensors"))


def test_timm_lists_exactly_the_shipped_checkpoints():
    assert sorted(timm.list_pretrained("gcl_*")) == SHIPPED
    every_cifar_entry = {f"gcl_resnet32_{data}_lt.ir{ratio}"
                         for data in ("cifar10", "cifar100") for ratio in (50, 100, 200)}
    assert every_cifar_entry <= set(SHIPPED)
    for name in SHIPPED:
        assert (WEIGHTS_DIR / f"{name}.json").is_file(), f"{name} ships without its evaluation JSON"


def test_shipped_int8_graphs_are_checked_and_every_cifar10_checkpoint_has_one():
    """``gcl-zoo serve --precision int8`` runs these graphs; their record says how they were calibrated and checked.
    The CIFAR-100 checkpoints ship none: post-training int8 moves more of their labels than the export allows."""
    with_graph = [n for n in SHIPPED if "onnx_int8" in json.loads((WEIGHTS_DIR / f"{n}.json").read_text())]
    assert with_graph == [n for n in SHIPPED if n.startswith("gcl_resnet32_cifar10_lt.")]
    assert sorted(p.name for p in WEIGHTS_DIR.glob("*.int8.onnx")) == sorted(f"{n}.int8.onnx" for n in with_graph)
    for name in with_graph:
        entry = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())["onnx_int8"]
        assert entry["file"] == f"{name}.int8.onnx" and (WEIGHTS_DIR / entry["file"]).stat().st_size > 100_000
        assert entry["calibration_source"].endswith(":train/") and entry["held_out_images"] == 500
        assert entry["top1_agreement_vs_float32"] >= MIN_TOP1_AGREEMENT
        assert STACK_TRACE_KEY.encode() not in (WEIGHTS_DIR / entry["file"]).read_bytes()  # no exporter's paths


@pytest.mark.parametrize("base, classes", [("gcl_resnet32_cifar10_lt", CIFAR10_CLASSES),
                                           ("gcl_resnet32_cifar100_lt", CIFAR100_CLASSES)])
def test_untagged_name_loads_the_shipped_ratio_100_weights(base, classes):
    """``timm.create_model(base, pretrained=True)`` is the .ir100 checkpoint, read from the package (no network here)."""
    model = timm.create_model(base, pretrained=True)
    assert model.pretrained_cfg["tag"] == "ir100" and list(model.pretrained_cfg["label_names"]) == list(classes)
    state = model.state_dict()
    for key, tensor in load_file(str(WEIGHTS_DIR / f"{base}.ir100.safetensors")).items():
        assert torch.equal(state[key], tensor), key


CIFAR_ZIPS = {"gcl_resnet32_cifar10_lt": "cifar10_zip", "gcl_resnet32_cifar100_lt": "cifar100_zip"}


@functools.cache
def decoded_test_set(archive, num_classes: int):
    """The full test set as tensors, decoded once for every checkpoint of a data set."""
    return CIFARLongTail(archive, num_classes=num_classes, train=False).as_tensors()


@pytest.mark.slow  # the full 10,000-image test set of every shipped checkpoint
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
