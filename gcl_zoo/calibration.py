"""Calibrated scores: fit the one scale that multiplies a model's raw logits, and measure how well scores match.

A GCL model is trained with a fixed scale ``s`` on its cosine logits; ``softmax(s * cos)`` is then far from a
probability (on CIFAR-100-LT a score of 0.3 is right about half the time). Temperature scaling (Guo et al., 2017)
keeps every prediction and fits one number on held-out data: here the scale ``a`` of ``softmax(a * raw)``, found
by minimising the negative log-likelihood of the validation split. ``a = s / T`` for the usual temperature ``T``.

Calibration error is the expected calibration error over 15 equal-width confidence bins (ECE, Naeini et al. 2015),
reported with the NLL; ``reliability_bins`` gives the per-bin accuracy and confidence for a reliability diagram.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

__all__ = ["ECE_BINS", "fit_logit_scale", "nll", "expected_calibration_error", "reliability_bins", "confidence_bins",
           "ece_of_bins",
           "calibration_report", "calibrate_model"]

ECE_BINS = 15


def _checked(logits: torch.Tensor, targets: torch.Tensor) -> tuple:
    logits, targets = logits.detach().double().cpu(), targets.detach().long().cpu()
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"need (N, C) logits and (N,) labels, got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("no held-out images to calibrate on; the validation split is empty")
    return logits, targets


def nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels under ``softmax(logits)``."""
    logits, targets = _checked(logits, targets)
    return float(F.cross_entropy(logits, targets))


def fit_logit_scale(raw_logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The scale ``a > 0`` minimising the NLL of ``softmax(a * raw_logits)`` on held-out data.

    The NLL is convex in ``a`` (log-sum-exp of a linear function minus a linear term), so Newton's method on
    ``log a`` from a = 1 converges to the one minimum; it is guarded by halving steps that do not lower the loss.
    """
    raw, targets = _checked(raw_logits, targets)
    picked = raw.gather(1, targets[:, None]).squeeze(1)

    def loss_grad_hess(log_a: float) -> tuple:
        a = math.exp(log_a)
        probs = (a * raw).softmax(dim=1)
        mean = (probs * raw).sum(dim=1)  # E_p[z]
        var = (probs * raw * raw).sum(dim=1) - mean ** 2  # Var_p[z]
        loss = float((torch.logsumexp(a * raw, dim=1) - a * picked).mean())
        grad_a = float((mean - picked).mean())
        hess_a = float(var.mean())
        # derivatives with respect to log a (chain rule): d/du = a d/da, d2/du2 = a^2 d2/da2 + a d/da
        return loss, a * grad_a, a * a * hess_a + a * grad_a

    log_a = 0.0
    loss, grad, hess = loss_grad_hess(log_a)
    for _ in range(max_iter):
        step = -grad / hess if hess > 1e-12 else -math.copysign(1.0, grad)
        step = max(-2.0, min(2.0, step))
        while abs(step) > 1e-12:
            candidate = loss_grad_hess(log_a + step)
            if candidate[0] <= loss + 1e-15:
                break
            step /= 2
        else:
            break
        log_a += step
        loss, grad, hess = candidate
        if abs(step) < 1e-10:
            break
    return math.exp(log_a)


def reliability_bins(logits: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> List[Dict[str, float]]:
    """Per equal-width confidence bin: its edges, image count, mean confidence and accuracy (top-1 score)."""
    logits, targets = _checked(logits, targets)
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    return confidence_bins(confidence, predicted == targets, bins)


def confidence_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> List[Dict[str, float]]:
    """``reliability_bins`` from top-1 scores and whether each top-1 label was right (what a served answer gives)."""
    confidence, correct = confidence.double(), correct.double()
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur with C >= 1 classes
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    out = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        out.append({"lower": b / bins, "upper": (b + 1) / bins, "count": count,
                    "confidence": float(confidence[mask].mean()) if count else None,
                    "accuracy": float(correct[mask].mean()) if count else None})
    return out


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean of |accuracy - confidence| over the confidence bins (a fraction, not percent)."""
    return ece_of_bins(reliability_bins(logits, targets, bins))


def ece_of_bins(table: List[Dict[str, float]]) -> float:
    """The ECE of a ``reliability_bins`` / ``confidence_bins`` table."""
    total = sum(row["count"] for row in table)
    return sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"]) / total


def calibration_report(logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
    """NLL, ECE (percent, 15 bins) and mean top-1 confidence (percent) of ``softmax(logits)``."""
    confidence = logits.detach().double().softmax(dim=1).max(dim=1).values
    return {"nll": nll(logits, targets), "ece": 100.0 * expected_calibration_error(logits, targets),
            "mean_confidence": 100.0 * float(confidence.mean())}


@torch.no_grad()
def calibrate_model(model: torch.nn.Module, raw_logits: torch.Tensor, targets: torch.Tensor,
                    source: str) -> Dict[str, Any]:
    """Fit ``model.logit_scale`` on held-out ``raw_logits`` (``forward_raw`` outputs) and measure its implied
    prior there, in place; returns the record ``config.json`` keeps under ``calibration``.

    ``source`` says which held-out images these are (a validation split, never the test set).
    """
    from .prior import implied_prior

    before_scale = float(model.logit_scale)
    scale = fit_logit_scale(raw_logits, targets)
    counts = [int(n) for n in model.train_class_counts.tolist()]
    calibrated = scale * raw_logits.double()
    prior = implied_prior(calibrated.softmax(dim=1), targets, model.num_classes, counts if any(counts) else None)
    model.logit_scale.fill_(scale)
    model.implied_prior.copy_(prior.to(model.implied_prior))
    return {"method": "temperature scaling: one scale on the raw logits, fitted by NLL", "fitted_on": source,
            "images": int(targets.numel()), "classes_without_images": model.num_classes - len(set(targets.tolist())),
            "logit_scale_before": before_scale, "logit_scale": scale,
            "before": calibration_report(before_scale * raw_logits, targets),
            "after": calibration_report(calibrated, targets), "implied_prior": [float(p) for p in prior]}
