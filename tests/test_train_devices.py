"""What multi-process and GPU training rely on, checked on the CPU: per-rank randomness, a NaN on one rank
stopping every rank, the device chosen before the process group, and no per-batch host work on the fast path."""
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from gcl_zoo.data import CIFAR_DATA_CFG
from gcl_zoo.sampling import create_sampler
from train import cli
from train.batches import DeviceBatches
from train.distributed import DistInfo
from train.engine import RunOptions, Trainer, TrainingError
from train.recipes import load_recipe
from two_ranks import on_two_ranks

TINY = {"max_per_class": 60, "imb_ratio": 10, "test_per_class": 20, "workers": 0, "model": "cifar_resnet20",
        "batch_size": 32, "epochs": 1, "warmup_epochs": 1}


def tiny_trainer(tmp_path, data_root, dist_info=DistInfo(), compile_model=False, **overrides) -> Trainer:
    recipe = load_recipe("cifar10_lt", {**TINY, "data_root": str(data_root), **overrides})
    options = RunOptions(out=tmp_path, device=torch.device("cpu"), fast=True, compile=compile_model, progress=True)
    return cli.create_trainer(recipe, options, dist_info)


def run_one_epoch(trainer: Trainer, loss_fn=None) -> float:
    model = trainer.prepare_stage(1)
    parts = trainer.stage_parts(1, model)
    trainer.set_train_mode(1)
    return trainer.train_epoch(trainer.wrap(model), loss_fn or parts.loss, parts.optimizer, parts.batches, 1, 0)


def test_ranks_share_the_weights_but_not_the_random_stream(tmp_path, cifar10_zip):
    """Same initial weights everywhere (DDP checks that), but each rank its own crops, flips, pairs and noise."""
    draws, weights = [], []
    for rank in (0, 1):
        trainer = tiny_trainer(tmp_path / str(rank), cifar10_zip, DistInfo(rank=rank, world=2))
        weights.append(trainer.model.state_dict())
        draws.append(torch.rand(8))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(draws[0], draws[1])


def _nan_on_rank_one(rank: int, data_root: str, out: str) -> str:
    trainer = tiny_trainer(Path(out) / str(rank), data_root, DistInfo(rank=rank, world=2))
    loss = trainer.stage_parts(1, trainer.model).loss
    # a NaN loss value with finite gradients: DDP's gradient average cannot carry it to rank 0
    poisoned = (lambda logits, target: loss(logits, target) + float("nan")) if rank == 1 else loss
    try:
        run_one_epoch(trainer, poisoned)
        return "finished"
    except TrainingError as exc:
        return str(exc)


def test_a_nan_on_one_rank_stops_every_rank(tmp_path, cifar10_zip):
    outcome = on_two_ranks(_nan_on_rank_one, str(cifar10_zip), str(tmp_path))
    assert "step 1 (on 1 of 2 processes)" in outcome[1]
    assert outcome[0].startswith("the loss became NaN/inf at stage 1, epoch 1 (on 1 of 2 processes)")


def test_the_device_is_chosen_before_the_process_group(monkeypatch):
    """NCCL binds its communicator to the current CUDA device when the group is created; spies stand in for CUDA."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", str(device))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, **kw: calls.append(("init_process_group", backend, str(kw.get("device_id")))))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    device, info = cli.setup_process("cuda")
    assert calls == [("set_device", "cuda:1"), ("init_process_group", "nccl", "cuda:1")]
    assert str(device) == "cuda:1" and (info.rank, info.world, info.local_rank) == (1, 2, 1)


def test_fast_path_builds_no_tensors_per_batch(tiny_lt_tensors, monkeypatch):
    """Normalisation constants are made once on the device: on a GPU each torch.tensor() is a host-to-device copy."""
    images, labels = tiny_lt_tensors
    batches = DeviceBatches(images, labels, create_sampler("instance", labels.tolist()), 16, torch.device("cpu"),
                            CIFAR_DATA_CFG)
    made = []
    real_tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **kw: made.append(1) or real_tensor(*a, **kw))
    count = sum(1 for _ in batches)
    assert count == len(batches) > 5 and made == []


@pytest.fixture(scope="module")
def tiny_lt_tensors(cifar10_zip):
    from gcl_zoo.data import CIFARLongTail

    return CIFARLongTail(cifar10_zip, imb_ratio=10, max_per_class=60).as_tensors()


class HostReads(TorchDispatchMode):
    """Counts the tensor-to-Python-number reads (``item``, ``float``, ``int``, ``bool`` all come down to the one
    operator ``_local_scalar_dense``): on a GPU each is a host sync. ``ignoring()`` leaves some code out."""

    def __init__(self):
        super().__init__()
        self.count, self.paused = 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self.paused:
            self.count += 1
        return func(*args, **(kwargs or {}))

    @contextmanager
    def ignoring(self):
        self.paused = True
        try:
            yield
        finally:
            self.paused = False


def test_the_loss_is_read_once_per_epoch(tmp_path, cifar10_zip):
    """With the progress bar on, the training loop reads the loss a fixed number of times per epoch, not every N
    steps (the loss's own label checks, which run on CPU tensors only, are left out of the count)."""
    trainer = tiny_trainer(tmp_path, cifar10_zip, batch_size=2)
    model = trainer.prepare_stage(1)
    parts = trainer.stage_parts(1, model)
    net = trainer.wrap(model)
    trainer.set_train_mode(1)
    reads = HostReads()

    def counted_loss(logits, target):
        with reads.ignoring():
            return parts.loss(logits, target)

    with reads:
        trainer.train_epoch(net, counted_loss, parts.optimizer, parts.batches, 1, 0)
    assert len(parts.batches) > 100 and reads.count <= 2, reads.count


def test_compile_builds_one_graph_despite_the_short_last_batch(tmp_path, cifar10_zip, monkeypatch):
    """The short last batch runs eagerly, so torch.compile never compiles a second graph inside an epoch."""
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(tuple(example_inputs[0].shape) if example_inputs else ())
        return graph_module.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=counting_backend))
    torch._dynamo.reset()
    trainer = tiny_trainer(tmp_path, cifar10_zip, compile_model=True)
    batches = trainer.stage_parts(1, trainer.model).batches
    assert len(trainer.data.train) % 32 != 0 and len(batches) > 2  # there is a short last batch
    run_one_epoch(trainer)
    run_one_epoch(trainer)
    assert len(graphs) == 1


def _cpu_flags() -> set:
    with open("/proc/cpuinfo") as handle:
        return set(next(line for line in handle if line.startswith("flags")).split(":", 1)[1].split())


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo") or os.uname().machine != "x86_64", reason="reads x86 flags")
def test_bf16_on_a_cpu_without_bf16_units_is_warned_about():
    """bf16 autocast is emulated on x86 CPUs without AVX-512 (BW/VL/DQ, what oneDNN needs) or AMX: a ResNet-32 step
    ran 13x slower than float32 on such a CPU, so asking for it there must say so, and nowhere else."""
    from gcl_zoo.devices import cpu_has_fast_bf16, slow_bf16_warning

    flags = _cpu_flags()
    has_units = {"avx512bw", "avx512vl", "avx512dq"} <= flags or "amx_bf16" in flags
    assert cpu_has_fast_bf16() == has_units
    warning = slow_bf16_warning(torch.device("cpu"), amp=True)
    assert (warning is None) == has_units
    if warning:
        assert "--amp off" in warning
    assert slow_bf16_warning(torch.device("cpu"), amp=False) is None
    assert slow_bf16_warning(torch.device("cuda"), amp=True) is None
