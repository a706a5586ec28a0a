"""Image decoding: each image's header is checked before a pixel is decoded, then the file is decoded on the CPU
(in the decode pool) or, for JPEGs on a GPU, on the device (in the inference thread, once per batch).

The header check refuses non-images (422), formats the server does not take (415) and decompression bombs (413)
from the header alone; a file that fails to decode answers 422 naming it. Request parsing is ``serve.parsing``.
"""
from __future__ import annotations

import io
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from PIL import Image, UnidentifiedImageError

from gcl_zoo.data.codecs import decode_rgb

from .errors import RequestError
from .headers import read_header

__all__ = ["ImagePayload", "ImageHeader", "SUPPORTED_FORMATS", "TENSOR_DECODABLE", "inspect_image", "decode_pil",
           "decode_uint8", "decode_jpegs_on_device", "DecodeFallbacks", "pil_to_uint8"]

# what Pillow calls the formats the server accepts (MPO: the multi-picture JPEG that phone cameras write)
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF")
PIL_PLUGINS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # the Pillow plugins reading them (MPO: JPEG's)
# (format, mode) of the files the tensor decoders (gcl_zoo.data.codecs) turn into exactly the pixels of PIL's
# ``convert("RGB")`` (tests/test_serve_units.py checks every pair); 16-bit PNGs, CMYK JPEGs and the rest go through PIL
TENSOR_DECODABLE = frozenset({("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"),
                              ("PNG", "LA"), ("PNG", "P"), ("WEBP", "RGB"), ("WEBP", "RGBA")})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagePayload:
    """One image's encoded bytes and the name error messages use for it (a file name or ``inputs[i]``)."""

    name: str
    data: bytes


class ImageHeader(NamedTuple):
    """What an image's header says: Pillow's format and mode names, and (width, height)."""

    format: str
    mode: str
    size: tuple[int, int]



def _header(data: bytes, plugins: Sequence[str] | None) -> tuple[str, str, tuple[int, int]]:
    with Image.open(io.BytesIO(data), formats=plugins) as img:
        return img.format or "unknown", img.mode, img.size


def inspect_image(payload: ImagePayload, max_pixels: int) -> ImageHeader:
    """Read only the header, refusing non-images (422), unsupported formats (415) and more than ``max_pixels``
    pixels (413) before anything is decoded.

    Common PNG, WebP and JPEG headers are read from their bytes (``serve.headers``, the same answer as Pillow's
    without building a plugin); for the rest only the plugins of the accepted formats are asked first: Pillow
    otherwise tries its plugins one by one. Pillow's own warning for
    images over its ``MAX_IMAGE_PIXELS`` is left alone (``warnings.catch_warnings`` is not thread-safe, and
    decoding runs in a thread pool).
    """
    known = read_header(payload.data)
    try:
        if known is not None:
            fmt, mode, (width, height) = known
        else:
            try:
                fmt, mode, (width, height) = _header(payload.data, PIL_PLUGINS)
            except UnidentifiedImageError:  # none of ours: a format the server refuses (415), or no image (422)
                fmt, mode, (width, height) = _header(payload.data, None)
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit, far above any sane max_pixels
        raise RequestError(413, f"{payload.name} has too many pixels ({exc}); the limit is {max_pixels:,} pixels, "
                                "send a smaller image") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(422, f"{payload.name} is not an image or is corrupt ({exc}); send a JPEG, PNG or "
                                "WebP file") from exc
    if fmt not in SUPPORTED_FORMATS:
        raise RequestError(415, f"{payload.name} is a {fmt} image, which the server does not accept; send one of "
                                f"{', '.join(SUPPORTED_FORMATS)}")
    if width * height > max_pixels:
        raise RequestError(413, f"{payload.name} is {width}x{height} = {width * height:,} pixels; the limit is "
                                f"{max_pixels:,} pixels, send a smaller image")
    return ImageHeader(fmt, mode, (width, height))


def decode_pil(payload: ImagePayload) -> Image.Image:
    """Decode to an RGB PIL image exactly as evaluation reads files (``Image.open(...).convert("RGB")``)."""
    try:
        with Image.open(io.BytesIO(payload.data), formats=PIL_PLUGINS) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(422, f"{payload.name} is corrupt and cannot be decoded ({exc}); send the complete "
                                "image file") from exc


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 CHW tensor."""
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3).permute(2, 0, 1)


def decode_uint8(payload: ImagePayload, header: ImageHeader) -> torch.Tensor:
    """The RGB pixels as a uint8 CHW tensor, equal to ``pil_to_uint8(decode_pil(payload))``.

    The tensor decoders (``gcl_zoo.data.codecs``) are faster than PIL for small images, so they read the
    (format, mode) pairs where their pixels are PIL's; PIL reads everything else, and every file they refuse, so a
    corrupt file answers the same 422 either way.
    """
    if (header.format, header.mode) in TENSOR_DECODABLE:
        image = decode_rgb(payload.data)
        if image is not None and tuple(image.shape[1:]) == header.size[::-1]:
            return image
    return pil_to_uint8(decode_pil(payload))


class DecodeFallbacks:
    """How often GPU JPEG decoding fell back, for ``/metrics``: ``per_image`` counts batched calls that failed
    (their images were retried one at a time), ``pil`` counts images the GPU decoder refused (decoded on the CPU).
    A few of either are bad files; a steady stream means the GPU decoder is failing. Thread-safe."""

    KINDS = ("per_image", "pil")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.KINDS, 0)

    def add(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def decode_jpegs_on_device(payloads: Sequence[ImagePayload], device: torch.device,
                           fallbacks: DecodeFallbacks | None = None) -> list[torch.Tensor | RequestError]:
    """Decode JPEGs on the GPU in one batched call (uint8 CHW RGB tensors on ``device``).

    When the batched call fails (one corrupt or exotic file), each image is retried alone and the ones the GPU
    decoder refuses are decoded on the CPU instead; a file no decoder reads comes back as its ``RequestError``
    (422, naming it), so one bad file never fails the other requests in the batch. Each fallback is logged and
    counted in ``fallbacks``; an error that is not the file's (a failed device) fails the batch.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not payloads:  # torchvision refuses an empty list (ValueError): a PNG/WebP-only batch has no JPEG to decode
        return []
    encoded = [torch.frombuffer(bytearray(p.data), dtype=torch.uint8) for p in payloads]
    if device.type == "cuda":
        # torchvision's CUDA decoder allocates its outputs on the caller's stream but writes them from a private
        # stream that does not wait for the caller's (pytorch/vision#9606): a block freed while kernels queued
        # here still read it can be overwritten. Today the stream is idle at this point anyway (each batch ends
        # with a blocking copy of its logits to the host); this wait keeps it so if that copy ever overlaps.
        # tests/test_serve_device_paths.py checks it on a GPU.
        torch.cuda.current_stream(device).synchronize()
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except (RuntimeError, ValueError) as exc:
        log.warning("batched GPU JPEG decoding of %d images failed (%s); decoding them one at a time",
                    len(payloads), exc)
        _count(fallbacks, "per_image")
    images: list[torch.Tensor | RequestError] = []
    for payload, data in zip(payloads, encoded):
        try:
            images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except (RuntimeError, ValueError) as exc:
            log.warning("the GPU JPEG decoder refused %s (%s); decoding it on the CPU", payload.name, exc)
            _count(fallbacks, "pil")
            try:
                images.append(pil_to_uint8(decode_pil(payload)).to(device, non_blocking=True))
            except RequestError as exc:
                images.append(exc)
    return images


def _count(fallbacks: DecodeFallbacks | None, kind: str) -> None:
    if fallbacks is not None:
        fallbacks.add(kind)
