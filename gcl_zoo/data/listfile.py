"""List-file data sets (ImageNet-LT, Places-LT, iNaturalist 2018) and long-tailed ImageFolders.

A list file has one ``<relative path> <label>`` line per image (Liu et al. 2019); paths are relative to a data
root, which may be a folder or a zip with the same layout. Class names are taken from the images' parent
folders when every label has one consistent folder (wnids for ImageNet, scene names for Places).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

from torch.utils.data import Dataset
from tqdm import tqdm

from .sources import IMAGE_EXTENSIONS, ImageSource, open_source

__all__ = ["read_list_file", "ListFileDataset", "ImageFolderLT"]


def read_list_file(list_file: Union[str, Path]) -> List[Tuple[str, int]]:
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


def _class_names(samples: Sequence[Tuple[str, int]], num_classes: int) -> Tuple[str, ...]:
    folders = {}
    for path, label in samples:
        parent = path.rsplit("/", 2)[-2] if "/" in path else ""
        if folders.setdefault(label, parent) != parent:
            return tuple(str(i) for i in range(num_classes))
    return tuple(folders.get(i, str(i)) for i in range(num_classes))


class _LabelledImages(Dataset):
    """Shared behaviour: (image, label) pairs read from an ``ImageSource``, class counts and names."""

    def __init__(self, source: ImageSource, samples: List[Tuple[str, int]], num_classes: Optional[int],
                 classes: Optional[Sequence[str]], transform: Optional[Callable]):
        self.source = source
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.num_classes = num_classes if num_classes is not None else max(self.targets) + 1
        if max(self.targets) >= self.num_classes:
            raise ValueError(f"label {max(self.targets)} is out of range for {self.num_classes} classes")
        self.cls_num_list = [0] * self.num_classes
        for label in self.targets:
            self.cls_num_list[label] += 1
        self.classes = tuple(classes) if classes is not None else _class_names(samples, self.num_classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = self.source.load(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def unreadable_images(self, workers: int = 8, progress: bool = True) -> List[Tuple[str, str]]:
        """Every image that is missing or cannot be decoded, with the reason, in list order.

        Reads and decodes each file once (in threads), so a data set with many bad files is fixed in one go
        rather than one crash at a time mid-epoch.
        """
        def problem(path: str) -> Optional[Tuple[str, str]]:
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
        self.samples = [(path, label) for path, label in self.samples if path not in gone]
        self.targets = [label for _, label in self.samples]
        self.cls_num_list = [0] * self.num_classes
        for label in self.targets:
            self.cls_num_list[label] += 1


class ListFileDataset(_LabelledImages):
    """Images listed in a ``path label`` file, under ``root`` (folder or zip)."""

    def __init__(self, root: Union[str, Path], list_file: Union[str, Path], transform: Optional[Callable] = None,
                 num_classes: Optional[int] = None, classes: Optional[Sequence[str]] = None):
        self.list_file = Path(list_file)
        super().__init__(open_source(root), read_list_file(list_file), num_classes, classes, transform)


class ImageFolderLT(_LabelledImages):
    """``root/<class>/<image>`` (folder or zip), classes in sorted order as torchvision's ImageFolder."""

    def __init__(self, root: Union[str, Path], transform: Optional[Callable] = None):
        source = open_source(root)
        files = [n for n in source.names() if n.lower().endswith(IMAGE_EXTENSIONS) and n.count("/") == 1]
        if not files:
            raise FileNotFoundError(f"no images found as {root}/<class>/<image>; check the data root")
        classes = sorted({n.split("/")[0] for n in files})
        index = {c: i for i, c in enumerate(classes)}
        super().__init__(source, [(n, index[n.split("/")[0]]) for n in files], len(classes), classes, transform)
