"""The deployment's class prior: move calibrated posteriors to the class mix a model is actually served.

A long-tailed model is trained and calibrated for a balanced deployment (every class equally likely). Real traffic
is usually long-tailed itself. With Bayes' rule, posteriors ``p(y|x)`` that imply a class prior ``q`` become, for a
deployment whose prior is ``pi``, ``p_pi(y|x) ~ p(y|x) * pi(y) / q(y)`` (Saerens et al., 2002): in logits, add
``log pi - log q``. ``q``, the model's *implied* prior, is measured, not assumed: the class-balanced mean of its
calibrated posteriors on the balanced validation split (``implied_prior``), saved with the weights.

The uniform prior is the deployment the model was calibrated for, so it leaves the scores exactly as they are.
When the deployment's prior is unknown, ``estimate_prior_em`` estimates it from the posteriors of unlabeled
images with Saerens' EM.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

__all__ = ["PriorError", "check_prior", "implied_prior", "prior_shift", "adjust_logits", "estimate_prior_em",
           "is_uniform"]

# smallest prior ratio kept: a weight of 0 gives a class a logit shift of about -69, never -inf (answers stay JSON)
MIN_PRIOR = 1e-30

PriorLike = Union[Sequence[float], torch.Tensor]


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


def is_uniform(prior: torch.Tensor, rtol: float = 1e-9) -> bool:
    """Whether every class has the same weight (the balanced deployment)."""
    return bool((prior - prior.mean()).abs().max() <= rtol * prior.mean())


def implied_prior(probs: torch.Tensor, targets: torch.Tensor, num_classes: int,
                  class_counts: Optional[Sequence[int]] = None) -> torch.Tensor:
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
    missing = [c for c in range(num_classes) if c not in present]
    for c in missing:
        if class_counts is not None:
            nearest = min(present, key=lambda k: (abs(class_counts[k] - class_counts[c]), k))
            prior[c] = prior[nearest]
        else:
            prior[c] = prior[present].mean()
    return prior / prior.sum()


def prior_shift(target: Optional[torch.Tensor], implied: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The per-class logit shift ``log target - log implied`` (float32), or None when nothing moves: no target,
    or a uniform one (the balanced deployment the model is calibrated for)."""
    if target is None or is_uniform(target):
        return None
    base = implied if implied is not None else torch.full_like(target, 1.0 / target.numel())
    return (target.clamp_min(MIN_PRIOR).log() - base.double().clamp_min(MIN_PRIOR).log()).float()


def adjust_logits(logits: torch.Tensor, target: Optional[torch.Tensor],
                  implied: Optional[torch.Tensor]) -> torch.Tensor:
    """Calibrated logits moved to the deployment's prior ``target`` (``softmax`` of the result: ``p * target / q``)."""
    shift = prior_shift(target, implied)
    return logits if shift is None else logits + shift.to(logits.device, logits.dtype)


def estimate_prior_em(probs: torch.Tensor, implied: torch.Tensor, max_iter: int = 1000,
                      tol: float = 1e-8) -> torch.Tensor:
    """The class prior of an unlabeled set, from the model's calibrated posteriors on it (Saerens et al., 2002).

    Starting from the implied prior, alternate: re-weight each posterior by ``pi / q`` and renormalise (E), then
    take the mean re-weighted posterior as the new ``pi`` (M); stop when ``pi`` moves less than ``tol``.
    """
    probs = probs.detach().double().cpu()
    base = implied.detach().double().cpu().clamp_min(MIN_PRIOR)
    prior = base.clone()
    for _ in range(max_iter):
        weighted = probs * (prior / base)
        weighted = weighted / weighted.sum(dim=1, keepdim=True)
        updated = weighted.mean(dim=0)
        done = float((updated - prior).abs().max()) < tol
        prior = updated
        if done:
            break
    return prior
