"""Where training and test batches come from: a DataLoader, or tensors resident on the device (fast path).

Both yield normalised float batches on the training device in the sampler's order, so the training loop is the
same for both; the fast path only changes where decoding and augmentation happen.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from gcl_zoo.data.preprocessing import Normalize
from gcl_zoo.sampling import LongTailSampler

from .augment import pad_crop_flip

Batch = tuple[torch.Tensor, torch.Tensor]


class LoaderBatches:
    """A multi-worker DataLoader over a sampler (PIL transforms, as in the authors' pipeline)."""

    def __init__(self, dataset: Dataset, sampler: LongTailSampler, batch_size: int, device: torch.device,
                 workers: int, drop_last: bool = False):
        self.sampler = sampler
        self.device = device
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                 pin_memory=device.type == "cuda", drop_last=drop_last,
                                 persistent_workers=workers > 0)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


class DeviceBatches:
    """The whole uint8 data set on the device; each batch is gathered, cropped, flipped and normalised there."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sampler: LongTailSampler, batch_size: int,
                 device: torch.device, data_cfg: dict, drop_last: bool = False, augment: bool = True):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.sampler = sampler
        self.batch_size = batch_size
        self.device = device
        self.normalize = Normalize(data_cfg["mean"], data_cfg["std"], device)
        self.drop_last = drop_last
        self.augment = augment

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.device, non_blocking=True)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            images = self.images[idx]
            if self.augment:
                images = pad_crop_flip(images)
            yield self.normalize(images), self.labels[idx]


def test_batches(images: torch.Tensor | None, labels: torch.Tensor | None, dataset: Dataset,
                 batch_size: int, device: torch.device, data_cfg: dict, workers: int, rank: int, world: int):
    """This rank's share (``rank::world``) of the test set, in order, without augmentation."""
    if images is not None:
        normalize = Normalize(data_cfg["mean"], data_cfg["std"], device)
        shard = torch.arange(rank, images.shape[0], world)
        for start in range(0, shard.numel(), batch_size):
            idx = shard[start:start + batch_size]
            yield normalize(images[idx].to(device)), labels[idx].to(device)
        return
    subset = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
    for x, y in DataLoader(subset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda"):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
