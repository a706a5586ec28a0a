"""Long-tailed CIFAR-10/100 (Cao et al. 2019), giving exactly the subsets the literature trains on.

Per class c (in label order) the recipe shuffles that class's image positions with one NumPy RandomState seeded
once (seed 0 in the papers) and keeps the first ``n_c``, where ``n_c = int(n_max * (1/ratio)^(c / (C-1)))``
("exp") or n_max for the first half of the classes and ``int(n_max / ratio)`` for the rest ("step").
The validation split takes the last ``val_per_class`` positions of the same shuffled order (all unused ones where
a class has fewer), so it is fixed by the seed and never shares an image with the training subset or the test set.
Images are read from a torchvision CIFAR root (``cifar-10-batches-py`` / ``cifar-100-python``) or from an
ImageFolder laid out as ``train/<class>/<NNNNN>.<ext>`` and ``test/...`` (a folder or a zip), where NNNNN is the
image's position within its class in the original order. All images are decoded once into memory (32x32 uint8).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .labels import CIFAR10_CLASSES, CIFAR100_CLASSES
from .sources import IMAGE_EXTENSIONS, ImageSource, decode_rgb_tensor, open_source

__all__ = ["long_tail_counts", "long_tail_positions", "validation_positions", "CIFARLongTail", "PROFILES", "SPLITS",
           "VAL_PER_CLASS", "SUBSET_MANIFEST"]

PROFILES = ("exp", "step")
SPLITS = ("train", "val", "test")
# validation images per class: CIFAR-100's class 1 leaves only 20 training images unused at ratio 50
VAL_PER_CLASS = {10: 500, 100: 20}
SUBSET_MANIFEST = "class_sizes.json"  # in a packed subset archive: {"train": [...], "test": [...]} full class sizes
_TORCHVISION_DIRS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}


def long_tail_counts(n_max: int, num_classes: int, imb_ratio: float, profile: str = "exp") -> list[int]:
    """Images kept per class for an imbalance ratio ``n_max / n_min`` (ratio 1 keeps everything)."""
    if imb_ratio < 1:
        raise ValueError(f"imbalance ratio must be >= 1 (n_max / n_min), got {imb_ratio}")
    if num_classes < 2:
        raise ValueError("a long-tailed data set needs at least 2 classes")
    if profile == "exp":
        return [int(n_max * (1.0 / imb_ratio) ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    if profile == "step":
        half = num_classes // 2
        return [n_max] * half + [int(n_max / imb_ratio)] * (num_classes - half)
    raise ValueError(f"unknown imbalance profile {profile!r}; choose one of {', '.join(PROFILES)}")


def _shuffled_orders(class_sizes: Sequence[int], counts: Sequence[int], seed: int) -> list[np.ndarray]:
    """Per class, its positions in the recipe's seeded order (one RandomState, classes in label order)."""
    rng = np.random.RandomState(seed)
    orders = []
    for size, n in zip(class_sizes, counts):
        if n > size:
            raise ValueError(f"asked for {n} images from a class that has only {size}")
        order = np.arange(size)
        rng.shuffle(order)
        orders.append(order)
    return orders


def long_tail_positions(class_sizes: Sequence[int], counts: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """Per class, the positions (within the class, original order) that the seeded recipe keeps."""
    return [order[:n] for order, n in zip(_shuffled_orders(class_sizes, counts, seed), counts)]


def validation_positions(class_sizes: Sequence[int], counts: Sequence[int], seed: int = 0,
                         per_class: int = 500) -> list[np.ndarray]:
    """Per class, the validation positions: the last ``per_class`` of the seeded order, never one of the first
    ``counts[c]`` that the training subset keeps (a class with fewer unused images gives all of them)."""
    if per_class < 0:
        raise ValueError(f"validation images per class must be >= 0, got {per_class}")
    orders = _shuffled_orders(class_sizes, counts, seed)
    return [order[len(order) - min(per_class, len(order) - n):] for order, n in zip(orders, counts)]


def _class_names(num_classes: int) -> tuple[str, ...]:
    if num_classes == 10:
        return CIFAR10_CLASSES
    if num_classes == 100:
        return CIFAR100_CLASSES
    raise ValueError(f"CIFAR has 10 or 100 classes, not {num_classes}")


def _read_torchvision(root: Path, num_classes: int, train: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if num_classes == 10 else CIFAR100
    ds = cls(str(root), train=train, download=False)
    return np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64)


def _resolve_split(split: str | None, train: bool | None) -> str:
    if split is None:
        return "test" if train is False else "train"
    if split not in SPLITS:
        raise ValueError(f"unknown CIFAR split {split!r}; choose one of {', '.join(SPLITS)}")
    if train is not None:
        raise ValueError("pass either split= or train=, not both (split='train' | 'val' | 'test')")
    return split


class CIFARLongTail(Dataset):
    """CIFAR-10/100 with a long-tailed training split, a validation split from the training images that subset
    leaves unused, and the balanced test split (``split``: train | val | test; ``train=False`` means test).

    ``max_per_class`` caps the largest class (train) or every class (test), for quick runs; ``val_per_class``
    (default ``VAL_PER_CLASS``) sizes the validation split, which depends on the imbalance only through which
    images the training subset keeps. Exposes ``data`` (N, 32, 32, 3) uint8, ``targets``, ``classes``,
    ``cls_num_list`` and, for each image, ``positions`` (its index within its class in the original order of its
    archive split: the identity of the image).
    """

    def __init__(self, root: str | Path, num_classes: int = 10, train: bool | None = None,
                 imb_ratio: float = 100, profile: str = "exp", seed: int = 0, transform: Callable | None = None,
                 max_per_class: int | None = None, split: str | None = None,
                 val_per_class: int | None = None):
        self.classes = _class_names(num_classes)
        self.transform = transform
        self.split = _resolve_split(split, train)
        self.train = self.split == "train"
        self.val_per_class = VAL_PER_CLASS[num_classes] if val_per_class is None else val_per_class
        root = Path(root)
        members = self._members(root, num_classes, "test" if self.split == "test" else "train")
        sizes = [len(m) for m in members]
        if min(sizes) == 0:
            raise ValueError(f"class {self.classes[sizes.index(0)]!r} has no images under {root}; check the data root")
        n_max = min(max(sizes), max_per_class or max(sizes))
        keep = self._positions(sizes, n_max, imb_ratio, profile, seed)
        self.data = np.concatenate([self._pick(members[c], k, c) for c, k in enumerate(keep)])
        self.targets = np.concatenate([np.full(len(k), c, dtype=np.int64) for c, k in enumerate(keep)]).tolist()
        self.positions = np.concatenate(keep).astype(np.int64)
        self.cls_num_list = [len(k) for k in keep]

    def _positions(self, sizes: list[int], n_max: int, imb_ratio: float, profile: str, seed: int) -> list[np.ndarray]:
        """Per class, the positions this split takes."""
        if self.split == "test":
            return [np.arange(min(size, n_max)) for size in sizes]
        counts = long_tail_counts(n_max, len(sizes), imb_ratio, profile)
        if self.train:
            return long_tail_positions(sizes, counts, seed)
        return validation_positions(sizes, counts, seed, self.val_per_class)

    def _members(self, root: Path, num_classes: int, split: str) -> list:
        """Per class, in original order: an array of its images (torchvision) or its file names (ImageFolder);
        ``split`` is the archive's split (train or test)."""
        if (root / _TORCHVISION_DIRS[num_classes]).is_dir():
            data, targets = _read_torchvision(root, num_classes, split == "train")
            return [data[targets == c] for c in range(num_classes)]
        self.source = open_source(root)
        files = [n for n in self.source.names() if n.startswith(split + "/") and n.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            raise FileNotFoundError(
                f"{root} holds neither a torchvision CIFAR folder ({_TORCHVISION_DIRS[num_classes]}) nor "
                f"'{split}/<class>/<NNNNN>.<ext>' images; point the data root at one of them")
        by_class = {name: [] for name in self.classes}
        for name in files:
            parts = name.split("/")
            if len(parts) != 3 or parts[1] not in by_class:
                raise ValueError(f"unexpected file {self.source.describe(name)}: expected {split}/<class>/<NNNNN>.<ext> "
                                 f"with a class among {', '.join(self.classes[:5])}, ...")
            by_class[parts[1]].append(name)
        ordered = [sorted(by_class[c], key=_position_key) for c in self.classes]
        if not self.source.exists(SUBSET_MANIFEST):
            return ordered
        # a packed subset: files keep their original positions, the manifest gives the full class sizes
        sizes = json.loads(self.source.read_bytes(SUBSET_MANIFEST))[split]
        slots = [[None] * size for size in sizes]
        for c, names in enumerate(ordered):
            for name in names:
                slots[c][int(Path(name).stem)] = name
        return slots

    def _pick(self, members, keep: np.ndarray, label: int) -> np.ndarray:
        if isinstance(members, np.ndarray):
            return members[keep]
        names = [members[i] for i in keep]
        if None in names:
            missing = int(keep[names.index(None)])
            if self.split == "val":
                raise FileNotFoundError(
                    f"{self.source.root} is a packed subset without validation image position {missing:05d} of class "
                    f"{self.classes[label]!r}; pack the validation positions too (validation_positions), use the full "
                    "data, or pass val_per_class=0 (--val-per-class 0) to go without a validation split")
            raise FileNotFoundError(f"{self.source.root} is a packed subset without image position {missing:05d} of a "
                                    "class; pack it for this imbalance ratio (or a smaller one) or use the full data")
        return self._decode(self.source, names)

    @staticmethod
    def _decode(source: ImageSource, names: list[str]) -> np.ndarray:
        if not names:
            return np.zeros((0, 32, 32, 3), dtype=np.uint8)
        images = [decode_rgb_tensor(source.read_bytes(n), source.describe(n)) for n in names]
        shapes = {tuple(img.shape) for img in images}
        if len(shapes) != 1:
            raise ValueError(f"CIFAR images must all be 32x32 RGB; found shapes {sorted(shapes)} under {source.root}")
        return torch.stack(images).permute(0, 2, 3, 1).numpy()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as one uint8 NCHW tensor and the labels, for device-resident training."""
        return torch.from_numpy(self.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(self.targets)


def _position_key(name: str) -> tuple[int, str]:
    stem = Path(name).stem
    return (int(stem), name) if stem.isdigit() else (1 << 62, name)
