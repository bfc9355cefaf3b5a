"""GAN losses against their formulas on hand-picked logits; label smoothing and label noise."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from bigan import config, losses

pytestmark = pytest.mark.unit


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


LOG2 = math.log(2.0)


def test_loss_kinds_match_the_config_schema():
    assert losses.LOSS_KINDS == config.LOSSES


@pytest.mark.parametrize("fn, real, fake, expected", [
    (losses.hinge_d_loss, t(2.0, 3.0), t(-2.0, -5.0), 0.0),  # both margins met
    (losses.hinge_d_loss, t(0.0), t(0.0), 2.0),
    (losses.hinge_d_loss, t(0.5, 2.0), t(1.0, -1.0), (0.5 + 0.0) / 2 + (2.0 + 0.0) / 2),
    (losses.nonsaturating_d_loss, t(0.0), t(0.0), 2 * LOG2),
    (losses.minimax_d_loss, t(0.0), t(0.0), 2 * LOG2),
    (losses.wasserstein_d_loss, t(1.0, 3.0), t(-1.0, 0.0), -0.5 - 2.0),
    (losses.lsgan_d_loss, t(1.0, 1.0), t(0.0, 0.0), 0.0),  # b = 1 on reals, a = 0 on fakes
    (losses.lsgan_d_loss, t(0.0), t(1.0), 0.5 + 0.5),
    (losses.lsgan_d_loss, t(3.0), t(-1.0), 0.5 * 4.0 + 0.5 * 1.0),
])
def test_d_losses_on_hand_picked_logits(fn, real, fake, expected):
    assert_close(fn(real, fake), scalar(expected))


@pytest.mark.parametrize("fn, fake, expected", [
    (losses.nonsaturating_g_loss, t(0.0, 0.0), LOG2),
    (losses.minimax_g_loss, t(0.0, 0.0), -LOG2),  # log(1 - 1/2)
    (losses.hinge_g_loss, t(1.0, -3.0), 1.0),
    (losses.wasserstein_g_loss, t(1.0, -3.0), 1.0),
    (losses.lsgan_g_loss, t(1.0, 1.0), 0.0),  # c = 1
    (losses.lsgan_g_loss, t(0.0, 3.0), (0.5 * 1.0 + 0.5 * 4.0) / 2),
])
def test_g_losses_on_hand_picked_logits(fn, fake, expected):
    assert_close(fn(fake), scalar(expected))


def test_probabilistic_losses_match_the_log_sigmoid_formulas():
    real, fake = t(-3.0, -0.5, 0.7, 4.0), t(-2.0, 0.1, 1.5, 3.0)
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    d_expected = -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean())
    assert_close(losses.nonsaturating_d_loss(real, fake), d_expected)
    assert_close(losses.minimax_d_loss(real, fake), d_expected)
    assert_close(losses.minimax_g_loss(fake), torch.log(1 - d_fake).mean())
    assert_close(losses.nonsaturating_g_loss(fake), -torch.log(d_fake).mean())


def test_softplus_forms_stay_finite_for_large_logits():
    big = t(-200.0, 200.0)
    for value in (losses.nonsaturating_d_loss(big, big), losses.nonsaturating_g_loss(big),
                  losses.minimax_g_loss(big)):
        assert torch.isfinite(value)
    assert_close(losses.nonsaturating_g_loss(t(-200.0)), scalar(200.0))
    assert_close(losses.minimax_g_loss(t(200.0)), scalar(-200.0))


def test_minimax_generator_saturates_where_the_nonsaturating_one_does_not():
    """At l << 0 (D rejects the fake): d/dl log(1 - sigmoid(l)) = -sigmoid(l) -> 0, while
    d/dl -log sigmoid(l) = sigmoid(l) - 1 -> -1."""
    logits = t(-10.0).requires_grad_(True)
    (g_minimax,) = torch.autograd.grad(losses.minimax_g_loss(logits), logits)
    (g_nonsat,) = torch.autograd.grad(losses.nonsaturating_g_loss(logits), logits)
    assert_close(g_minimax, -torch.sigmoid(t(-10.0)))
    assert_close(g_nonsat, torch.sigmoid(t(-10.0)) - 1)
    assert abs(g_minimax.item()) < 1e-4 and abs(g_nonsat.item()) > 0.99


@pytest.mark.parametrize("kind", losses.LOSS_KINDS)
def test_dispatch_matches_the_pure_functions(kind):
    real, fake = t(-1.0, 0.3, 2.0), t(0.5, -2.0, 1.0)
    d_fn = getattr(losses, f"{kind}_d_loss")
    g_fn = getattr(losses, f"{kind}_g_loss")
    assert_close(losses.d_loss(kind, real, fake), d_fn(real, fake))
    if kind in losses.RELATIVISTIC_KINDS:  # G's side compares with the real logits
        assert_close(losses.g_loss(kind, fake, real), g_fn(fake, real))
        with pytest.raises(ValueError, match="pass real_logits"):
            losses.g_loss(kind, fake)
    else:
        assert_close(losses.g_loss(kind, fake), g_fn(fake))


def test_unknown_kind_is_a_value_error():
    with pytest.raises(ValueError, match="unknown loss kind 'hing'"):
        losses.d_loss("hing", t(0.0), t(0.0))
    with pytest.raises(ValueError, match="unknown loss kind"):
        losses.g_loss("hing", t(0.0))


@pytest.mark.parametrize("kind", ["hinge", "wasserstein"])
def test_smoothing_and_noise_are_refused_for_losses_without_targets(kind):
    with pytest.raises(ValueError, match="label smoothing/noise"):
        losses.d_loss(kind, t(0.0), t(0.0), label_smoothing=0.1)
    with pytest.raises(ValueError, match="label smoothing/noise"):
        losses.d_loss(kind, t(0.0), t(0.0), label_noise=0.1)


def test_one_sided_label_smoothing_moves_only_the_real_target():
    s = 0.1
    real, fake = t(-1.0, 0.5, 2.0), t(-0.5, 1.0, 0.0)
    # Non-saturating: the real term becomes the cross-entropy with target 1 - s.
    expected = (((1 - s) * torch.nn.functional.softplus(-real)
                 + s * torch.nn.functional.softplus(real)).mean()
                + torch.nn.functional.softplus(fake).mean())
    assert_close(losses.d_loss("nonsaturating", real, fake, label_smoothing=s), expected)
    assert_close(losses.d_loss("minimax", real, fake, label_smoothing=s), expected)
    # LSGAN: reals at exactly 1 - s and fakes at 0 cost nothing; without smoothing they would.
    at_target = t(1 - s, 1 - s)
    assert_close(losses.d_loss("lsgan", at_target, t(0.0, 0.0), label_smoothing=s), scalar(0.0))
    assert_close(losses.d_loss("lsgan", at_target, t(0.0, 0.0)), scalar(0.5 * s * s))


def test_label_noise_flips_each_target_with_probability_p():
    p, n = 0.2, 200_000
    zeros = torch.zeros(n)
    g = torch.Generator().manual_seed(0)
    t_real, t_fake = losses.d_targets(zeros, zeros, label_noise=p, generator=g)
    assert set(t_real.unique().tolist()) == {0.0, 1.0} and set(t_fake.unique().tolist()) == {0.0, 1.0}
    # Binomial std of the rate is sqrt(p (1 - p) / n) ~ 0.0009; 0.005 is > 5 sigma.
    assert (t_real == 0).float().mean().item() == pytest.approx(p, abs=0.005)
    assert (t_fake == 1).float().mean().item() == pytest.approx(p, abs=0.005)
    # The same rate through the loss: LSGAN with reals at 1 and fakes at 0 costs
    # 1/2 * (flipped real fraction) + 1/2 * (flipped fake fraction) ~ p.
    g = torch.Generator().manual_seed(1)
    loss = losses.d_loss("lsgan", torch.ones(n), zeros, label_noise=p, generator=g)
    assert loss.item() == pytest.approx(p, abs=0.005)


def test_label_noise_is_reproducible_and_draws_nothing_when_off():
    real, fake = torch.linspace(-2, 2, 64), torch.linspace(2, -2, 64)
    a = losses.d_loss("nonsaturating", real, fake, label_noise=0.3,
                      generator=torch.Generator().manual_seed(5))
    b = losses.d_loss("nonsaturating", real, fake, label_noise=0.3,
                      generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, losses.d_loss("nonsaturating", real, fake))
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    losses.d_loss("nonsaturating", real, fake, label_smoothing=0.1, generator=g)
    assert torch.equal(g.get_state(), state)


def test_smoothing_applies_to_flipped_fakes_too():
    """Labels are flipped first, then every label 1 becomes 1 - s (documented in d_targets)."""
    s, zeros = 0.2, torch.zeros(1000)
    t_real, t_fake = losses.d_targets(zeros, zeros, label_smoothing=s, label_noise=0.4,
                                      generator=torch.Generator().manual_seed(0))
    expected = torch.tensor([0.0, 1 - s])
    assert_close(t_real.unique(), expected)
    assert_close(t_fake.unique(), expected)


def test_rpgan_pairs_each_real_with_its_fake():
    """RpGAN (R3GAN Eq. 2, f = softplus): L_D = mean_i log(1 + exp(D(G(z_i)) - D(x_i))),
    L_G = mean_i log(1 + exp(D(x_i) - D(G(z_i))))."""
    real, fake = t(1.0, -0.5, 3.0), t(0.0, 0.5, -1.0)
    d = sum(math.log1p(math.exp(f - r)) for r, f in zip([1.0, -0.5, 3.0], [0.0, 0.5, -1.0])) / 3
    g = sum(math.log1p(math.exp(r - f)) for r, f in zip([1.0, -0.5, 3.0], [0.0, 0.5, -1.0])) / 3
    assert_close(losses.d_loss("rpgan", real, fake), torch.tensor(d))
    assert_close(losses.g_loss("rpgan", fake, real), torch.tensor(g))
    # pairing, not batch means: swapping two fakes changes the loss
    assert not torch.equal(losses.d_loss("rpgan", real, fake), losses.d_loss("rpgan", real, fake.flip(0)))
