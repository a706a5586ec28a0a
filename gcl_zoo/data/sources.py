"""Read image files from a folder or from a zip archive with the same layout, with errors that name the file."""
from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .codecs import decode_rgb

__all__ = ["ImageSource", "open_source", "load_rgb", "decode_rgb_tensor", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")


def load_rgb(data: bytes, name: str) -> Image.Image:
    """Decode image bytes to an RGB PIL image; a corrupt file raises ``ValueError`` naming it."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {name}: {exc}; replace or remove the file") from exc


def decode_rgb_tensor(data: bytes, name: str) -> torch.Tensor:
    """Decode image bytes to a uint8 CHW RGB tensor: the tensor decoders (``gcl_zoo.data.codecs``), PIL where
    they give nothing."""
    image = decode_rgb(data)
    return image if image is not None else torch.from_numpy(np.asarray(load_rgb(data, name)).copy()).permute(2, 0, 1)


class ImageSource:
    """Files under ``root`` (a directory or a ``.zip``), addressed by '/'-separated relative paths."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"data root {self.root} does not exist; pass the folder (or .zip) holding the images")
        self.is_zip = self.root.is_file() and zipfile.is_zipfile(self.root)
        if self.root.is_file() and not self.is_zip:
            raise ValueError(f"data root {self.root} is a file but not a zip archive; pass a folder or a .zip")
        self._local = threading.local()  # one ZipFile handle per thread (ZipFile is not thread-safe)
        self._names = None

    def _zip(self) -> zipfile.ZipFile:
        handle = getattr(self._local, "zip", None)
        if handle is None or getattr(self._local, "pid", None) != os.getpid():
            handle = self._local.zip = zipfile.ZipFile(self.root)
            self._local.pid = os.getpid()
        return handle

    def __getstate__(self):  # picklable for DataLoader workers: handles are reopened lazily
        state = self.__dict__.copy()
        state["_local"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def names(self) -> list[str]:
        """Every file's relative path, sorted."""
        if self._names is None:
            if self.is_zip:
                self._names = sorted(n.rstrip("/") for n in self._zip().namelist() if not n.endswith("/"))
            else:
                self._names = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return self._names

    def exists(self, rel: str) -> bool:
        if self.is_zip:
            try:
                self._zip().getinfo(rel)
                return True
            except KeyError:
                return False
        return (self.root / rel).is_file()

    def read_bytes(self, rel: str) -> bytes:
        try:
            if self.is_zip:
                return self._zip().read(rel)
            return (self.root / rel).read_bytes()
        except (KeyError, FileNotFoundError) as exc:
            raise FileNotFoundError(f"image {self.describe(rel)} is missing; check the data root and the list file") from exc

    def load(self, rel: str) -> Image.Image:
        return load_rgb(self.read_bytes(rel), self.describe(rel))

    def describe(self, rel: str) -> str:
        return f"{self.root}:{rel}" if self.is_zip else str(self.root / rel)


def open_source(root: str | Path | ImageSource) -> ImageSource:
    return root if isinstance(root, ImageSource) else ImageSource(root)
