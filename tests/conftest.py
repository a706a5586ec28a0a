"""Shared fixtures: where the real data lives (``GCL_ZOO_DATA``, default ``../shared/data`` beside the repo)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    return Path(os.environ.get("GCL_ZOO_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "cifar10" / "cifar10.zip").is_file():
        pytest.skip(f"real data not found at {root}; set GCL_ZOO_DATA to the folder holding cifar10/ and lt_splits/")
    return root


@pytest.fixture(scope="session")
def cifar10_zip(shared_data: Path) -> Path:
    return shared_data / "cifar10" / "cifar10.zip"


@pytest.fixture(scope="session")
def lt_splits(shared_data: Path) -> Path:
    return shared_data / "lt_splits"
