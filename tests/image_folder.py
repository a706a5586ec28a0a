"""A small long-tailed ImageFolder of real JPEGs of mixed sizes (CIFAR-10 test photos, enlarged and re-encoded), as a
user's own data would look: ``train/<class>/*.jpg`` with a few dozen down to a handful of images, ``test/``."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from serve_images import cifar_test_images, reencode

CLASSES = ("airplane", "automobile", "bird", "cat")
TRAIN_COUNTS = (24, 12, 8, 6)  # long-tailed: the rarest class keeps 5 training images after the validation carve
TEST_PER_CLASS = 3
SIZES = ((48, 40), (64, 64), (40, 56), (72, 48))  # (width, height): no two neighbours alike


def write_image_folder(root: Path, cifar10_zip: Path, counts: Sequence[int] = TRAIN_COUNTS,
                       test_per_class: int = TEST_PER_CLASS, names: Sequence[str] = CLASSES) -> dict[str, Path]:
    """``root/train`` and ``root/test`` filled with JPEGs (``0001.jpg``, ...) of ``CLASSES``' photos, in class
    folders called ``names``; returns both folders by split name."""
    per_class = max(counts) + test_per_class
    images = cifar_test_images(cifar10_zip, per_class)  # every class interleaved, in label order
    by_label: dict[int, list] = {}
    for _, data, label in images:
        by_label.setdefault(label, []).append(data)
    folders = {"train": root / "train", "test": root / "test"}
    for label, name in enumerate(names):
        photos = by_label[label]
        splits = {"train": photos[:counts[label]], "test": photos[max(counts):max(counts) + test_per_class]}
        for split, chosen in splits.items():
            folder = folders[split] / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(chosen):
                size = SIZES[(i + label) % len(SIZES)]
                (folder / f"{i + 1:04d}.jpg").write_bytes(reencode(data, "JPEG", size, quality=90))
    return folders
