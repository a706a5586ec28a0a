"""Calibration (temperature / BCTS / vector scaling, bounded, balanced; ECE, NLL) and the deployment's class prior
(adjustment against the source prior, implied prior, regularised EM)."""
import json

import pytest
import timm
import torch

import gcl_zoo  # noqa: F401
from gcl_zoo.calibration import (
    BIAS_BOUND,
    SCALE_RANGE,
    calibrate_model,
    calibration_report,
    expected_calibration_error,
    fit_calibration,
    fit_logit_scale,
    nll,
    validation_warning,
)
from gcl_zoo.models.gcl import GCLModel
from gcl_zoo.models.weights import WEIGHTS_DIR
from gcl_zoo.prior import PriorError, adjust_logits, check_prior, estimate_prior, estimate_prior_em, implied_prior


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


def test_every_target_is_relative_to_the_source_prior_and_follows_bayes():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    implied = check_prior([0.4, 0.3, 0.2, 0.1], 4)
    assert torch.equal(adjust_logits(logits, None, implied), logits)
    # the uniform target is no special case: it re-weights by 1 / q like any other, so a hair off it is a hair off
    uniform, hair = check_prior([1, 1, 1, 1], 4), check_prior([1 + 1e-6, 1, 1, 1], 4)
    assert torch.allclose(adjust_logits(logits, uniform, implied).softmax(1), (logits - implied.log().float()).softmax(1))
    assert torch.allclose(adjust_logits(logits, uniform, implied), adjust_logits(logits, hair, implied), atol=1e-5)
    assert torch.equal(adjust_logits(logits, uniform, check_prior([1, 1, 1, 1], 4)), logits)
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
    uniform = torch.full((classes,), 1 / classes, dtype=torch.float64)
    assert torch.allclose(estimate_prior_em(balanced, uniform), true_prior, atol=0.02)
    result = estimate_prior(balanced, uniform)
    assert result.shifted and result.converged and 0 < result.iterations < 1000 and result.images == 40000
    assert torch.allclose(result.prior, true_prior, atol=0.02)


def test_implied_prior_is_the_class_balanced_mean_and_fills_a_class_without_images():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.6, 0.2]], dtype=torch.float64)
    targets = torch.tensor([0, 0, 1])  # two images of class 0, one of class 1, none of class 2
    prior = implied_prior(probs, targets, 3, class_counts=[100, 50, 40])
    class_mean = (torch.tensor([0.6, 0.3, 0.1]) + torch.tensor([0.2, 0.6, 0.2])) / 2
    filled = torch.tensor([class_mean[0], class_mean[1], class_mean[1]])  # class 2 takes class 1's (nearest count)
    assert torch.allclose(prior.float(), filled / filled.sum())


# ------------------------------------------------------------------------------- balanced calibration (issue 41)
def leaning(n_per_class, classes: int = 10, seed: int = 0, scale: float = 6.0) -> tuple:
    """Raw logits of a model that leans toward the low class indices (as a long-tailed model leans to its head):
    labels drawn from softmax(scale * z), the raw logits ``z`` given a per-class offset the fit must undo."""
    g = torch.Generator().manual_seed(seed)
    counts = [n_per_class] * classes if isinstance(n_per_class, int) else list(n_per_class)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    z = torch.randn(len(labels), classes, generator=g, dtype=torch.float64) * 0.25
    z[torch.arange(len(labels)), labels] += 0.45
    lean = torch.linspace(0.15, -0.15, classes, dtype=torch.float64)
    return z + lean, labels, lean


def test_bcts_undoes_a_lean_and_beats_temperature_on_held_out_images():
    raw, labels, lean = leaning(200)
    held_raw, held_labels, _ = leaning(200, seed=1)
    temperature = fit_calibration(raw, labels, "temperature", base_scale=20.0, balance=False)
    bcts = fit_calibration(raw, labels, "bcts", base_scale=20.0)
    assert nll(bcts.apply(held_raw), held_labels) < nll(temperature.apply(held_raw), held_labels)
    # the fitted biases undo the lean (up to a common shift)
    assert torch.corrcoef(torch.stack([bcts.bias, -lean]))[0, 1] > 0.95


def test_the_balanced_calibration_makes_the_source_prior_uniform_so_targets_are_consistent():
    """Uniform and a prior a hair off it give the same labels (on today's code: 1,042 of CIFAR-100's 10,000 moved)."""
    raw, labels, _ = leaning([400, 200, 120, 80, 50, 30, 20, 12, 8, 5])  # a long-tailed validation carve
    model = GCLModel("cifar_resnet20", num_classes=10, logit_scale=20.0)
    model.train_class_counts.copy_(torch.tensor([5000, 2000, 1200, 800, 500, 300, 200, 120, 80, 50]))
    record = calibrate_model(model, raw, labels, "synthetic validation")
    assert set(record["cross_validated_balanced_nll"]) == {"temperature", "bcts", "vector"}
    assert record["method_key"] == min(record["cross_validated_balanced_nll"],
                                       key=record["cross_validated_balanced_nll"].get)
    assert torch.allclose(model.implied_prior.double(), torch.full((10,), 0.1, dtype=torch.float64), atol=1e-7)
    test_raw, _, _ = leaning(300, seed=2)
    logits = model.calibrated(test_raw.float())
    uniform, hair = check_prior([1.0] * 10, 10), check_prior([1.0 + 1e-6] + [1.0] * 9, 10)
    by_uniform = adjust_logits(logits, uniform, model.implied_prior).argmax(1)
    assert torch.equal(by_uniform, adjust_logits(logits, hair, model.implied_prior).argmax(1))
    assert torch.equal(by_uniform, logits.argmax(1))  # the default answer is the balanced one


def test_a_class_without_validation_images_takes_its_neighbours_bias_and_is_still_predicted():
    """Hold out a class that has validation images: the rule's bias must serve it nearly as well as a fit that saw
    it, where a bias fitted without its images collapses to the bound and the class is never predicted."""
    counts = [5000, 3000, 2000, 1200, 800, 500, 300, 200, 120, 80]
    raw, labels, _ = leaning(100)
    held_raw, held_labels, _ = leaning(200, seed=3)
    full = fit_calibration(raw, labels, "bcts", 20.0, class_counts=counts)
    for out in (0, 4, 9):
        keep = labels != out
        ruled = fit_calibration(raw[keep], labels[keep], "bcts", 20.0, class_counts=counts)
        neighbour = min((c for c in range(10) if c != out), key=lambda c: (abs(counts[c] - counts[out]), c))
        assert ruled.bias[out] == pytest.approx(float(ruled.bias[neighbour]))
        mine = held_labels == out
        recall_ruled = float((ruled.apply(held_raw[mine]).argmax(1) == out).double().mean())
        recall_full = float((full.apply(held_raw[mine]).argmax(1) == out).double().mean())
        assert recall_ruled > 0.8 * recall_full > 0
        collapsed = ruled.apply(held_raw[mine]).clone()
        collapsed[:, out] += -BIAS_BOUND - float(ruled.bias[out])
        assert float((collapsed.argmax(1) == out).double().mean()) < 0.05


def test_the_fit_is_bounded_and_a_handful_of_images_stays_near_the_training_scale():
    """Four correct images once gave a scale of 84.8 (training scale 20), four wrong ones 7e-44."""
    raw = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.0, 0.1, 0.7], [0.6, 0.2, 0.1]])
    right, wrong = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2])
    for targets in (right, wrong):
        for method in ("temperature", "bcts", "vector"):
            fitted = fit_calibration(raw, targets, method, base_scale=20.0, balance=False)
            assert 20.0 / SCALE_RANGE <= fitted.scale <= 20.0 * SCALE_RANGE
            if targets is right:  # all correct: the NLL alone would drive the scale to infinity
                assert fitted.scale < 20.0 * 3, (method, fitted.scale)
            assert float(fitted.bias.abs().max()) <= BIAS_BOUND + 1e-9
    assert 20.0 / 3 < fit_logit_scale(raw, right, base_scale=20.0) < 60.0


def test_a_small_validation_split_is_warned_about_with_what_the_fit_does():
    assert validation_warning([20] * 100) is None
    assert validation_warning([1] * 9 + [3]) is not None and "bounded" in validation_warning([1] * 9 + [3])
    assert "30 images" in validation_warning([30, 0, 0, 0])


def balanced_gaussians(n: int, classes: int = 10, seed: int = 0) -> tuple:
    """Calibrated posteriors of Gaussian classes drawn with a uniform prior, and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    means = torch.eye(classes, dtype=torch.float64) * 1.6
    x = means[labels] + torch.randn(n, classes, generator=g, dtype=torch.float64)
    return (-0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)).softmax(dim=1), labels


@pytest.mark.parametrize("n", [256, 1000, 10000])
def test_em_on_a_balanced_stream_keeps_top1_within_a_tenth_of_a_point(n):
    uniform = torch.full((10,), 0.1, dtype=torch.float64)
    for seed in range(5):
        probs, labels = balanced_gaussians(n, seed=seed)
        top1 = float((probs.argmax(1) == labels).double().mean()) * 100
        result = estimate_prior(probs, uniform)
        moved = float(((probs * result.prior / uniform).argmax(1) == labels).double().mean()) * 100
        assert abs(moved - top1) <= 0.1, (n, seed, top1, moved, result)


def test_em_guards_tiny_and_empty_inputs_and_reports_convergence():
    source = check_prior([4, 3, 2, 1], 4)
    empty = estimate_prior(torch.zeros(0, 4), source)
    assert torch.allclose(empty.prior, source) and not empty.shifted and empty.images == 0
    assert torch.isfinite(estimate_prior_em(torch.zeros(0, 4), source)).all()
    one = torch.tensor([[0.97, 0.01, 0.01, 0.01]])
    for test_level in (None, 0.01):
        single = estimate_prior(one, source, test_level=test_level)
        assert torch.isfinite(single.prior).all() and float(single.prior.max()) < 0.9
    assert float(estimate_prior_em(one, source).max()) > 0.99  # the unregularised baseline: one-hot, as it was
    capped = estimate_prior(balanced_gaussians(500)[0], check_prior([1] * 10, 10), max_iter=1, test_level=None)
    assert capped.iterations == 1 and not capped.converged


def test_shipped_checkpoints_carry_a_balanced_calibration():
    """Every shipped checkpoint's source prior is uniform (its answer is the balanced one) and its record says
    which method won the cross-validated comparison."""
    for path in sorted(WEIGHTS_DIR.glob("*.safetensors")):
        name = path.name[: -len(".safetensors")]
        model = timm.create_model(name, pretrained=True)
        assert torch.allclose(model.implied_prior.double(), torch.full((model.num_classes,), 1 / model.num_classes,
                                                                       dtype=torch.float64), rtol=1e-5), name
        record = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())["calibration"]
        assert record["method_key"] in ("temperature", "bcts", "vector")
        assert set(record["cross_validated_balanced_nll"]) == {"temperature", "bcts", "vector"}


def test_model_answers_its_calibration_and_old_weights_without_a_bias_still_load():
    model = GCLModel("cifar_resnet20", num_classes=5, logit_scale=20.0).eval()
    model.logit_bias.copy_(torch.tensor([0.5, -0.5, 0.0, 1.0, -1.0]))
    model.class_scale.copy_(torch.tensor([1.0, 1.1, 0.9, 1.0, 1.2]))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = model.forward_raw(x)
        assert torch.allclose(model(x), raw * 20.0 * model.class_scale + model.logit_bias, atol=1e-5)
        from gcl_zoo.models.gcl import calibrated_logits
        assert torch.allclose(calibrated_logits(model, raw), model(x), atol=1e-5)
    old = {k: v for k, v in model.state_dict().items() if k not in ("logit_bias", "class_scale", "source_images")}
    fresh = GCLModel("cifar_resnet20", num_classes=5, logit_scale=20.0)
    fresh.logit_bias.fill_(3.0)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.logit_bias, torch.zeros(5)) and torch.equal(fresh.class_scale, torch.ones(5))
