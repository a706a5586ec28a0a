"""Learning-rate schedules of the recipes, per epoch.

Written out rather than taken from ``timm.scheduler`` because the paper's recipe needs exact epochs
(lr * (1 + e) / 5 warm-up, x0.1 from epoch 160 and 180), and timm's milestone and warm-up conventions have
shifted between releases; these few lines give the same numbers on every version.
"""
from __future__ import annotations

import math


def lr_at(section: dict, epoch: int) -> float:
    """Learning rate for 0-based ``epoch`` of a recipe section (stage 1 or stage 2)."""
    base, warmup = section["lr"], section.get("warmup_epochs", 0)
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    if section["sched"] == "step":
        # stage 2 has no milestones (decay_epochs and decay_rate are stage-1 fields, defaulted by the recipe)
        passed = sum(epoch >= milestone for milestone in section.get("decay_epochs", []))
        return base * section["decay_rate"] ** passed if passed else base
    if section["sched"] == "cosine":
        span = max(section["epochs"] - warmup, 1)
        return base * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / span))
    return base
