"""Shared fixtures: where the real data lives (``GCL_ZOO_DATA``, default ``../shared/data`` beside the repo)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    return Path(os.environ.get("GCL_ZOO_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    """Skip a test whose real data is missing, with the reason shown (``-ra``); where the data must be there
    (``GCL_ZOO_REQUIRE_DATA=1``, as CI sets it) a missing file fails the test instead of hiding it."""
    if not path.exists():
        message = (f"real data not found: {path}; set GCL_ZOO_DATA to the folder holding cifar10/, cifar100/ and "
                   "lt_splits/")
        if os.environ.get("GCL_ZOO_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(data_root())


@pytest.fixture(scope="session")
def cifar10_zip(shared_data: Path) -> Path:
    return _require(shared_data / "cifar10" / "cifar10.zip")


@pytest.fixture(scope="session")
def cifar100_zip(shared_data: Path) -> Path:
    return _require(shared_data / "cifar100" / "cifar100.zip")


@pytest.fixture(scope="session")
def lt_splits(shared_data: Path) -> Path:
    return _require(shared_data / "lt_splits")


# -- Hub publishing: training run folders as the trainer writes them --------------------------------------------

RUN_RECIPE = {
    "recipe": "cifar10_lt", "dataset": "cifar10_lt", "model": "gcl_resnet32_cifar10_lt", "imb_ratio": 100,
    "epochs": 200, "lr": 0.1, "batch_size": 128, "loss": "gcl",
    "stage2": {"method": "crt", "epochs": 10, "lr": 0.01, "sampler": "class_balanced"},
}
RUN_EVAL = {"top1": 81.25, "top5": 98.5, "many": 91.0, "medium": 79.5, "few": 70.75, "per_class": [81.25] * 10,
            "num_samples": 10000, "dataset": "cifar10_lt", "split": "test"}
RUN_INFO = {"command": "gcl-zoo train --recipe cifar10_lt --out runs/c10lt100", "device": "cuda:0 (NVIDIA H100)",
            "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T01:00:00Z"}


@pytest.fixture(scope="session")
def make_run(tmp_path_factory):
    """``make_run(optional=("recipe.yaml", "eval.json", "run.json"), seed=0, arch=...)``: a run folder of a CIFAR
    ResNet-32 zoo architecture holding model.safetensors + config.json and the named optional files."""
    import json

    import timm
    import torch
    import yaml

    import gcl_zoo  # noqa: F401
    from gcl_zoo.hub import save_model_folder

    def make(optional=("recipe.yaml", "eval.json", "run.json"), seed: int = 0,
             arch: str = "gcl_resnet32_cifar10_lt") -> Path:
        torch.manual_seed(seed)
        model = timm.create_model(arch, logit_scale=16.0)
        with torch.no_grad():  # move every parameter and buffer off its init value, as training would
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.add_(torch.randn_like(tensor) * 0.01)
        run = tmp_path_factory.mktemp("run")
        save_model_folder(model, run)
        files = {"recipe.yaml": yaml.safe_dump(RUN_RECIPE, sort_keys=False), "eval.json": json.dumps(RUN_EVAL),
                 "run.json": json.dumps(RUN_INFO), "metrics.jsonl": '{"epoch": 1, "loss": 2.3}\n'}
        for name in optional:
            (run / name).write_text(files[name])
        return run

    return make
