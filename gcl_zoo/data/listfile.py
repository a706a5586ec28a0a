"""List-file data sets (ImageNet-LT, Places-LT, iNaturalist 2018) and long-tailed ImageFolders.

A list file has one ``<relative path> <label>`` line per image (Liu et al. 2019); paths are relative to a data
root, which may be a folder or a zip with the same layout. Class names are taken from the images' parent
folders when every label has one consistent folder (wnids for ImageNet, scene names for Places).
Where no validation images are published, ``stratified_holdout`` carves them from the training images.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from .sources import IMAGE_EXTENSIONS, ImageSource, open_source

__all__ = ["read_list_file", "stratified_holdout", "ListFileDataset", "ImageFolderLT"]


def read_list_file(list_file: str | Path) -> list[tuple[str, int]]:
    """Parse ``path label`` lines; a malformed line raises ``ValueError`` naming the file and line."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"list file {list_file} does not exist; pass the split's .txt file")
    samples = []
    with list_file.open() as handle:
        for line_no, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path, _, label = line.rpartition(" ")
            if not path or not label.lstrip("-").isdigit():
                raise ValueError(f"{list_file}:{line_no}: expected '<relative path> <integer label>', got {line!r}")
            if int(label) < 0:
                raise ValueError(f"{list_file}:{line_no}: labels must be >= 0, got {label}")
            samples.append((path.strip(), int(label)))
    if not samples:
        raise ValueError(f"list file {list_file} holds no '<path> <label>' lines")
    return samples


def stratified_holdout(targets: Sequence[int], num_classes: int, fraction: float, min_train: int,
                       seed: int = 0) -> list[int]:
    """Indices of a seeded, stratified held-out share: ``round(fraction * n_c)`` random images of each class, but
    never so many that the class keeps fewer than ``min_train`` (classes that small give none). The same seed gives
    the same share; the indices come back sorted."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for index, label in enumerate(targets):
        by_class[label].append(index)
    rng = np.random.RandomState(seed)
    held = []
    for members in by_class:
        take = max(0, min(round(fraction * len(members)), len(members) - min_train))
        held.extend(members[i] for i in rng.permutation(len(members))[:take])
    return sorted(held)


def _class_names(samples: Sequence[tuple[str, int]], num_classes: int) -> tuple[str, ...]:
    folders = {}
    for path, label in samples:
        parent = path.rsplit("/", 2)[-2] if "/" in path else ""
        if folders.setdefault(label, parent) != parent:
            return tuple(str(i) for i in range(num_classes))
    return tuple(folders.get(i, str(i)) for i in range(num_classes))


class _LabelledImages(Dataset):
    """Shared behaviour: (image, label) pairs read from an ``ImageSource``, class counts and names."""

    def __init__(self, source: ImageSource, samples: list[tuple[str, int]], num_classes: int | None,
                 classes: Sequence[str] | None, transform: Callable | None):
        self.source = source
        labels = [label for _, label in samples]
        self.num_classes = num_classes if num_classes is not None else max(labels) + 1
        if max(labels) >= self.num_classes:
            raise ValueError(f"label {max(labels)} is out of range for {self.num_classes} classes")
        self._set_samples(samples)
        self.classes = tuple(classes) if classes is not None else _class_names(samples, self.num_classes)
        self.transform = transform

    def _set_samples(self, samples: list[tuple[str, int]]) -> None:
        """Take ``samples`` as the images; the labels and class counts follow them."""
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.cls_num_list = [0] * self.num_classes
        for label in self.targets:
            self.cls_num_list[label] += 1

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = self.source.load(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def unreadable_images(self, workers: int = 8, progress: bool = True) -> list[tuple[str, str]]:
        """Every image that is missing or cannot be decoded, with the reason, in list order.

        Reads and decodes each file once (in threads), so a data set with many bad files is fixed in one go
        rather than one crash at a time mid-epoch.
        """
        def problem(path: str) -> tuple[str, str] | None:
            try:
                self.source.load(path)
                return None
            except (OSError, ValueError) as exc:  # missing (FileNotFoundError), truncated or not an image
                return path, str(exc)

        paths = [path for path, _ in self.samples]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            found = list(tqdm(pool.map(problem, paths), total=len(paths), desc="checking images", unit="img",
                              disable=not progress, leave=False))
        return [p for p in found if p is not None]

    def drop(self, paths: Sequence[str]) -> None:
        """Leave the images at ``paths`` out (class counts follow; an emptied class is an error later)."""
        gone = set(paths)
        self._set_samples([(path, label) for path, label in self.samples if path not in gone])

    def subset(self, indices: Sequence[int], transform: Callable | None) -> _LabelledImages:
        """The images at ``indices`` as a data set of their own (same source, classes and class count), for
        splitting one list or folder into training and held-out parts."""
        part = copy.copy(self)
        part._set_samples([self.samples[i] for i in indices])
        part.transform = transform
        return part


class ListFileDataset(_LabelledImages):
    """Images listed in a ``path label`` file, under ``root`` (folder or zip)."""

    def __init__(self, root: str | Path, list_file: str | Path, transform: Callable | None = None,
                 num_classes: int | None = None, classes: Sequence[str] | None = None):
        self.list_file = Path(list_file)
        super().__init__(open_source(root), read_list_file(list_file), num_classes, classes, transform)


class ImageFolderLT(_LabelledImages):
    """``root/<class>/<image>`` (folder or zip), classes in sorted order as torchvision's ImageFolder."""

    def __init__(self, root: str | Path, transform: Callable | None = None):
        source = open_source(root)
        files = [n for n in source.names() if n.lower().endswith(IMAGE_EXTENSIONS) and n.count("/") == 1]
        if not files:
            raise FileNotFoundError(f"no images found as {root}/<class>/<image>; check the data root")
        classes = sorted({n.split("/")[0] for n in files})
        index = {c: i for i, c in enumerate(classes)}
        super().__init__(source, [(n, index[n.split("/")[0]]) for n in files], len(classes), classes, transform)
