"""Multi-process and GPU training paths, checked on the CPU: the device each torchrun process takes, the
per-epoch loss of a resumed DDP run, and evaluation under DDP describing the model that is saved."""
from __future__ import annotations

import pytest

from train import cli


def test_an_explicit_gpu_under_torchrun_is_refused_with_the_fix(monkeypatch, tmp_path, capsys):
    """``--device cuda:1`` in every process of a group would bind them all to GPU 1; alone it names that GPU."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="under torchrun each process takes its own"):
        cli.setup_process("cuda:1")
    assert cli.main(["--recipe", "cifar10_lt", "--out", str(tmp_path / "run"), "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda:1 names one GPU" in err and "pass --device cuda" in err and "CUDA_VISIBLE_DEVICES" in err
    assert not (tmp_path / "run").exists()
