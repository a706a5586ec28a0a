"""Which library turns encoded images into tensors.

torchvision's decoders are deprecated from torchvision 0.29 on, superseded by TorchCodec's (0.16 and newer: the
same pixels, tested against Pillow's in the suite), so TorchCodec decodes where it is installed and torchvision
where it is not (older installs, such as a GPU image with torchvision 0.26 and no TorchCodec). GPU decoding stays
with torchvision's nvJPEG: TorchCodec's wheels on PyPI are CPU builds.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

__all__ = ["backend", "decode_rgb"]

Decoder = Callable[[bytes], torch.Tensor]


@functools.lru_cache(maxsize=1)
def _decoder() -> tuple[str, Decoder]:
    """The library's name and its decode call, chosen on first use (``import gcl_zoo`` does not load TorchCodec)."""
    try:
        from torchcodec.decoders import decode_image
    except (ImportError, RuntimeError, OSError):  # not installed, too old for images, or its libraries do not load
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_image as torchvision_decode

        return "torchvision", lambda data: torchvision_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                                              mode=ImageReadMode.RGB)
    # "auto": 16-bit PNGs stay uint16 (and so go to Pillow), as with torchvision
    return "torchcodec", lambda data: decode_image(data, mode="RGB", output_dtype="auto")


def backend() -> str:
    """Which library decodes: ``"torchcodec"`` or ``"torchvision"``."""
    return _decoder()[0]


def decode_rgb(data: bytes) -> torch.Tensor | None:
    """Image bytes as a uint8 CHW RGB tensor (faster than Pillow for small images); None where the
    decoder gives no such tensor (a format it does not read, a corrupt file, 16-bit samples, an animation)."""
    try:
        image = _decoder()[1](data)
    except (RuntimeError, ValueError):
        return None
    return image if image.dtype == torch.uint8 and image.dim() == 3 else None
