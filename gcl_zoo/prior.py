"""The deployment's class prior: move calibrated posteriors to the class mix a model is actually served.

A long-tailed model is calibrated for a balanced deployment (every class equally likely). Real traffic is usually
long-tailed itself. With Bayes' rule, posteriors ``p(y|x)`` that imply a class prior ``q`` become, for a
deployment whose prior is ``pi``, ``p_pi(y|x) ~ p(y|x) * pi(y) / q(y)`` (Saerens et al., 2002): in logits, add
``log pi - log q``. ``q``, the source prior, is measured, not assumed: the class-balanced mean of the calibrated
posteriors on the validation split (``implied_prior``), saved with the weights. Every target, the uniform one
included, is taken relative to it; a calibration fitted by ``gcl_zoo.calibration`` makes it uniform, so the
uniform target leaves the scores as they are and a target a hair off uniform moves them by a hair.

When the deployment's prior is unknown, ``estimate_prior`` estimates it from the posteriors of unlabeled images:
Saerens' EM as a MAP estimate under a Dirichlet prior centred on the source prior (worth ``strength`` images), and
a likelihood-ratio test that keeps the source prior when the images give no real evidence of a shift.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["PriorError", "PriorEstimate", "check_prior", "missing_class_sources", "implied_prior", "prior_shift", "adjust_logits",
           "estimate_prior", "estimate_prior_em", "DEFAULT_STRENGTH", "DEFAULT_TEST_LEVEL"]

# smallest prior ratio kept: a weight of 0 gives a class a logit shift of about -69, never -inf (answers stay JSON)
MIN_PRIOR = 1e-30

PriorLike = Sequence[float] | torch.Tensor


class PriorError(ValueError):
    """A class prior that cannot be used: wrong length, negative, NaN/inf or all zero."""


def check_prior(weights: PriorLike, num_classes: int) -> torch.Tensor:
    """``weights`` as a float64 probability vector of ``num_classes`` entries, or a ``PriorError`` naming the fault."""
    try:
        prior = torch.as_tensor(weights, dtype=torch.float64).flatten()
    except (TypeError, ValueError) as exc:
        raise PriorError(f"a class prior is a list of {num_classes} numbers, one per class ({exc})") from None
    if prior.numel() != num_classes:
        raise PriorError(f"the class prior has {prior.numel()} weights but the model has {num_classes} classes; "
                         "give one non-negative weight per class, in the model's label order")
    if not torch.isfinite(prior).all():
        raise PriorError("the class prior holds NaN or infinite weights; give finite, non-negative numbers")
    if (prior < 0).any():
        first = int((prior < 0).nonzero()[0])
        raise PriorError(f"the class prior's weight for class {first} is negative ({float(prior[first]):g}); "
                         "weights must be >= 0")
    largest = float(prior.max())
    if largest <= 0:
        raise PriorError("the class prior's weights are all zero; at least one class must be possible")
    prior = prior / largest  # first, so that huge finite weights cannot overflow the sum
    return prior / prior.sum()


def missing_class_sources(present: Sequence[int], num_classes: int,
                          class_counts: Sequence[int] | None = None) -> dict[int, int | None]:
    """For each class without held-out images, the class whose fitted bias it takes: the present class nearest to
    it in training images (ties: the lower index), or None (the mean of the fitted biases) without counts."""
    present_set = set(present)
    missing = [c for c in range(num_classes) if c not in present_set]
    if class_counts is None or not any(class_counts):
        return {c: None for c in missing}
    return {c: min(present, key=lambda k: (abs(class_counts[k] - class_counts[c]), k)) for c in missing}


def implied_prior(probs: torch.Tensor, targets: torch.Tensor, num_classes: int,
                  class_counts: Sequence[int] | None = None) -> torch.Tensor:
    """The class prior a model's posteriors imply on balanced data: the mean over classes of each class's mean
    posterior, measured on a labelled held-out split (so an unbalanced split still measures the balanced mean).

    A class with no held-out image (CIFAR-LT's head class: every training image of it is in the training subset)
    cannot be measured; it takes the implied prior of the measured class nearest to it in training images
    (``class_counts``), or their mean without counts, and the vector is renormalised.
    """
    probs, targets = probs.detach().double().cpu(), targets.detach().long().cpu()
    present = sorted(set(targets.tolist()))
    if not present:
        raise ValueError("no held-out images to measure the implied prior on; the validation split is empty")
    rows = torch.stack([probs[targets == c].mean(dim=0) for c in present])
    prior = rows.mean(dim=0)
    for c, source in missing_class_sources(present, num_classes, class_counts).items():
        prior[c] = prior[source] if source is not None else prior[present].mean()
    return prior / prior.sum()


def prior_shift(target: torch.Tensor | None, implied: torch.Tensor | None) -> torch.Tensor | None:
    """The per-class logit shift ``log target - log implied`` (float32), or None without a target. ``implied``
    (the source prior) None means uniform (a plain classifier's scores count as balanced)."""
    if target is None:
        return None
    base = implied if implied is not None else torch.full_like(target, 1.0 / target.numel())
    return (target.clamp_min(MIN_PRIOR).log() - base.double().clamp_min(MIN_PRIOR).log()).float()


def adjust_logits(logits: torch.Tensor, target: torch.Tensor | None,
                  implied: torch.Tensor | None) -> torch.Tensor:
    """Calibrated logits moved to the deployment's prior ``target`` (``softmax`` of the result: ``p * target / q``)."""
    shift = prior_shift(target, implied)
    return logits if shift is None else logits + shift.to(logits.device, logits.dtype)


DEFAULT_STRENGTH = 1.0  # the Dirichlet prior's weight in images per class
DEFAULT_TEST_LEVEL = 0.01  # a shift is taken only when a no-shift likelihood-ratio test rejects at this level


@dataclass(frozen=True)
class PriorEstimate:
    """An estimated class prior and how it was reached: ``images`` it stood on, EM ``iterations``, whether EM
    ``converged``, the log-likelihood ratio against the source prior, and whether a shift was taken (False: the
    evidence was too weak and ``prior`` is the source prior); ``map_prior`` is the point EM reached either way (a
    warm ``start`` for the next estimate of much the same images)."""

    prior: torch.Tensor
    images: int
    iterations: int
    converged: bool
    log_likelihood_ratio: float
    shifted: bool
    map_prior: torch.Tensor | None = None


def _chi2_quantile(level: float, dof: int) -> float:
    """The upper ``level`` quantile of a chi-squared law with ``dof`` degrees of freedom (Wilson-Hilferty)."""
    z = math.sqrt(2) * torch.erfinv(torch.tensor(1 - 2 * level, dtype=torch.float64)).item()
    k = float(dof)
    return k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


def estimate_prior(probs: torch.Tensor, source: torch.Tensor, strength: float = DEFAULT_STRENGTH,
                   test_level: float | None = DEFAULT_TEST_LEVEL, source_images: int | None = None,
                   max_iter: int = 1000, tol: float = 1e-8, start: torch.Tensor | None = None) -> PriorEstimate:
    """The class prior of an unlabeled set from the model's calibrated posteriors on it (``probs``, N x C).

    EM (Saerens et al., 2002) as a MAP estimate: a Dirichlet prior with ``strength`` images per class spread as the
    ``source`` prior (``alpha - 1 = strength * C * source``), so the M step is ``pi = (sum of re-weighted posteriors
    + strength * C * source) / (N + strength * C)``: no images give the source prior, one image cannot give a
    one-hot prior, and a large set speaks for itself. Then, unless ``test_level`` is None, the likelihood-ratio test
    of "no shift" keeps the source prior when it cannot reject at ``test_level``: on balanced traffic the answers
    stay the balanced ones. ``2 * LLR`` is compared with the chi-squared law of C - 1 degrees of freedom, widened by
    ``1 + N / source_images`` when the source prior was itself measured on ``source_images`` validation images
    (the model's ``source_images``): the stream's mean posterior and the source prior are then two noisy estimates
    of the same thing, and the calibration's own error grows the statistic with N even without a shift.
    ``start`` (default: the source prior) is where EM starts: the MAP point is unique (the Dirichlet term makes
    the objective strictly concave), so a warm start from an earlier estimate of much the same images (a sliding
    window) only saves iterations.
    """
    base = source.detach().double().cpu().clamp_min(MIN_PRIOR)
    base = base / base.sum()
    probs = probs.detach().double().cpu().reshape(-1, base.numel())
    images, classes = probs.shape
    pseudo = strength * classes * base
    prior = base.clone() if start is None else check_prior(start, classes).clamp_min(MIN_PRIOR)
    iterations, converged = 0, images == 0
    ratio = probs / base
    for iterations in range(1, max_iter + 1) if images else ():  # noqa: B007 (read after the loop)
        # E and M steps as two matrix-vector products: sum_i ratio_i * prior / (ratio_i . prior)
        evidence = ratio.t().mv((ratio.mv(prior)).clamp_min(MIN_PRIOR).reciprocal())
        updated = (prior * evidence + pseudo) / (images + pseudo.sum())
        converged = float((updated - prior).abs().max()) < tol
        prior = updated
        if converged:
            break
    llr = float(ratio.mv(prior).clamp_min(MIN_PRIOR).log().sum()) if images else 0.0
    widen = 1.0 + images / source_images if source_images else 1.0
    threshold = _chi2_quantile(test_level, max(classes - 1, 1)) * widen if test_level is not None else -math.inf
    shifted = images > 0 and 2 * llr > threshold
    return PriorEstimate(prior if shifted else base, images, iterations, converged, llr, shifted, prior)


def estimate_prior_em(probs: torch.Tensor, implied: torch.Tensor, max_iter: int = 1000,
                      tol: float = 1e-8) -> torch.Tensor:
    """Plain (maximum-likelihood, unregularised) Saerens EM: ``estimate_prior`` with no Dirichlet prior and no
    test; kept as the baseline the regularised estimate is compared with."""
    return estimate_prior(probs, implied, strength=0.0, test_level=None, max_iter=max_iter, tol=tol).prior
