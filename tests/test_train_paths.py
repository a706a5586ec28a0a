"""The fast path against the DataLoader path, DDP with two gloo processes, kill-and-resume, large-image data sets."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from gcl_zoo.data import CIFAR_DATA_CFG, CIFARLongTail
from gcl_zoo.sampling import create_sampler
from test_train import TINY, metrics
from train.augment import mix, mixup_lambdas, pad_crop_flip
from train.batches import DeviceBatches, LoaderBatches
from train.data import train_transform

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_lt(cifar10_zip):
    return CIFARLongTail(cifar10_zip, imb_ratio=10, max_per_class=60,
                         transform=train_transform({"dataset": "cifar10_lt"}, CIFAR_DATA_CFG))


def test_fast_and_loader_paths_draw_the_same_labels(tiny_lt):
    """Same sampler, same epoch: both pipelines yield the same label sequence (so the same class frequencies)."""
    images, labels = tiny_lt.as_tensors()
    for name in ("instance", "cben", "class_balanced"):
        s1, s2 = create_sampler(name, tiny_lt.targets, seed=3), create_sampler(name, tiny_lt.targets, seed=3)
        s1.set_epoch(4)
        s2.set_epoch(4)
        fast = torch.cat([y for _, y in DeviceBatches(images, labels, s1, 32, torch.device("cpu"), CIFAR_DATA_CFG)])
        slow = torch.cat([y for _, y in LoaderBatches(tiny_lt, s2, 32, torch.device("cpu"), workers=0)])
        assert torch.equal(fast, slow), name


def test_fast_augmentation_matches_torchvision_statistics(tiny_lt):
    """Crop offsets, flips and pixel statistics of the on-device augmentation match RandomCrop(pad 4) + flip."""
    image = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32) + 1  # unique, non-zero pixel values
    batch = image.expand(4000, 1, 32, 32)
    out = pad_crop_flip(batch, generator=torch.Generator().manual_seed(0))
    left, right = out[:, 0, :, :-1], out[:, 0, :, 1:]
    flipped = ((left > right) & (left != 0) & (right != 0)).flatten(1).any(1)  # image values decrease to the right
    assert abs(flipped.float().mean().item() - 0.5) < 0.03
    zero_fraction = (out == 0).float().mean().item()
    # expected padded fraction for offsets uniform on 0..8 in each axis: 1 - E[visible rows] E[visible cols] / 1024
    visible = np.mean([32 - abs(4 - d) for d in range(9)])
    assert zero_fraction == pytest.approx(1 - (visible / 32) ** 2, abs=0.01)

    # the same statistics through torchvision on real images: mean pixel after normalisation agrees
    images, _ = tiny_lt.as_tensors()
    data_cfg = CIFAR_DATA_CFG
    torch.manual_seed(0)
    torchvision_batch = torch.stack([tiny_lt[i % len(tiny_lt)][0] for i in range(1500)])
    positions = torch.arange(1500) % len(tiny_lt)
    fast_batch = DeviceBatches(images[positions], torch.zeros(1500, dtype=torch.long),
                               create_sampler("instance", [0] * 1500), 1500, torch.device("cpu"), data_cfg)
    fast = next(iter(fast_batch))[0]
    assert fast.mean().item() == pytest.approx(torchvision_batch.mean().item(), abs=0.03)
    assert fast.std().item() == pytest.approx(torchvision_batch.std().item(), abs=0.03)
    pad_value = (torch.tensor([0.0]) - torch.tensor(data_cfg["mean"])) / torch.tensor(data_cfg["std"])
    for batch in (fast, torchvision_batch):  # padded pixels are black before normalisation in both pipelines
        frac = (batch[:, 0] == pad_value[0]).float().mean().item()
        assert frac == pytest.approx(1 - (visible / 32) ** 2, abs=0.02)


def test_mixup_is_one_lambda_per_batch_and_seeded():
    lams = mixup_lambdas(1.0, 5000, seed=1)
    assert torch.equal(lams, mixup_lambdas(1.0, 5000, seed=1)) and lams.min() >= 0 and lams.max() <= 1
    assert lams.mean().item() == pytest.approx(0.5, abs=0.02) and lams.var().item() == pytest.approx(1 / 12, abs=0.01)
    assert torch.equal(mixup_lambdas(0.0, 3, seed=1), torch.ones(3))
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8)
    mixed, (y_a, y_b, lam) = mix(x, y, torch.tensor(0.3))
    assert torch.equal(y_a, y) and sorted(y_b.tolist()) == list(range(8))
    assert torch.allclose(mixed, 0.3 * x + 0.7 * x[y_b])


def _train_cmd(out, data_root, *extra):
    return [sys.executable, "-m", "train", "--recipe", "cifar10_lt", "--out", str(out), "--data-root", str(data_root),
            *TINY, *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_ddp_two_gloo_processes_end_to_end(tmp_path, cifar10_zip):
    out = tmp_path / "ddp"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "train", *_train_cmd(out, cifar10_zip, "--epochs", "2", "--stage2.epochs", "1")[3:]]
    result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (1, 2), (2, 1)]  # rank 0 alone writes
    report = json.loads((out / "eval.json").read_text())
    assert report["num_samples"] == 200  # metrics gathered from both ranks' shards
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["global_batch"] == {"stage1": 128, "stage2": 128}  # 64 per process
    # the trainer's messages come from rank 0 alone
    assert result.stdout.count("global batch stage 1: 64 x 2 = 128") == 1
    assert result.stdout.count("validation split: ") == 1 and result.stdout.count("stage=1 epoch=2") == 1
    rng = torch.load(out / "checkpoint.pt", weights_only=True)["rng"]  # each rank's own generator state saved
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])


def test_kill_and_resume_reaches_the_same_weights(tmp_path, cifar10_zip):
    args = ("--epochs", "4", "--stage2.epochs", "2", "--deterministic", "--seed", "7")
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(reference, cifar10_zip, *args), cwd=REPO, env=_env(), check=True, capture_output=True,
                   timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, cifar10_zip, *args), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists() or len(metrics.read_text().splitlines()) < 6
    resumed = subprocess.run([sys.executable, "-m", "train", "--resume", str(killed), "--no-progress"], cwd=REPO,
                             env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2)]


SPLITS = {  # data set -> (train list, validation list (None: carved), test list, lines per class, classes kept)
    "imagenet_lt": ("ImageNet_LT_val.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt", 3, 4),
    "places_lt": ("Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt", 3, 4),
    "inat18": ("iNaturalist18_val.txt", None, "iNaturalist18_val.txt", 2, 4),
}


def _tiny_split(src: Path, dst: Path, per_class: int, classes: int, skip: int = 0):
    """The first lines of the real split list for the first classes (labels kept), in the real path format."""
    taken, lines = {}, []
    for line in src.read_text().splitlines():
        path, label = line.rsplit(" ", 1)
        label = int(label)
        if label < classes:
            seen = taken.setdefault(label, 0)
            if skip <= seen < skip + per_class:
                lines.append(f"{path} {label}")
            taken[label] = seen + 1
    dst.write_text("\n".join(lines) + "\n")
    return [line.rsplit(" ", 1)[0] for line in lines]


@pytest.mark.parametrize("dataset", sorted(SPLITS))
def test_large_image_datasets_end_to_end(tmp_path, lt_splits, cifar10_zip, dataset):
    """Real split-list lines, real (CIFAR) photographs at those paths, a timm backbone, both stages."""
    train_name, val_name, test_name, per_class, classes = SPLITS[dataset]
    root = tmp_path / "images"
    train_paths = _tiny_split(lt_splits / train_name, tmp_path / "train.txt", per_class, classes)
    test_paths = _tiny_split(lt_splits / test_name, tmp_path / "test.txt", 1, classes, skip=per_class)
    val_paths = _tiny_split(lt_splits / val_name, tmp_path / "val.txt", 1, classes, skip=per_class) if val_name else []
    with zipfile.ZipFile(cifar10_zip) as archive:
        photos = [n for n in archive.namelist() if n.startswith("test/") and n.endswith(".webp")][:64]
        for i, rel in enumerate(sorted(set(train_paths + val_paths + test_paths))):
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(photos[i % len(photos)]) as handle:
                Image.open(handle).convert("RGB").resize((48, 48)).save(target, "JPEG", quality=90)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", "--recipe", dataset, "--out", str(out), "--data-root", str(root),
           "--train-list", str(tmp_path / "train.txt"), "--test-list", str(tmp_path / "test.txt"),
           "--num-classes", str(classes), "--model", "resnet10t", "--pretrained-backbone", "false",
           "--img-size", "32", "--epochs", "1", "--stage2.epochs", "1", "--batch-size", "8",
           "--stage2.batch-size", "8", "--workers", "0", "--no-progress",
           *(["--val-list", str(tmp_path / "val.txt")] if val_name else [])]
    result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["num_samples"] == len(set(test_paths)) and report["dataset"] == dataset
    validation = json.loads((out / "run.json").read_text())["validation"]
    assert validation["images"] == len(val_paths)  # 2 training images per class are too few to carve from
    assert validation["source"].startswith("list file" if val_name else "carved from the training images")
    assert ("val_top1" in metrics(out)[-1]) == bool(val_name)
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == classes and config["pretrained_cfg"]["input_size"] == [3, 32, 32]


def test_unreadable_images_are_all_listed_before_training_or_skipped(tmp_path, lt_splits, cifar10_zip):
    """Two broken training files: the run stops before training naming both; --bad-images skip trains without them."""
    train_paths = _tiny_split(lt_splits / "Places_LT_train.txt", tmp_path / "train.txt", 3, 4)
    val_paths = _tiny_split(lt_splits / "Places_LT_val.txt", tmp_path / "val.txt", 1, 4)
    test_paths = _tiny_split(lt_splits / "Places_LT_test.txt", tmp_path / "test.txt", 1, 4)
    root = tmp_path / "images"
    rels = sorted(set(train_paths + val_paths + test_paths))
    with zipfile.ZipFile(cifar10_zip) as archive:  # a photo each: a validation copy of a training image is refused
        photos = [archive.read(n) for n in archive.namelist() if n.endswith(".webp")][:len(rels)]
    for rel, photo in zip(rels, photos):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.open(__import__("io").BytesIO(photo)).convert("RGB").save(root / rel, "JPEG")
    (root / train_paths[1]).write_bytes(b"")                                      # empty file
    (root / train_paths[4]).write_bytes((root / train_paths[4]).read_bytes()[:40])  # truncated JPEG
    base = [sys.executable, "-m", "train", "--recipe", "places_lt", "--data-root", str(root),
            "--train-list", str(tmp_path / "train.txt"), "--test-list", str(tmp_path / "test.txt"), "--val-list",
            str(tmp_path / "val.txt"), "--num-classes", "4", "--model", "resnet10t", "--pretrained-backbone", "false",
            "--img-size", "32", "--epochs", "1", "--stage", "1", "--batch-size", "4", "--workers", "0", "--no-progress"]
    failed = subprocess.run([*base, "--out", str(tmp_path / "a")], cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=600)
    assert failed.returncode == 2 and "2 unreadable image(s) (2 training, 0 validation, 0 test)" in failed.stderr
    assert train_paths[1] in failed.stderr and train_paths[4] in failed.stderr and "--bad-images skip" in failed.stderr
    skipped = subprocess.run([*base, "--out", str(tmp_path / "b"), "--bad-images", "skip"], cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert skipped.stderr.count("gcl-zoo train: warning: skipped 2 unreadable training image(s)") == 1


def _wait_for_epochs(proc: subprocess.Popen, metrics: Path, epochs: int, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= epochs:
            return
        time.sleep(0.02)
    raise AssertionError("the run ended (or stalled) before it could be signalled")


def _same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_losses(a_dir: Path, b_dir: Path) -> None:
    """The same mean training loss in every epoch of every stage."""
    a, b = (metrics(folder) for folder in (a_dir, b_dir))
    assert [(r["stage"], r["epoch"], r["loss"]) for r in a] == [(r["stage"], r["epoch"], r["loss"]) for r in b]


SIGTERM_ARGS = ("--epochs", "2", "--stage2.epochs", "1", "--deterministic", "--seed", "7", "--max-per-class", "250",
                "--batch-size", "16")


@pytest.mark.slow  # a fault drill: two deterministic runs, one stopped and resumed
def test_sigterm_stops_at_a_step_and_resume_reaches_the_uninterrupted_result(tmp_path, cifar10_zip):
    """SIGTERM in epoch 2: a checkpoint at the next step, exit status 143 with the resume command; --resume then
    ends with the weights and per-epoch losses of a run never interrupted."""
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(reference, cifar10_zip, *SIGTERM_ARGS), cwd=REPO, env=_env(), check=True,
                   capture_output=True, timeout=600)
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(_train_cmd(stopped, cifar10_zip, *SIGTERM_ARGS), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_epochs(proc, stopped / "metrics.jsonl", 1)
    time.sleep(0.3)  # well inside epoch 2
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped on request at stage 1, epoch 2, step" in stderr and f"--resume {stopped}" in stderr
    assert "Traceback" not in stderr
    state = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert state["stage"] == 1 and state["epoch"] == 1 and 0 < state["step"]
    resumed = subprocess.run([sys.executable, "-m", "train", "--resume", str(stopped), "--no-progress"], cwd=REPO,
                             env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_weights(reference, stopped)
    _same_losses(reference, stopped)


def _torchrun(*args: str) -> list:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
            "-m", "train", *args]


@pytest.mark.slow  # a fault drill: two deterministic runs, one stopped and resumed
def test_sigterm_under_ddp_stops_every_rank_at_one_step_and_resumes_to_the_same_result(tmp_path, cifar10_zip):
    """torchrun forwards SIGTERM to its processes; they agree on one step, rank 0 writes the checkpoint with
    every rank's random state and loss sum, and a torchrun --resume ends where an uninterrupted DDP run ends: the
    same weights and per-epoch losses."""
    reference = tmp_path / "reference"
    subprocess.run(_torchrun(*_train_cmd(reference, cifar10_zip, *SIGTERM_ARGS)[3:]), cwd=REPO, env=_env(),
                   check=True, capture_output=True, timeout=600)
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(_torchrun(*_train_cmd(stopped, cifar10_zip, *SIGTERM_ARGS)[3:]), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_epochs(proc, stopped / "metrics.jsonl", 1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=180)
    assert stderr.count("stopped on request at stage") == 2, stderr[-3000:]  # both ranks, the same step
    state = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert 0 < state["step"] and state["step"] % 10 == 0 and len(state["rng"]) == 2
    resumed = subprocess.run(_torchrun("--resume", str(stopped), "--no-progress"), cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_weights(reference, stopped)
    _same_losses(reference, stopped)
