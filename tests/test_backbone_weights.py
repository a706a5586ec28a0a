"""Where a backbone's starting weights come from: a local file (``pretrained_path`` / ``--pretrained-path``), timm's
pretrained weights, and the one clear refusal when those are neither cached nor downloadable (``HF_HUB_OFFLINE``).

The offline checks run in fresh processes: ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` and the cache location at
import, as a user's process would.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import gcl_zoo
from gcl_zoo.models.backbone import sha256_of
from image_folder import write_image_folder

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def resnet18_source():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=1000).eval()


def _offline_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "GCL_ZOO_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty_hub_cache"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO), **extra)
    return env


def _same_backbone(model: torch.nn.Module, source: torch.nn.Module) -> bool:
    theirs = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    ours = model.backbone.state_dict()
    return set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_safetensors_state_dict_is_the_backbone_with_its_classifier_dropped(resnet18_source, tmp_path):
    path = tmp_path / "resnet18.safetensors"
    save_file(resnet18_source.state_dict(), str(path))
    model = gcl_zoo.create_gcl_model("resnet18", num_classes=7, pretrained_path=str(path))
    assert _same_backbone(model, resnet18_source)
    assert model.head.weight.shape == (7, model.num_features)  # a fresh head for the new classes
    assert model.backbone_origin == {"source": "file", "path": str(path.resolve()), "sha256": sha256_of(path)}
    assert "state_dict" not in model.backbone.pretrained_cfg  # the file's tensors are not kept a second time


def test_a_timm_checkpoint_loads_its_ema_weights_as_timm_does(resnet18_source, tmp_path):
    other = timm.create_model("resnet18", num_classes=10)
    path = tmp_path / "checkpoint.pth.tar"  # what timm's train.py saves: weights, EMA weights, optimizer, epoch
    torch.save({"epoch": 3, "arch": "resnet18", "state_dict": other.state_dict(),
                "state_dict_ema": resnet18_source.state_dict(), "optimizer": {}}, path)
    model = gcl_zoo.create_gcl_model("resnet18", num_classes=3, pretrained_path=str(path))
    assert _same_backbone(model, resnet18_source)
    plain = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v for k, v in other.state_dict().items()}, plain)  # a DDP-saved state dict
    assert _same_backbone(gcl_zoo.create_gcl_model("resnet18", num_classes=3, pretrained_path=str(plain)), other)


def test_a_file_of_another_architecture_is_refused_naming_the_first_keys(resnet18_source, tmp_path):
    path = tmp_path / "resnet18.safetensors"
    save_file(resnet18_source.state_dict(), str(path))
    with pytest.raises(ValueError) as refused:
        gcl_zoo.create_gcl_model("resnet34", num_classes=3, pretrained_path=str(path))
    message = str(refused.value)
    assert f"{path.resolve()} does not fit backbone resnet34" in message
    assert "missing from the file: layer1.2.conv1.weight" in message and "and 91 more" in message
    shrunk = {k: (v[:, :1].contiguous() if k == "conv1.weight" else v) for k, v in resnet18_source.state_dict().items()}
    save_file({**shrunk, "extra.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match=r"not in resnet18: extra\.weight; of another shape: conv1\.weight "
                                         r"\(file \(64, 1, 7, 7\), resnet18 \(64, 3, 7, 7\)\)"):
        gcl_zoo.create_gcl_model("resnet18", num_classes=3, pretrained_path=str(path))
    path.write_bytes(b"not a weights file")
    with pytest.raises(ValueError, match="is not a readable .safetensors or .pth/.pt state dict"):
        gcl_zoo.create_gcl_model("resnet18", num_classes=3, pretrained_path=str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gcl_zoo.create_gcl_model("resnet18", num_classes=3, pretrained_path=str(tmp_path / "absent.safetensors"))


def test_offline_a_pretrained_backbone_not_cached_is_refused_with_the_ways_on(tmp_path):
    code = ("import gcl_zoo\n"
            "try:\n    gcl_zoo.create_gcl_model('resnet18', num_classes=3, pretrained_backbone=True)\n"
            "except gcl_zoo.models.weights.WeightsNotCachedError as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_offline_env(tmp_path), capture_output=True, text=True,
                          timeout=120)
    message = proc.stdout
    assert "backbone resnet18 (timm's resnet18.a1_in1k: model.safetensors of Hub repo timm/resnet18.a1_in1k)" in message
    assert "HF_HUB_OFFLINE is set" in message and "repo None" not in message
    assert "--pretrained-path FILE" in message and "--pretrained-backbone false" in message
    assert "hf download timm/resnet18.a1_in1k` with HF_HUB_CACHE" in message and str(tmp_path) in message


def test_offline_the_imagefolder_recipe_refuses_in_one_message(tmp_path, cifar10_zip):
    folders = write_image_folder(tmp_path / "data", cifar10_zip)
    proc = subprocess.run(
        [sys.executable, "-m", "gcl_zoo.cli", "train", "--recipe", "imagefolder", "--train-dir", str(folders["train"]),
         "--test-dir", str(folders["test"]), "--model", "resnet18", "--workers", "0", "--out", str(tmp_path / "run")],
        env=_offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gcl-zoo train: error:")]
    assert len(errors) == 1, proc.stderr
    assert "resnet18.a1_in1k" in errors[0] and "--pretrained-path FILE" in errors[0]
    assert "--pretrained-backbone false" in errors[0] and "HF_HUB_CACHE" in errors[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_offline_an_uncached_hf_hub_model_stops_the_server_with_the_ways_on(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gcl_zoo.cli", "serve", "--model", "hf-hub:org/not-cached",
                           "--port", "0", "--device", "cpu"],
                          env=_offline_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert ("could not load the models: WeightsNotCachedError: the files of Hub repo org/not-cached (config.json, "
            "model.safetensors) are not in the Hub cache and cannot be downloaded: HF_HUB_OFFLINE is set") in proc.stderr
    assert "local-dir:FOLDER" in proc.stderr and "hf download org/not-cached" in proc.stderr
