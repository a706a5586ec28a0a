"""Predictions on a held-out split (logits, labels, embeddings), sharded over DDP ranks and gathered back in order."""
from __future__ import annotations

import torch
import torch.nn as nn

from gcl_zoo.devices import autocast_for

from .batches import test_batches
from .data import DataBundle
from .distributed import DistInfo, gather_cat


@torch.no_grad()
def predict(model: nn.Module, data: DataBundle, device: torch.device, dist: DistInfo = DistInfo(), amp: bool = False,
            channels_last: bool = False, workers: int = 0,
            resident: tuple[torch.Tensor, torch.Tensor] | None = None,
            with_embeddings: bool = False, batch_size: int = 512, split: str = "test") -> dict[str, torch.Tensor]:
    """Raw logits (float32; ``forward_raw``, before the calibrated scale) and labels of the whole ``split`` ("val" or
    "test"), on the CPU in the split's order; pooled features if asked.

    ``resident`` holds that split's images as a uint8 tensor already on the device (the fast path).
    """
    if split not in ("val", "test"):
        raise ValueError(f"predict reads a held-out split, 'val' or 'test', not {split!r}")
    dataset = getattr(data, split)
    was_training = model.training
    model.eval()
    images, labels = resident if resident is not None else (None, None)
    outs, feats, targets = [], [], []
    for x, y in test_batches(images, labels, dataset, batch_size, device, data.data_cfg, workers,
                             dist.rank, dist.world):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device, torch.bfloat16 if amp else None):
            pooled = model.forward_head(model.forward_features(x), pre_logits=True)
            logits = model.head(pooled)
        outs.append(logits.float())
        targets.append(y)
        if with_embeddings:
            feats.append(pooled.float())
    model.train(was_training)
    n = len(dataset)
    order = torch.cat([torch.arange(r, n, dist.world) for r in range(dist.world)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    result = {"logits": gather_cat(torch.cat(outs)).cpu()[inverse],
              "targets": gather_cat(torch.cat(targets)).cpu()[inverse]}
    if with_embeddings:
        result["embeddings"] = gather_cat(torch.cat(feats)).cpu()[inverse]
    return result

