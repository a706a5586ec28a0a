"""The two-stage training loop: stage 1 learns the representation with GCL, stage 2 re-trains the classifier.

One loop serves both stages and both data paths; it reads top to bottom: ``Trainer.run`` (the stages, and a
resumed run's place in them), ``run_stage`` (one stage's epochs), ``train_epoch`` (the steps), ``finish_epoch``
(evaluation, checkpoint, metrics), then the pieces they use. What the run folder holds is ``train.run_folder``.

The stage's parts (model, sampler, batches, loss, optimizer) are built in ``train.parts``, the stage-1 weights
handed to stage 2 by ``train.handover``, checkpoints written by ``train.checkpoint``, and a SIGTERM turned into a
clean stop by ``train.preemption``. The caller seeds the random generators (``train.cli.create_trainer``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from gcl_zoo.calibration import calibrate_model, nll
from gcl_zoo.devices import autocast_for
from gcl_zoo.heads import prepare_retraining
from gcl_zoo.hub import save_model_folder
from gcl_zoo.losses import drw_class_weights
from gcl_zoo.metrics import accuracy_report
from gcl_zoo.models.gcl import calibrated_logits, raw_logits_module

from . import parts
from .augment import mix, mixup_lambdas
from .checkpoint import atomic_torch_save, rng_states_of_all_ranks, set_rng_state
from .data import build_data, is_small_image_data
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_buffers, gather_objects
from .errors import TrainingError
from .handover import load_stage1
from .predict import predict
from .preemption import StopRequested, StopSignal
from .run_folder import RunFolder
from .schedule import lr_at

log = logging.getLogger(__name__)

TEST_KEYS = ("top1", "top5", "many", "medium", "few")  # metrics.jsonl: the test set, at each stage's last epoch
VAL_KEYS = ("top1", "many", "medium", "few")  # metrics.jsonl: the validation split as val_<key>, with val_nll


class _StoppedAt(Exception):
    """Raised out of an epoch when every process agreed to stop: after ``step`` steps, with this process's loss
    sum so far."""

    def __init__(self, step: int, loss_sum: float):
        super().__init__(step)
        self.step = step
        self.loss_sum = loss_sum


@dataclass
class RunOptions:
    out: Path
    stages: list[int] = field(default_factory=lambda: [1, 2])
    device: torch.device = torch.device("cpu")
    seed: int = 0
    fast: bool = False
    compile: bool = False
    amp: bool = False
    channels_last: bool = False
    stage1_checkpoint: Path | None = None
    progress: bool = True
    tensorboard: bool = False
    read_test: bool = True  # False for tuning runs: they are judged on the validation split, the test set unread


@dataclass
class Forward:
    """The training forward pass: the compiled module for full batches, the eager one for an epoch's short last batch.

    A short batch would make torch.compile build (and, with dynamic shapes, later rebuild) a second graph inside
    the timed epoch; running that one batch eagerly keeps the authors' semantics (no image dropped) at no cost.
    """
    eager: nn.Module
    compiled: nn.Module

    def __call__(self, x: torch.Tensor, full_batch: int) -> torch.Tensor:
        return (self.compiled if x.shape[0] == full_batch else self.eager)(x)


@dataclass
class StageParts:
    """What one stage trains with (``train.parts`` builds each)."""
    sampler: Any
    batches: Any
    loss: nn.Module
    optimizer: Any


def rank_seed(seed: int, rank: int) -> int:
    """The random seed of process ``rank`` (rank 0 keeps ``seed``)."""
    return seed + 1_000_003 * rank


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


class Trainer:
    """Runs the stages of one recipe in one run folder (resumable)."""

    def __init__(self, recipe: dict[str, Any], options: RunOptions, dist_info: DistInfo):
        """The data, and the model built from the current random state (seed it first: the same initial weights on
        every rank)."""
        self.recipe = recipe
        self.opt = options
        self.dist = dist_info
        self.device = options.device
        self.folder = RunFolder(options.out)
        self.data = build_data(recipe, parts.backbone_data_config(recipe))
        self.model = parts.build_model(recipe, self.data.num_classes)
        parts.describe_model(self.model, self.data)
        self.model.to(self.device)
        if options.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if not options.read_test and not len(self.data.val):
            raise TrainingError("a run that leaves the test set unread (--no-test) is judged on the validation "
                                "split, and this data has none; give it one (see the recipe's val_* fields)")
        self.final_split = "test" if options.read_test else "val"
        self.final_report: dict[str, Any] | None = None  # the last stage's final-epoch report, with confusion
        self.fast = options.fast and is_small_image_data(recipe)
        self.resident: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # held-out splits on the device
        if self.fast:
            self.train_images, self.train_labels = self.data.train.as_tensors()
            for split in dict.fromkeys(("val", self.final_split)):
                images, labels = getattr(self.data, split).as_tensors()
                self.resident[split] = images.to(self.device), labels.to(self.device)
        self.history: list[dict[str, Any]] = []
        self.stop: StopSignal | None = None  # during run(): a SIGTERM stops the run at a step boundary
        self.writer = self._tensorboard() if options.tensorboard and dist_info.is_main else None

    def run(self, resume: dict[str, Any] | None = None, stop: StopSignal | None = None) -> dict[str, Any]:
        """Run the stages, from ``resume`` (a checkpoint) when given, stopping cleanly at a step boundary when
        ``stop`` is agreed; returns the final-epoch report."""
        self.stop = stop
        try:
            return self._run_stages(resume)
        finally:
            self.stop = None

    def _run_stages(self, resume: dict[str, Any] | None) -> dict[str, Any]:
        stages = self.opt.stages
        first, have_stage1 = stages[0], False
        if resume is not None:
            unwrap(self.model).load_state_dict(resume["model"])
            set_rng_state(self.rank_share(resume["rng"]))
            self.history = list(resume["history"])
            first, have_stage1 = resume["stage"], True
            if not resume.get("step") and resume["epoch"] + 1 >= self.section(first)["epochs"]:  # that stage had finished
                self.save_stage_result(first)  # the crash may have come before its result was written
                resume, first = None, first + 1
        for stage in [s for s in stages if s >= first]:
            if stage == 2 and not have_stage1:
                load_stage1(unwrap(self.model), self.opt.stage1_checkpoint or self.folder.stage1_dir,
                            self.recipe["model"], self.data.num_classes)
            self.run_stage(stage, resume if resume is not None and resume["stage"] == stage else None)
            resume, have_stage1 = None, True
        if self.final_report is None:  # a --no-test run, or a resumed one whose last stage had already finished
            self.final_report = self.evaluate(self.model, self.final_split, with_confusion=True)
        return self.final_report

    # ---- one stage -----------------------------------------------------------------------------------------------
    def run_stage(self, stage: int, state: dict[str, Any] | None = None) -> None:
        """The stage's epochs, from ``state`` (its checkpoint) when resumed."""
        section = self.section(stage)
        model = self.prepare_stage(stage)
        if stage == 2 and section["method"] == "tau_norm":
            self.finish_epoch(stage, section["epochs"] - 1, {"loss": None, "lr": 0.0, "seconds": 0.0}, None, None)
            return
        built = self.stage_parts(stage, model)
        sampler, batches, loss_fn, optimizer = built.sampler, built.batches, built.loss, built.optimizer
        start, mid_epoch = 0, None
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            sampler.load_state_dict(state["sampler"])
            mid_epoch = state if state.get("step") else None  # stopped on request inside that epoch
            start = state["epoch"] + (0 if mid_epoch else 1)
        net = self.wrap(model)
        for epoch in range(start, section["epochs"]):
            lr = lr_at(section, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            drw = self.recipe["drw_epoch"]
            if stage == 1 and section["loss"] == "ldam" and drw is not None:
                loss_fn.set_class_weight(drw_class_weights(self.data.cls_num_list) if epoch >= drw else None)
            sampler.set_epoch(epoch)
            self.set_train_mode(stage)
            began = time.perf_counter()
            try:
                mean_loss = self.train_epoch(net, loss_fn, optimizer, batches, stage, epoch, mid_epoch)
            except _StoppedAt as stopped:
                self.save_checkpoint(stage, epoch, optimizer, sampler, stopped.step, stopped.loss_sum)
                raise StopRequested(f"stopped on request at stage {stage}, epoch {epoch + 1}, step {stopped.step} "
                                    f"of {len(batches)}; continue with --resume {self.opt.out}") from None
            mid_epoch = None
            seconds = time.perf_counter() - began
            self.finish_epoch(stage, epoch, {"loss": mean_loss, "lr": lr, "seconds": seconds}, optimizer, sampler)

    def train_epoch(self, net: Forward, loss_fn: nn.Module, optimizer, batches, stage: int, epoch: int,
                    mid_epoch: dict[str, Any] | None = None) -> float:
        """One epoch; the loss stays on the device and is read once, after the last step (no per-step host sync).

        ``mid_epoch``: a checkpoint written when a stop was requested inside this epoch; its steps are skipped
        (the batches drawn and dropped, so the data order and the random streams continue exactly there).
        """
        section = self.section(stage)
        lams = mixup_lambdas(section["mixup_alpha"], len(batches),
                             seed=self.opt.seed * 100_003 + stage * 1009 + epoch + self.dist.rank * 7_919)
        lams = lams.to(self.device)
        total = torch.zeros((), device=self.device)
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        steps = 0
        bar = tqdm(batches, total=len(batches), desc=f"stage {stage} epoch {epoch + 1}/{section['epochs']}",
                   disable=not (self.opt.progress and self.dist.is_main), leave=False, dynamic_ncols=True)
        batch_iter = iter(bar)
        if mid_epoch is not None:
            steps = int(mid_epoch["step"])
            for _ in range(steps):
                next(batch_iter)
            total += float(self.rank_share(mid_epoch["loss_sum"]))  # this rank's own sum: the epoch's mean is exact
            set_rng_state(self.rank_share(mid_epoch["rng"]))  # the generators as they were after that step
        for step, (x, y) in enumerate(batch_iter, start=steps):
            if self.opt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            target = y
            if section["mixup_alpha"] > 0:
                x, target = mix(x, y, lams[step])
            with self.autocast():
                logits = net(x, section["batch_size"])
            loss = loss_fn(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            detached = loss.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(detached), step, first_bad)
            total += detached
            steps += 1
            if self.stop is not None and steps < len(batches) and self.stop.agreed(step):
                self._check_finite(total, steps, first_bad, stage, epoch)
                raise _StoppedAt(steps, float(total))
        summed = self._check_finite(total, steps, first_bad, stage, epoch)
        return float(summed[0] / summed[1].clamp_min(1))

    def finish_epoch(self, stage: int, epoch: int, stats: dict[str, Any], optimizer, sampler) -> None:
        """Evaluate when due (the validation split every ``eval_every`` epochs and at the stage's last, unless it is
        empty; the test set at the stage's last epoch only, and never in a ``--no-test`` run), checkpoint
        atomically, then log (rank 0 writes).

        Under DDP every rank first takes rank 0's buffers: each rank's BatchNorm statistics moved with its own last
        batch, and evaluation is sharded over the ranks, so the metrics would mix models; now they describe rank
        0's, the one that is saved."""
        broadcast_buffers(unwrap(self.model))
        section = self.section(stage)
        last = epoch == section["epochs"] - 1
        record = {"stage": stage, "epoch": epoch + 1, **stats}
        if (last or (epoch + 1) % self.recipe["eval_every"] == 0) and len(self.data.val):
            record.update(self.validation_metrics(self.model))
        if last and self.opt.read_test:
            report = self.evaluate(self.model, with_confusion=stage == self.opt.stages[-1])
            record.update({k: report.get(k) for k in TEST_KEYS})
            self.final_report = report
        self.history.append(record)
        if optimizer is not None:
            self.save_checkpoint(stage, epoch, optimizer, sampler)
        if self.dist.is_main:
            self.folder.append_metrics(record)
            if self.writer is not None:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key not in ("stage", "epoch"):
                        self.writer.add_scalar(f"stage{stage}/{key}", value, epoch + 1)
            message = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                               if v is not None)
            log.info(message)
        if last:
            self.save_stage_result(stage)
        barrier()

    # ---- the stage's parts ---------------------------------------------------------------------------------------
    def section(self, stage: int) -> dict[str, Any]:
        return self.recipe if stage == 1 else self.recipe["stage2"]

    def stage_parts(self, stage: int, model: nn.Module) -> StageParts:
        """The stage's sampler (seeded per stage), batches (device-resident on the fast path), loss and optimizer."""
        section = self.section(stage)
        sampler = parts.stage_sampler(section, self.data.train.targets, self.opt.seed, stage)
        resident = (self.train_images, self.train_labels) if self.fast else None
        batches = parts.stage_batches(section, self.data, sampler, self.device, self.recipe["workers"], resident)
        loss = parts.stage_loss(section, self.recipe["cloud"], self.data.cls_num_list, self.device)
        return StageParts(sampler, batches, loss, parts.stage_optimizer(model, section, self.device))

    def prepare_stage(self, stage: int) -> nn.Module:
        """Set trainable parts for the stage; stage 2 freezes the backbone and its BatchNorm statistics."""
        model = self.model
        if stage == 1:
            model.requires_grad_(True)
            return model
        model.backbone.requires_grad_(False)
        section = self.section(2)
        prepare_retraining(model.head, section["method"], fresh=section["fresh_head"], tau=section["tau"])
        if model.head_type == "cosine":
            model.logit_scale.fill_(section["s"])
        return model

    def set_train_mode(self, stage: int) -> None:
        self.model.train()
        if stage == 2:
            self.model.backbone.eval()  # BatchNorm keeps its stage-1 statistics

    def wrap(self, model: nn.Module) -> Forward:
        """The model's raw logits (what the loss trains on, before the calibrated scale), with DDP around them when
        distributed, and a compiled twin with ``--compile``."""
        eager = raw_logits_module(model)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            eager = nn.parallel.DistributedDataParallel(eager, device_ids=ids)
        return Forward(eager, torch.compile(eager) if self.opt.compile else eager)

    def autocast(self):
        return autocast_for(self.device, torch.bfloat16 if self.opt.amp else None)

    # ---- evaluation, checkpoints, results ------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, split: str = "test", with_confusion: bool = False) -> dict[str, Any]:
        pred = self.predict(model, split)
        return accuracy_report(pred["logits"], pred["targets"], self.data.cls_num_list, with_confusion=with_confusion)

    def validation_metrics(self, model: nn.Module) -> dict[str, Any]:
        """``val_top1``, ``val_many``, ``val_medium``, ``val_few`` and ``val_nll`` (mean cross-entropy of the scaled
        logits): what choosing, tuning and calibrating read, so the test set is not read for them."""
        pred = self.predict(model, "val")
        report = accuracy_report(pred["logits"], pred["targets"], self.data.cls_num_list)
        metrics = {f"val_{key}": report.get(key) for key in VAL_KEYS}
        metrics["val_nll"] = nll(calibrated_logits(unwrap(model), pred["logits"]), pred["targets"])
        return metrics

    def predict(self, model: nn.Module, split: str = "test", with_embeddings: bool = False) -> dict[str, torch.Tensor]:
        return predict(unwrap(model), self.data, self.device, self.dist, amp=self.opt.amp,
                       channels_last=self.opt.channels_last, workers=self.recipe["workers"],
                       resident=self.resident.get(split), with_embeddings=with_embeddings, split=split)

    def save_checkpoint(self, stage: int, epoch: int, optimizer, sampler, step: int = 0,
                        loss_sum: float = 0.0) -> None:
        """The full training state, atomically (rank 0 writes; every rank calls: the gathers are collectives).
        ``step`` > 0: stopped inside ``epoch`` after that many steps, with each rank's loss sum of the epoch so far
        (one per rank, like the generator states)."""
        rng = rng_states_of_all_ranks()
        loss_sums = gather_objects(loss_sum)
        if self.dist.is_main:
            atomic_torch_save({
                "stage": stage, "epoch": epoch, "step": step, "loss_sum": loss_sums,
                "model": unwrap(self.model).state_dict(), "optimizer": optimizer.state_dict(),
                "sampler": sampler.state_dict(), "rng": rng, "history": self.history,
            }, self.folder.checkpoint_file)
        barrier()

    def save_stage_result(self, stage: int) -> None:
        """Save the stage's model; after the run's last stage, calibrate it on the validation split first (every
        rank takes part: the predictions are gathered), so the run's model answers calibrated scores."""
        model = unwrap(self.model)
        if self.dist.is_main and stage == 1:
            save_model_folder(model, self.folder.stage1_dir)  # uncalibrated: stage 2 starts from it
        extra = {"calibration": self.calibrate(model)} if stage == self.opt.stages[-1] and len(self.data.val) else None
        if self.dist.is_main:
            save_model_folder(model, self.folder.path, extra_config=extra)

    def calibrate(self, model: nn.Module) -> dict[str, Any]:
        """Fit the logit scale and measure the implied prior on the validation split (``gcl_zoo.calibration``)."""
        pred = self.predict(model, "val")
        return calibrate_model(model, pred["logits"], pred["targets"],
                               f"validation split: {self.data.validation_summary()['source']}")

    # ---- helpers -------------------------------------------------------------------------------------------------
    def _check_finite(self, total: torch.Tensor, steps: int, first_bad: torch.Tensor, stage: int,
                      epoch: int) -> torch.Tensor:
        """One collective for the loss sums and for "did any rank see a non-finite loss", so every rank stops
        together; returns (loss sum, steps, ranks that saw one) over all ranks."""
        summed = all_reduce_sum(torch.stack([total, torch.tensor(float(steps), device=self.device),
                                             (first_bad >= 0).float()]))
        if float(summed[2]) > 0:
            bad = int(first_bad)
            where = f", step {bad + 1}" if bad >= 0 else ""
            ranks = f" (on {int(summed[2])} of {self.dist.world} processes)" if self.dist.enabled else ""
            raise TrainingError(f"the loss became NaN/inf at stage {stage}, epoch {epoch + 1}{where}{ranks}; "
                                "lower the learning rate (--lr) or check the data; the last good checkpoint is kept")
        return summed

    def rank_share(self, saved: Any) -> Any:
        """This rank's entry of a per-rank checkpoint field (generator states, loss sums; older checkpoints hold
        rank 0's alone)."""
        if not isinstance(saved, list):
            saved = [saved]
        if len(saved) != self.dist.world:
            raise TrainingError(f"the checkpoint was written by {len(saved)} process(es) but this run has "
                                f"{self.dist.world}; resume with the same number of processes (torchrun "
                                f"--nproc-per-node) so every rank continues its own random stream")
        return saved[self.dist.rank]

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise RuntimeError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
        return SummaryWriter(str(self.folder.tensorboard_dir))
