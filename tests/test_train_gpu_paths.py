"""Multi-process and GPU training paths, checked on the CPU: the device each torchrun process takes, the
per-epoch loss of a resumed DDP run, and evaluation under DDP describing the model that is saved."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from train import cli
from train.checkpoint import load_checkpoint
from train.distributed import DistInfo
from train.engine import RunOptions, Trainer
from train.handover import load_stage1
from train.preemption import StopRequested, StopSignal
from train.recipes import load_recipe
from train.run_folder import CHECKPOINT_FILE, STAGE1_DIR
from two_ranks import on_two_ranks

# 243 training images, 16 steps of 8 per rank of two: a stop agreed after step 10 leaves 6
DDP_RECIPE = {"max_per_class": 60, "imb_ratio": 10, "test_per_class": 20, "val_per_class": 10, "workers": 0,
              "model": "cifar_resnet20", "batch_size": 8, "epochs": 1, "warmup_epochs": 1}


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


def _trainer(data_root: str, out: Path, info: DistInfo) -> Trainer:
    recipe = load_recipe("cifar10_lt", {**DDP_RECIPE, "data_root": data_root})
    out.mkdir(parents=True, exist_ok=True)
    return cli.create_trainer(recipe, RunOptions(out=out, stages=[1], seed=7, fast=True, progress=False), info)


def _stop_and_resume_under_ddp(rank: int, data_root: str, out: str) -> str:
    """One rank: an uninterrupted run, then a run stopped inside its epoch and resumed from its checkpoint."""
    info = DistInfo(rank=rank, world=2)
    _trainer(data_root, Path(out) / "reference", info).run()
    stopped = _trainer(data_root, Path(out) / "stopped", info)
    stop = StopSignal(info, torch.device("cpu"))
    stop.received = True  # as a SIGTERM would: every rank agrees at the next agreement step
    try:
        stopped.run(stop=stop)
        return "the run was not stopped"
    except StopRequested:
        pass
    dist.barrier()
    state = load_checkpoint(Path(out) / "stopped" / CHECKPOINT_FILE)
    _trainer(data_root, Path(out) / "stopped", info).run(resume=state)
    return "ok"


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, cifar10_zip) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    outcome = on_two_ranks(_stop_and_resume_under_ddp, str(cifar10_zip), str(out))
    assert outcome == {0: "ok", 1: "ok"}, outcome
    return out


def _rows(folder: Path) -> list:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_ddp_run_stopped_inside_an_epoch_resumes_to_the_same_epoch_loss(ddp_runs):
    """Each rank restores its own partial loss sum, so the resumed epoch's mean loss is the uninterrupted one."""
    state = torch.load(ddp_runs / "stopped" / CHECKPOINT_FILE, weights_only=True)
    assert state["step"] == 0 and len(state["rng"]) == 2  # the finished run's last checkpoint
    stopped, reference = _rows(ddp_runs / "stopped"), _rows(ddp_runs / "reference")
    assert [(r["stage"], r["epoch"], r["loss"]) for r in stopped] == [(r["stage"], r["epoch"], r["loss"])
                                                                      for r in reference]


def test_evaluation_under_ddp_describes_the_saved_model(ddp_runs, cifar10_zip):
    """metrics.jsonl's validation and test figures are those of the saved stage-1 model, evaluated alone."""
    (row,) = _rows(ddp_runs / "reference")
    alone = _trainer(str(cifar10_zip), ddp_runs / "alone", DistInfo())
    load_stage1(alone.model, ddp_runs / "reference" / STAGE1_DIR, alone.recipe["model"], alone.data.num_classes)
    validation, test = alone.validation_metrics(alone.model), alone.evaluate(alone.model)
    assert row["val_nll"] == pytest.approx(validation["val_nll"], rel=1e-5)
    assert (row["val_top1"], row["top1"]) == (validation["val_top1"], test["top1"])
