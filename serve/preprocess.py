"""Pre-processing from the model's ``pretrained_cfg``, identical to evaluation.

Two pipelines share one interface, two steps of ``serve.pipeline``: ``prepare`` runs per request in the decode
thread pool, ``collate`` runs per batch in the inference thread and returns the model's input batch. Images are
decoded in one of two places, each a named step: ``prepare`` decodes on the CPU, and on a GPU
``DevicePipeline.decode_on_device`` decodes the JPEGs ``prepare`` left encoded, once per batch.

* ``PilPipeline`` (CPU): timm's evaluation transform split the way timm's own prefetcher splits it: the PIL
  stages (resize, centre crop) per image, producing uint8 tensors, then scaling and normalisation once per batch.
  The arithmetic is the same element by element, so a server answer equals ``model(transform(image))`` offline.
  Images that already have the model's input size, where those PIL stages change nothing, skip them and are
  decoded straight to a tensor (``decode_uint8``: the same pixels, faster for small images).
* ``DevicePipeline`` (GPU): JPEGs stay encoded until the batch is formed and are then decoded, resized and
  cropped on the GPU; other files are decoded, resized and cropped in the thread pool (``resize_crop``, the same
  steps as the evaluation transform on uint8 tensors), and the batch is normalised on the GPU.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from torchvision.transforms import InterpolationMode

from gcl_zoo.data.preprocessing import Normalize

from .decoding import (
    TENSOR_DECODABLE,
    DecodeFallbacks,
    ImageHeader,
    ImagePayload,
    decode_jpegs_on_device,
    decode_pil,
    decode_uint8,
    pil_to_uint8,
)
from .errors import RequestError

__all__ = ["data_config", "uint8_transform", "resize_crop", "resize_crop_normalize",
           "check_tensor_support", "PilPipeline", "DevicePipeline", "create_pipeline", "Pipeline"]

JPEG_FORMATS = ("JPEG", "MPO")
_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


def data_config(model: nn.Module) -> dict[str, Any]:
    """The evaluation data config (input size, crop, interpolation, mean/std) timm resolves for ``model``."""
    return resolve_model_data_config(model)


def uint8_transform(config: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform's per-image stages, ending in a uint8 CHW tensor (timm's prefetcher mode)."""
    return create_transform(**config, is_training=False, use_prefetcher=True)


def _scale_size(config: dict[str, Any]) -> tuple[int, int]:
    crop_pct = config.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
    return tuple(math.floor(x / crop_pct) for x in config["input_size"][1:])


def check_tensor_support(config: dict[str, Any]) -> None:
    """The tensor path mirrors timm's 'center' (square target) and 'squash' crops; others use the PIL path."""
    mode = config.get("crop_mode") or "center"
    if config.get("interpolation", "bilinear") not in _INTERPOLATION:
        raise ValueError(f"interpolation {config['interpolation']!r} has no tensor equivalent")
    if mode == "center" and len(set(_scale_size(config))) != 1:
        raise ValueError("'center' crops to a non-square input size have no tensor equivalent")
    if mode not in ("center", "squash"):
        raise ValueError(f"crop_mode {mode!r} has no tensor equivalent")


def resize_crop(image: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
    """One uint8 CHW image (any size, on any device) -> the model's input size, uint8, on the same device: resize
    (shorter edge to ``input_size / crop_pct``, or both edges for 'squash', antialiased like PIL), then centre
    crop to ``input_size``, as timm's evaluation transform does."""
    check_tensor_support(config)
    scale = _scale_size(config)
    size = [scale[0]] if (config.get("crop_mode") or "center") == "center" else list(scale)
    interpolation = _INTERPOLATION[config.get("interpolation", "bilinear")]
    return TF.center_crop(TF.resize(image, size, interpolation=interpolation, antialias=True),
                          list(config["input_size"][1:]))


def resize_crop_normalize(images: Sequence[torch.Tensor], config: dict[str, Any],
                          normalize: Normalize | None = None) -> torch.Tensor:
    """uint8 CHW images (any sizes, on any device) -> one normalised float NCHW batch on the same device: each
    ``resize_crop``-ed, then scaled to [0, 1] and normalised (with ``normalize``'s constants when a pipeline made
    them once on the device)."""
    batch = torch.stack([resize_crop(img, config) for img in images])
    return (normalize or Normalize(config["mean"], config["std"], batch.device))(batch)


def _size_left_unchanged(transform: Callable[[Image.Image], torch.Tensor],
                         config: dict[str, Any]) -> tuple[int, int] | None:
    """(width, height) of the model's input when ``transform`` returns such an image's pixels untouched (a resize
    to the size it has and a crop to all of it), else None; tried once on a noise image, which any resampling
    would change."""
    height, width = config["input_size"][1:]
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    return (width, height) if torch.equal(transform(noise), pil_to_uint8(noise)) else None


class PilPipeline:
    """CPU pre-processing: decode, resize and crop each image in the thread pool; normalise per batch."""

    def __init__(self, config: dict[str, Any], device: torch.device):
        self.config = config
        self.transform = uint8_transform(config)
        self.unchanged_size = _size_left_unchanged(self.transform, config)
        self.normalize = Normalize(config["mean"], config["std"], device)

    def prepare(self, payload: ImagePayload, header: ImageHeader) -> torch.Tensor:
        if header.size == self.unchanged_size:
            return decode_uint8(payload, header)
        return self.transform(decode_pil(payload))

    def collate(self, items: Sequence[torch.Tensor],
                device: torch.device) -> tuple[torch.Tensor, dict[int, RequestError]]:
        """The input batch, and the items that could not be decoded (none here: ``prepare`` decoded them)."""
        return self.normalize(torch.stack(list(items)).to(device)), {}


class DevicePipeline:
    """GPU pre-processing: JPEGs are decoded on ``device`` per batch, then resized and cropped there; other files
    are decoded, resized and cropped on the CPU in the thread pool; the batch is normalised on ``device``.

    Only the JPEGs whose pixels the GPU decoder gives as PIL does (RGB and greyscale) go to it; CMYK and YCCK
    JPEGs are decoded by PIL, as on the CPU path, so both paths answer the same for the same file. What waits
    for a batch is small either way: a JPEG's encoded bytes, or another file's pixels at the model's input size
    (a full-size decoded image would hold up to ``--max-pixels`` x 3 bytes each until its batch runs).
    """

    def __init__(self, config: dict[str, Any], device: torch.device):
        check_tensor_support(config)
        self.config = config
        self.normalize = Normalize(config["mean"], config["std"], device)
        self.fallbacks = DecodeFallbacks()

    def prepare(self, payload: ImagePayload, header: ImageHeader) -> ImagePayload | torch.Tensor:
        if header.format in JPEG_FORMATS and ("JPEG", header.mode) in TENSOR_DECODABLE:
            return payload
        return resize_crop(decode_uint8(payload, header), self.config)

    def decode_on_device(self, items: Sequence[ImagePayload | torch.Tensor],
                         device: torch.device) -> list[torch.Tensor | RequestError]:
        """The batch's decoding step, in the inference thread: the JPEGs ``prepare`` kept encoded are decoded on
        ``device`` in one call, then resized and cropped there; the other items (decoded in the pool) stay as they
        are. A file no decoder reads is its ``RequestError``, in its place."""
        jpeg_at = [i for i, item in enumerate(items) if isinstance(item, ImagePayload)]
        images: list[Any] = list(items)
        decoded_jpegs = decode_jpegs_on_device([items[i] for i in jpeg_at], device, self.fallbacks)
        for i, decoded in zip(jpeg_at, decoded_jpegs):
            images[i] = decoded if isinstance(decoded, RequestError) else resize_crop(decoded, self.config)
        return images

    def collate(self, items: Sequence[ImagePayload | torch.Tensor],
                device: torch.device) -> tuple[torch.Tensor | None, dict[int, RequestError]]:
        """The input batch of the decodable items (in order; None if there are none) and the failed ones:
        ``decode_on_device``, then one normalised batch on ``device``."""
        images = self.decode_on_device(items, device)
        failed = {i: img for i, img in enumerate(images) if isinstance(img, RequestError)}
        good = [img.to(device, non_blocking=True) for img in images if not isinstance(img, RequestError)]
        return (self.normalize(torch.stack(good)) if good else None), failed


Pipeline = PilPipeline | DevicePipeline


def create_pipeline(config: dict[str, Any], device: torch.device) -> Pipeline:
    """The device pipeline on CUDA when the model's crop has a tensor equivalent, else the PIL pipeline."""
    if device.type == "cuda":
        try:
            return DevicePipeline(config, device)
        except ValueError:
            pass
    return PilPipeline(config, device)
