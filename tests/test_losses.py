import math

import pytest
import torch
import torch.nn.functional as F

from gcl_zoo import BalancedSoftmaxLoss, CrossEntropyLoss, FocalLoss, GCLLoss, LDAMLoss, LogitAdjustedLoss, cloud_sizes
from gcl_zoo.losses import drw_class_weights

COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def cosines(n=64, c=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, generator=g) * 2 - 1).requires_grad_(True), torch.randint(0, c, (n,), generator=g)


def test_no_noise_equals_plain_ce_with_margin():
    cos, y = cosines()
    loss = GCLLoss(COUNTS, s=30, m=0.1, noise_mul=0.0)(cos, y)
    expected = F.cross_entropy(30 * (cos - 0.1 * F.one_hot(y, 10)), y)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_cloud_sizes_log_strategy_and_alternatives():
    delta = cloud_sizes(COUNTS, "log")
    expected = (math.log(5000) - torch.log(torch.tensor(COUNTS, dtype=torch.float64))) / (math.log(5000) - math.log(50))
    assert torch.allclose(delta.double(), expected, atol=1e-6)
    assert delta[0] == 0 and delta[-1] == 1
    for strategy in ("cos", "pow3", "pow4"):
        d = cloud_sizes(COUNTS, strategy)
        assert d[0] == pytest.approx(0, abs=1e-6) and d[-1] == pytest.approx(1) and torch.all(d[1:] >= d[:-1])
    with pytest.raises(ValueError, match="unknown cloud strategy"):
        cloud_sizes(COUNTS, "sqrt")


def test_mean_push_matches_expected_cloud():
    # E|eps| for eps ~ N(0, 1/3) clamped to [-1, 1]; the clamp cuts 0.27% of the mass and barely moves the mean
    sigma = 1 / 3
    e_abs = torch.randn(2_000_000, generator=torch.Generator().manual_seed(1)).mul(sigma).clamp(-1, 1).abs().mean()
    assert e_abs == pytest.approx(sigma * math.sqrt(2 / math.pi), rel=0.01)
    loss = GCLLoss(COUNTS, noise_mul=0.5, generator=torch.Generator().manual_seed(0))
    noise = loss.sample_noise(torch.Size([20000, 10]), torch.device("cpu"))
    push = 0.5 * noise * loss.delta
    expected = 0.5 * e_abs * cloud_sizes(COUNTS)
    assert torch.allclose(push.mean(0), expected, atol=3e-3)
    assert (noise <= 1).all() and (noise >= 0).all()


def test_noise_is_reproducible_with_generator_and_off_in_eval():
    cos, y = cosines()
    a = GCLLoss(COUNTS, generator=torch.Generator().manual_seed(3))(cos, y)
    b = GCLLoss(COUNTS, generator=torch.Generator().manual_seed(3))(cos, y)
    c = GCLLoss(COUNTS, generator=torch.Generator().manual_seed(4))(cos, y)
    assert a == b and a != c
    loss = GCLLoss(COUNTS).eval()
    assert loss(cos, y) == GCLLoss(COUNTS, noise_mul=0)(cos, y)


def test_gradients_finite_and_noise_raises_loss_for_tail():
    cos, y = cosines(256)
    loss = GCLLoss(COUNTS, generator=torch.Generator().manual_seed(0))(cos, y)
    loss.backward()
    assert torch.isfinite(cos.grad).all() and torch.isfinite(loss)
    # the push lowers non-target logits too: with all labels in the head class the cloud can only lower the loss
    head = torch.zeros(256, dtype=torch.long)
    assert GCLLoss(COUNTS)(cos, head) < GCLLoss(COUNTS, noise_mul=0)(cos, head)


def test_bf16_inputs_and_autocast_compute_in_float32():
    cos, y = cosines()
    ref = GCLLoss(COUNTS, noise_mul=0)(cos.detach(), y)
    low = GCLLoss(COUNTS, noise_mul=0)(cos.detach().bfloat16(), y)
    assert low.dtype == torch.float32
    assert low == pytest.approx(ref.item(), rel=0.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = GCLLoss(COUNTS)(cos, y)
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_mixup_pair_and_soft_targets_agree():
    cos, y = cosines()
    y2 = torch.roll(y, 1)
    lam = 0.3
    loss = GCLLoss(COUNTS, m=0.1, noise_mul=0)
    pair = loss(cos, (y, y2, lam))
    separate = lam * loss(cos, y) + (1 - lam) * loss(cos, y2)
    assert torch.allclose(pair, separate, atol=1e-5)
    assert torch.allclose(loss(cos, (y, y2, torch.tensor(lam))), pair)  # a device-side lambda works the same
    no_margin = GCLLoss(COUNTS, noise_mul=0)
    mixed = lam * F.one_hot(y, 10).float() + (1 - lam) * F.one_hot(y2, 10).float()
    assert torch.allclose(no_margin(cos, (y, y2, lam)), no_margin(cos, mixed), atol=1e-5)


def test_mixup_draws_the_cloud_once_per_label():
    """The authors run the criterion once per label of the mixed pair, so each term has its own noise draw."""
    cos, y = cosines()
    y2 = torch.roll(y, 1)
    lam = 0.3
    generator = torch.Generator().manual_seed(5)
    loss = GCLLoss(COUNTS, m=0.1, generator=generator)
    pair = loss(cos, (y, y2, lam))
    generator.manual_seed(5)
    first, second = loss(cos, y), loss(cos, y2)  # the same two draws, in the same order
    assert torch.allclose(pair, lam * first + (1 - lam) * second, atol=1e-6)
    generator.manual_seed(5)
    shared = loss.perturb(cos.detach().float())
    one_draw = lam * loss._loss(shared, F.one_hot(y, 10).float()) + (1 - lam) * loss._loss(shared, F.one_hot(y2, 10).float())
    assert not torch.allclose(pair, one_draw, atol=1e-4)


def test_focal_factor_uses_detached_probability():
    cos, y = cosines()
    focal = GCLLoss(COUNTS, noise_mul=0, gamma=1.0)(cos, y)
    logp = F.log_softmax(30 * cos.detach(), 1).gather(1, y[:, None]).squeeze(1)
    expected = ((1 - logp.exp()) * -logp).mean()
    assert focal.item() == pytest.approx(expected.item(), rel=1e-5)
    assert FocalLoss(COUNTS, s=30, gamma=1.0)(cos, y).item() == pytest.approx(expected.item(), rel=1e-5)


def test_equal_counts_give_no_cloud_and_no_nan():
    loss = GCLLoss([100] * 10)
    assert torch.count_nonzero(loss.delta) == 0
    cos, y = cosines()
    assert torch.isfinite(loss(cos, y))
    assert loss(cos, y) == GCLLoss([100] * 10, noise_mul=0)(cos, y)


@pytest.mark.parametrize("counts, match", [([10, 0, 5], "no training images"), ([], "non-empty")])
def test_bad_counts_are_clear_errors(counts, match):
    with pytest.raises(ValueError, match=match):
        GCLLoss(counts)


def test_bad_targets_are_clear_errors():
    cos, _ = cosines(c=10)
    with pytest.raises(ValueError, match=r"lie in \[0, 9\]"):
        GCLLoss(COUNTS)(cos, torch.full((64,), 10))
    with pytest.raises(ValueError, match=r"soft targets must have shape \(N, 10\)"):
        GCLLoss(COUNTS)(cos, torch.rand(64, 3))


def test_wrong_length_counts_error_at_forward():
    cos, y = cosines(c=10)
    with pytest.raises(ValueError, match="cls_num_list has 3"):
        GCLLoss([10, 5, 2])(cos, y)


def test_baselines():
    cos, y = cosines()
    assert torch.allclose(CrossEntropyLoss(COUNTS, s=30)(cos, y), F.cross_entropy(30 * cos, y))
    ldam = LDAMLoss(COUNTS, max_m=0.5, s=30)
    margins = 1 / torch.tensor(COUNTS, dtype=torch.float64) ** 0.25
    margins = (margins * 0.5 / margins.max()).float()
    assert torch.allclose(ldam(cos, y), F.cross_entropy(30 * (cos - F.one_hot(y, 10) * margins), y), atol=1e-5)
    prior = torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS)
    assert torch.allclose(LogitAdjustedLoss(COUNTS, tau=1.0)(cos, y), F.cross_entropy(cos + prior.log(), y), atol=1e-5)
    assert torch.allclose(BalancedSoftmaxLoss(COUNTS)(cos, y), LogitAdjustedLoss(COUNTS)(cos, y))
    w = torch.tensor(drw_class_weights(COUNTS))
    assert w.mean().item() == pytest.approx(1.0) and w[-1] > w[0]
    weighted = CrossEntropyLoss(COUNTS, weight=w.tolist())(cos, y)
    assert torch.allclose(weighted, F.cross_entropy(cos, y, weight=w.float()), atol=1e-5)
