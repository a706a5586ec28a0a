"""Calibration (one fitted scale, ECE, NLL) and the deployment's class prior (adjustment, implied prior, EM)."""
import pytest
import torch

from gcl_zoo.calibration import calibration_report, expected_calibration_error, fit_logit_scale, nll
from gcl_zoo.prior import PriorError, adjust_logits, check_prior, estimate_prior_em, implied_prior


def synthetic(n: int, classes: int, true_scale: float, seed: int) -> tuple:
    """Raw logits whose labels are drawn from softmax(true_scale * raw): a model calibrated at that scale."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, classes, generator=g) * 2 - 1
    labels = torch.multinomial((true_scale * raw).softmax(dim=1), 1, generator=g).squeeze(1)
    return raw, labels


def test_fitted_scale_recovers_the_true_one_and_lowers_held_out_nll():
    raw, labels = synthetic(20000, 10, 4.0, seed=0)
    scale = fit_logit_scale(raw, labels)
    assert scale == pytest.approx(4.0, rel=0.05)
    held_raw, held_labels = synthetic(20000, 10, 4.0, seed=1)
    assert nll(scale * held_raw, held_labels) < nll(20.0 * held_raw, held_labels)  # an over-confident scale
    assert expected_calibration_error(scale * held_raw, held_labels) < 0.02
    assert calibration_report(20.0 * held_raw, held_labels)["ece"] > 10


def test_fitting_needs_held_out_images():
    with pytest.raises(ValueError, match="validation split is empty"):
        fit_logit_scale(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_a_uniform_prior_changes_nothing_and_a_known_one_follows_bayes():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    implied = check_prior([0.4, 0.3, 0.2, 0.1], 4)
    assert torch.equal(adjust_logits(logits, check_prior([1, 1, 1, 1], 4), implied), logits)
    assert torch.equal(adjust_logits(logits, None, implied), logits)
    target = check_prior([1, 2, 3, 4], 4)
    expected = logits.softmax(1) * (target / implied).float()
    assert torch.allclose(adjust_logits(logits, target, implied).softmax(1), expected / expected.sum(1, keepdim=True),
                          atol=1e-6)


@pytest.mark.parametrize("weights, message", [([1, 2], "has 2 weights"), ([1, -1, 1], "negative"),
                                              ([0, 0, 0], "all zero"), ([1, float("nan"), 1], "NaN"),
                                              ([1e308] * 3, None)])
def test_bad_priors_are_refused_with_the_reason(weights, message):
    if message is None:  # huge but finite weights are a valid (uniform) prior, not an overflow
        assert torch.allclose(check_prior(weights, 3), torch.full((3,), 1 / 3, dtype=torch.float64))
        return
    with pytest.raises(PriorError, match=message):
        check_prior(weights, 3)


def test_em_recovers_a_known_prior_from_unlabeled_posteriors():
    """Posteriors of a model calibrated on balanced data, on a set drawn with another prior: EM finds that prior."""
    g = torch.Generator().manual_seed(0)
    classes, true_prior = 4, torch.tensor([0.55, 0.25, 0.15, 0.05], dtype=torch.float64)
    means = torch.eye(classes, dtype=torch.float64) * 2.5
    labels = torch.multinomial(true_prior, 40000, replacement=True, generator=g)
    x = means[labels] + torch.randn(len(labels), classes, generator=g, dtype=torch.float64)
    # balanced-prior posteriors of the Gaussian classes: softmax of the log-likelihoods
    balanced = (-0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)).softmax(dim=1)
    estimated = estimate_prior_em(balanced, torch.full((classes,), 1 / classes, dtype=torch.float64))
    assert torch.allclose(estimated, true_prior, atol=0.02)


def test_implied_prior_is_the_class_balanced_mean_and_fills_a_class_without_images():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.6, 0.2]], dtype=torch.float64)
    targets = torch.tensor([0, 0, 1])  # two images of class 0, one of class 1, none of class 2
    prior = implied_prior(probs, targets, 3, class_counts=[100, 50, 40])
    class_mean = (torch.tensor([0.6, 0.3, 0.1]) + torch.tensor([0.2, 0.6, 0.2])) / 2
    filled = torch.tensor([class_mean[0], class_mean[1], class_mean[1]])  # class 2 takes class 1's (nearest count)
    assert torch.allclose(prior.float(), filled / filled.sum())
