"""Calibrated, balanced scores: fit how a model's raw logits become probabilities, and measure how well they match.

A GCL model is trained with a fixed scale ``s`` on its cosine logits; ``softmax(s * cos)`` is then far from a
probability (on CIFAR-100-LT a score of 0.3 is right about half the time), and a long-tailed model's scores still
lean toward some classes. Three calibrations of the raw logits ``z`` are fitted on held-out data and compared:

* ``temperature``: ``a * z`` (Guo et al., 2017; ``a = s / T`` for the usual temperature ``T``);
* ``bcts``: ``a * z + b``, one bias per class (bias-corrected temperature scaling, Alexandari et al., ICML 2020);
* ``vector``: ``a * a_c * z + b``, a scale and a bias per class (vector scaling, Guo et al., 2017).

Each is fitted by the negative log-likelihood of the validation split **with each class weighted equally**, so a
long-tailed or uneven split still calibrates for a balanced deployment, as a MAP fit: Gaussian priors pull
``log a`` toward the training scale and the biases toward zero with the weight of ``PRIOR_IMAGES`` images, and hard
bounds keep the scale within ``SCALE_RANGE`` of the training scale and every bias within ``BIAS_BOUND`` (a handful of
images can then move it only that far, where an unbounded fit goes to 85 or 1e-43). A class with no validation
image shares the fitted bias (and class scale) of the class nearest to it in training images (ties: the lower
index; without counts, the mean bias); unfitted, its bias would collapse and it would never be predicted. After the
fit the biases are moved, as a fixed point, until the class-balanced mean calibrated probability on validation is
uniform: the answer is then the balanced one, and that mean, the source prior against which ``gcl_zoo.prior``
re-weights to any deployment, is uniform by construction. The method kept per model is the one with the lowest
cross-validated class-balanced NLL (``CV_FOLDS`` folds of the validation split, stratified by class).

Calibration error is the expected calibration error over 15 equal-width confidence bins (ECE, Naeini et al. 2015),
reported with the NLL; ``reliability_bins`` gives the per-bin accuracy and confidence for a reliability diagram.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .prior import implied_prior, missing_class_sources

__all__ = ["ECE_BINS", "METHODS", "Calibration", "fit_calibration", "compare_calibrations", "fit_logit_scale",
           "nll", "balanced_nll", "expected_calibration_error", "reliability_bins", "confidence_bins",
           "ece_of_bins", "calibration_report", "calibrate_model", "validation_warning",
           "check_missing_class_rule"]

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


METHODS = ("temperature", "bcts", "vector")
PRIOR_IMAGES = 1.0  # weight, in images, of the standard normal priors on log(a / s) and on each bias
SCALE_RANGE = 20.0  # the fitted scale stays within [s / SCALE_RANGE, s * SCALE_RANGE] of the training scale s
BIAS_BOUND = 10.0  # |bias| <= this, for every class
CV_FOLDS = 5


def balanced_nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The NLL with each class present in ``targets`` weighted equally (the NLL a balanced deployment sees)."""
    logits, targets = _checked(logits, targets)
    losses = F.cross_entropy(logits, targets, reduction="none")
    return float(torch.stack([losses[targets == c].mean() for c in targets.unique()]).mean())


@dataclass
class Calibration:
    """Raw logits to calibrated ones: ``raw * scale * class_scale + bias`` (``class_scale``: ones unless vector
    scaling; ``bias``: zeros for temperature scaling before balancing)."""

    method: str
    scale: float
    class_scale: torch.Tensor
    bias: torch.Tensor
    balancing_iterations: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        raw = raw.detach().double().cpu()
        return raw * (self.scale * self.class_scale.double()) + self.bias.double()


def _expand(fitted: torch.Tensor, present: list[int], sources: dict[int, int | None],
            num_classes: int) -> torch.Tensor:
    """Per-present-class values to all classes, missing ones filled by the rule of ``missing_class_sources``."""
    position = {c: i for i, c in enumerate(present)}
    index = [position[c] if c in position else (position[sources[c]] if sources[c] is not None else -1)
             for c in range(num_classes)]
    extended = torch.cat([fitted, fitted.mean().reshape(1)])
    return extended[torch.tensor(index)]


def _fit(raw: torch.Tensor, targets: torch.Tensor, method: str, base_scale: float, num_classes: int,
         class_counts: Sequence[int] | None) -> Calibration:
    """The MAP fit of one method by class-balanced NLL, bounded (see the module's docstring)."""
    from scipy.optimize import minimize

    present = sorted(set(targets.tolist()))
    sources = missing_class_sources(present, num_classes, class_counts)
    per_class = torch.bincount(targets, minlength=num_classes).double()
    weights = 1.0 / (len(present) * per_class[targets])  # each present class weighs 1 / len(present)
    images = targets.numel()
    u0 = math.log(base_scale)
    n_scale = len(present) if method == "vector" else 1
    n_bias = len(present) if method in ("bcts", "vector") else 0

    def unpack(theta: torch.Tensor) -> tuple:
        log_scale = theta[:n_scale]
        log_scale = _expand(log_scale, present, sources, num_classes) if method == "vector" else log_scale
        bias = (_expand(theta[n_scale:], present, sources, num_classes) if n_bias
                else torch.zeros(num_classes, dtype=torch.float64))
        return log_scale, bias

    def objective(values: np.ndarray) -> tuple:
        theta = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():  # callers may run under no_grad
            log_scale, bias = unpack(theta)
            logits = raw * log_scale.exp() + bias
            data = (F.cross_entropy(logits, targets, reduction="none") * weights).sum()
            prior = 0.5 * ((theta[:n_scale] - u0) ** 2).sum() + 0.5 * (theta[n_scale:] ** 2).sum()
            loss = data + PRIOR_IMAGES * prior / images
            loss.backward()
        return float(loss.detach()), theta.grad.numpy().copy()

    span = math.log(SCALE_RANGE)
    bounds = [(u0 - span, u0 + span)] * n_scale + [(-BIAS_BOUND, BIAS_BOUND)] * n_bias
    start = np.array([u0] * n_scale + [0.0] * n_bias)
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
                      options={"maxiter": 500, "gtol": 1e-9})
    log_scale, bias = unpack(torch.tensor(result.x, dtype=torch.float64))
    at_bound = bool(any(abs(v - lo) < 1e-9 or abs(v - hi) < 1e-9 for v, (lo, hi) in zip(result.x, bounds)))
    if method == "vector":
        scale = float(log_scale.mean().exp())
        class_scale = (log_scale - log_scale.mean()).exp()
    else:
        scale, class_scale = float(log_scale[0].exp()), torch.ones(num_classes, dtype=torch.float64)
    return Calibration(method, scale, class_scale, bias,
                       notes={"converged": bool(result.success), "at_bound": at_bound,
                              "missing_classes": {str(c): s for c, s in sources.items()}})


def _balance(calibration: Calibration, raw: torch.Tensor, targets: torch.Tensor, num_classes: int,
             class_counts: Sequence[int] | None, max_iter: int = 500, tol: float = 1e-10) -> Calibration:
    """Move the biases until the class-balanced mean calibrated probability on ``raw`` is uniform (a fixed point
    of ``bias -= log(C * source_prior)``), so the calibrated answer is the balanced one."""
    bias = calibration.bias.clone()
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (read after the loop)
        calibration.bias = bias
        prior = implied_prior(calibration.apply(raw).softmax(dim=1), targets, num_classes, class_counts)
        step = (prior * num_classes).log()
        bias = (bias - step).clamp(-BIAS_BOUND - math.log(num_classes), BIAS_BOUND + math.log(num_classes))
        if float(step.abs().max()) < tol:
            break
    calibration.bias = bias - bias.mean()  # softmax ignores a common shift; keep the biases centred
    calibration.balancing_iterations = iterations
    return calibration


def fit_calibration(raw_logits: torch.Tensor, targets: torch.Tensor, method: str = "bcts",
                    base_scale: float = 1.0, num_classes: int | None = None,
                    class_counts: Sequence[int] | None = None, balance: bool = True) -> Calibration:
    """Fit ``method`` (one of ``METHODS``) on held-out raw logits, then balance it (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    raw, targets = _checked(raw_logits, targets)
    num_classes = num_classes or raw.shape[1]
    calibration = _fit(raw, targets, method, base_scale, num_classes, class_counts)
    return _balance(calibration, raw, targets, num_classes, class_counts) if balance else calibration


def fit_logit_scale(raw_logits: torch.Tensor, targets: torch.Tensor, base_scale: float = 1.0) -> float:
    """The temperature-only scale ``a`` of ``softmax(a * raw_logits)`` (class-balanced MAP NLL, bounded)."""
    return fit_calibration(raw_logits, targets, "temperature", base_scale, balance=False).scale


def _folds(targets: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """A fold number per image: each class's images shuffled (seeded) and dealt round the folds."""
    rng = np.random.default_rng(seed)
    fold = torch.empty_like(targets)
    for c in targets.unique().tolist():
        index = (targets == c).nonzero().squeeze(1).numpy()
        fold[torch.from_numpy(rng.permutation(index))] = torch.arange(len(index)) % folds
    return fold


def compare_calibrations(raw_logits: torch.Tensor, targets: torch.Tensor, base_scale: float = 1.0,
                         num_classes: int | None = None, class_counts: Sequence[int] | None = None,
                         folds: int = CV_FOLDS, methods: Sequence[str] = METHODS) -> dict[str, float]:
    """Each method's class-balanced NLL on held-out folds of the validation split, fitted on the other folds."""
    raw, targets = _checked(raw_logits, targets)
    fold = _folds(targets, folds)
    scores: dict[str, float] = {}
    for method in methods:
        losses = []
        for k in range(folds):
            held = fold == k
            if not held.any() or held.all():
                continue
            fitted = fit_calibration(raw[~held], targets[~held], method, base_scale, num_classes or raw.shape[1],
                                     class_counts)
            losses.append(balanced_nll(fitted.apply(raw[held]), targets[held]))
        scores[method] = float(np.mean(losses))
    return scores


def check_missing_class_rule(raw_logits: torch.Tensor, targets: torch.Tensor, method: str, base_scale: float,
                             class_counts: Sequence[int], held_out: Sequence[int]) -> dict[str, Any]:
    """Measure the rule for classes without validation images on classes that have them: fit without the
    ``held_out`` classes' images (the rule fills their biases) and compare, on those images, with the fit that saw
    them and with the bias left at the lower bound (what an unfitted bias collapses to)."""
    raw, targets = _checked(raw_logits, targets)
    num_classes = raw.shape[1]
    mine = torch.isin(targets, torch.tensor(list(held_out)))
    full = fit_calibration(raw, targets, method, base_scale, num_classes, class_counts)
    ruled = fit_calibration(raw[~mine], targets[~mine], method, base_scale, num_classes, class_counts)
    collapsed = ruled.apply(raw[mine])
    collapsed[:, list(held_out)] += -BIAS_BOUND - ruled.bias[list(held_out)]

    def scores(logits: torch.Tensor) -> dict[str, float]:
        return {"recall": round(100.0 * float((logits.argmax(1) == targets[mine]).double().mean()), 2),
                "nll": round(nll(logits, targets[mine]), 4)}

    return {"held_out_classes": list(held_out), "images": int(mine.sum()),
            "fit_that_saw_them": scores(full.apply(raw[mine])), "rule": scores(ruled.apply(raw[mine])),
            "bias_at_lower_bound": scores(collapsed)}


def validation_warning(per_class: Sequence[int], min_per_class: int = 5, min_images: int = 200) -> str | None:
    """A warning when a validation split is too small for its calibration to mean much, saying what the fit does."""
    total, fitted = sum(per_class), [n for n in per_class if n > 0]
    few = sum(1 for n in per_class if n < min_per_class)
    if total >= min_images and few <= len(per_class) / 2:
        return None
    return (f"the validation split holds {total} images, {few} of {len(per_class)} classes with under "
            f"{min_per_class}: too few for the calibration to mean much. The fit is bounded and pulled toward the "
            f"training scale and zero biases by a prior worth {PRIOR_IMAGES:g} image, so with little data it stays "
            f"near the training scale; classes without images take the bias of the class nearest in training "
            f"images ({len(per_class) - len(fitted)} such). Give a larger split (--val-per-class, --val-fraction, "
            "--val-dir or --val-list) for a calibration to rely on")


def reliability_bins(logits: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per equal-width confidence bin: its edges, image count, mean confidence and accuracy (top-1 score)."""
    logits, targets = _checked(logits, targets)
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    return confidence_bins(confidence, predicted == targets, bins)


def confidence_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> list[dict[str, float]]:
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


def ece_of_bins(table: list[dict[str, float]]) -> float:
    """The ECE of a ``reliability_bins`` / ``confidence_bins`` table."""
    total = sum(row["count"] for row in table)
    return sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"]) / total


def calibration_report(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """NLL, ECE (percent, 15 bins) and mean top-1 confidence (percent) of ``softmax(logits)``."""
    confidence = logits.detach().double().softmax(dim=1).max(dim=1).values
    return {"nll": nll(logits, targets), "ece": 100.0 * expected_calibration_error(logits, targets),
            "mean_confidence": 100.0 * float(confidence.mean())}


@torch.no_grad()
def calibrate_model(model: torch.nn.Module, raw_logits: torch.Tensor, targets: torch.Tensor, source: str,
                    training_scale: float | None = None) -> dict[str, Any]:
    """Compare the methods on held-out ``raw_logits`` (``forward_raw`` outputs) by cross-validated class-balanced
    NLL, fit the winner on all of them, balance it and measure the source prior there; sets the model's
    ``logit_scale``, ``class_scale``, ``logit_bias``, ``implied_prior`` and ``source_images`` in place and returns the record
    ``config.json`` keeps under ``calibration``.

    ``source`` says which held-out images these are (a validation split, never the test set); ``training_scale``
    is the scale training ended with (default: the model's current one), which the fit is bounded around.
    """
    raw, targets = _checked(raw_logits, targets)
    num_classes = model.num_classes
    before_scale = float(model.logit_scale) if training_scale is None else float(training_scale)
    counts = [int(n) for n in model.train_class_counts.tolist()]
    counts = counts if any(counts) else None
    comparison = compare_calibrations(raw, targets, before_scale, num_classes, counts)
    method = min(comparison, key=comparison.get)
    fitted = fit_calibration(raw, targets, method, before_scale, num_classes, counts)
    calibrated = fitted.apply(raw)
    prior = implied_prior(calibrated.softmax(dim=1), targets, num_classes, counts)
    model.logit_scale.fill_(fitted.scale)
    model.class_scale.copy_(fitted.class_scale.to(model.class_scale))
    model.logit_bias.copy_(fitted.bias.to(model.logit_bias))
    model.implied_prior.copy_(prior.to(model.implied_prior))
    model.source_images.fill_(int(targets.numel()))
    per_class = torch.bincount(targets, minlength=num_classes).tolist()
    missing = missing_class_sources(sorted(set(targets.tolist())), num_classes, counts)
    record = {
        "method": {"temperature": "temperature scaling", "bcts": "bias-corrected temperature scaling (BCTS)",
                   "vector": "vector scaling"}[method] + ": fitted by class-balanced NLL (MAP, bounded), balanced",
        "method_key": method, "fitted_on": source,
        "cross_validated_balanced_nll": {k: round(v, 5) for k, v in comparison.items()},
        "images": int(targets.numel()), "classes_without_images": len(missing),
        "missing_class_rule": "the bias and class scale of the class nearest in training images (ties: lower index)"
        if counts else "the mean fitted bias",
        "missing_class_sources": {str(c): s for c, s in missing.items()},
        "logit_scale_before": before_scale, "logit_scale": fitted.scale,
        "logit_bias": [round(float(b), 6) for b in fitted.bias],
        "balancing_iterations": fitted.balancing_iterations, "fit": fitted.notes,
        "before": calibration_report(before_scale * raw, targets),
        "after": {**calibration_report(calibrated, targets), "balanced_nll": balanced_nll(calibrated, targets)},
        "implied_prior": [float(p) for p in prior],
    }
    if method == "vector":
        record["class_scale"] = [round(float(a), 6) for a in fitted.class_scale]
    warning = validation_warning(per_class)
    if warning:
        record["warning"] = warning
    return record
