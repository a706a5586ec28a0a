"""Accuracy for long-tailed evaluation: top-k, per class, many/medium/few shot, confusion matrix; and two models
compared on the same images, paired.

The shot groups follow Liu et al. (2019): many-shot classes have more than 100 training images, few-shot fewer
than 20, medium-shot the rest. Group accuracy is the mean of its classes' accuracies (so each class counts once,
as the test sets are balanced).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["shot_groups", "confusion_matrix", "accuracy_report", "mcnemar_p", "paired_bootstrap", "MANY_SHOT_MIN",
           "FEW_SHOT_MAX"]

MANY_SHOT_MIN = 100  # many-shot: more than this many training images
FEW_SHOT_MAX = 20    # few-shot: fewer than this many


def shot_groups(cls_num_list: Sequence[int], many: int = MANY_SHOT_MIN, few: int = FEW_SHOT_MAX) -> dict[str, list[int]]:
    """Class indices of the many (> many), medium and few (< few) shot groups."""
    groups = {"many": [], "medium": [], "few": []}
    for c, n in enumerate(cls_num_list):
        groups["many" if n > many else "few" if n < few else "medium"].append(c)
    return groups


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``cm[t, p]`` = number of test images of class t predicted as p."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy_report(logits: torch.Tensor, targets: torch.Tensor, train_cls_num_list: Sequence[int] | None = None,
                    topk: Sequence[int] = (1, 5), with_confusion: bool = False) -> dict:
    """Accuracies in percent from (N, C) logits and (N,) labels.

    Returns ``top1``, ``top5`` (each k < C), ``per_class`` (list, NaN-free: classes absent from the test set get
    None), ``many``/``medium``/``few`` when training counts are given (None for an empty group), ``num_samples``,
    and ``confusion`` (nested lists) when asked.
    """
    logits, targets = logits.detach().float().cpu(), targets.detach().long().cpu()
    num_classes = logits.shape[1]
    report: dict = {"num_samples": int(targets.numel())}
    ranked = logits.topk(min(max(topk), num_classes), dim=1).indices
    for k in topk:
        if k <= num_classes:
            hits = (ranked[:, :k] == targets[:, None]).any(dim=1)
            report[f"top{k}"] = 100.0 * hits.float().mean().item()
    preds = ranked[:, 0]
    cm = confusion_matrix(preds, targets, num_classes)
    support = cm.sum(dim=1)
    per_class = [100.0 * cm[c, c].item() / support[c].item() if support[c] else None for c in range(num_classes)]
    report["per_class"] = per_class
    if train_cls_num_list is not None:
        if len(train_cls_num_list) != num_classes:
            raise ValueError(f"train_cls_num_list has {len(train_cls_num_list)} entries for {num_classes} classes")
        for group, classes in shot_groups(train_cls_num_list).items():
            values = [per_class[c] for c in classes if per_class[c] is not None]
            report[group] = sum(values) / len(values) if values else None
            report[f"{group}_classes"] = len(classes)
    if with_confusion:
        report["confusion"] = cm.tolist()
    return report


def mcnemar_p(base_only: int, other_only: int) -> float:
    """Exact two-sided McNemar p-value of two models on the same images, from the images only one of them gets
    right: under "equally good" those discordant pairs are a fair coin's tosses."""
    n, k = base_only + other_only, min(base_only, other_only)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired_bootstrap(base_correct: torch.Tensor, other_correct: torch.Tensor, draws: int = 10000,
                     seed: int = 0) -> tuple[float, float]:
    """95% interval of the top-1 difference (points, other - base), resampling images with replacement, the same
    draw for both models."""
    generator = torch.Generator().manual_seed(seed)
    diff = other_correct.float() - base_correct.float()
    picks = torch.randint(len(diff), (draws, len(diff)), generator=generator)
    means = diff[picks].mean(dim=1) * 100
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975])).tolist()
    return low, high
