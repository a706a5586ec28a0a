"""Real test images for the server tests: CIFAR test images from the shared zips, re-encoded on demand."""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from gcl_zoo.data.labels import CIFAR10_CLASSES


def cifar_test_images(zip_path: Path, per_class: int, start: int = 0,
                      classes: Sequence[str] = CIFAR10_CLASSES) -> list[tuple[str, bytes, int]]:
    """``per_class`` test images of every class as (name, original WebP bytes, label), classes interleaved."""
    with zipfile.ZipFile(zip_path) as archive:
        by_class = [[(f"test/{c}/{i:05d}.webp", label) for i in range(start, start + per_class)]
                    for label, c in enumerate(classes)]
        return [(name, archive.read(name), label) for group in zip(*by_class) for name, label in group]


def reencode(data: bytes, fmt: str, size: tuple[int, int] = None, **save_args) -> bytes:
    """The image in ``data`` saved as ``fmt`` (JPEG, PNG, WEBP, PPM, ...), optionally resized first."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None:
        img = img.resize(size, Image.BICUBIC)
    out = io.BytesIO()
    img.save(out, format=fmt, **save_args)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but holds almost no data (a decompression-bomb probe)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
