"""EMA of generator weights: warm-up, exact averaging, buffers copied, spectral norm, and
standing statistics against hand-computed batch means."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.testing import assert_close

from bigan import ema

pytestmark = pytest.mark.unit

DIM_Z, HIDDEN, CLASSES = 4, 6, 3


class TinyG(nn.Module):
    """BN directly on z (so its statistics are hand-computable), then spectral-norm layers."""

    def __init__(self):
        super().__init__()
        self.bn_in = nn.BatchNorm1d(DIM_Z)
        self.embed = nn.Embedding(CLASSES, DIM_Z)
        self.fc1 = spectral_norm(nn.Linear(DIM_Z, HIDDEN))
        self.bn_hidden = nn.BatchNorm1d(HIDDEN, momentum=0.3)
        self.fc2 = spectral_norm(nn.Linear(HIDDEN, 2))

    def forward(self, z, y):
        h = self.bn_in(z) + self.embed(y)
        return self.fc2(torch.relu(self.bn_hidden(self.fc1(h))))


def _tiny(seed: int) -> TinyG:
    torch.manual_seed(seed)
    return TinyG()


def _run_train_steps(model: nn.Module, n: int = 3, seed: int = 0) -> None:
    """Forward passes in train mode: BN stats and SN u/v move away from their initial values."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(n):
            model(torch.randn(8, DIM_Z, generator=g) * 2 + 1, torch.randint(0, CLASSES, (8,), generator=g))


def test_ema_decay_warm_up_then_decay():
    assert [ema.ema_decay(s, 0.999, 3) for s in range(5)] == [0.0, 0.0, 0.0, 0.999, 0.999]
    assert ema.ema_decay(0, 0.9, 0) == 0.9
    with pytest.raises(ValueError, match="decay"):
        ema.ema_decay(0, 1.0, 0)


def test_decay_zero_copies_exactly_and_buffers_follow():
    G, G_ema = _tiny(0), _tiny(1)
    _run_train_steps(G)
    ema.update_ema(G_ema, G, 0.0)
    for (name, a), (_, b) in zip(G_ema.state_dict().items(), G.state_dict().items()):
        assert torch.equal(a, b), name


def test_decay_half_averages_and_decay_point_nine_weights_the_old_value():
    G, G_ema = _tiny(0), _tiny(1)
    before = {n: p.detach().clone() for n, p in G_ema.named_parameters()}
    ema.update_ema(G_ema, G, 0.5)
    for name, p in G.named_parameters():
        assert_close(dict(G_ema.named_parameters())[name], (before[name] + p.detach()) / 2)
    before = {n: p.detach().clone() for n, p in G_ema.named_parameters()}
    ema.update_ema(G_ema, G, 0.9)
    for name, p in G.named_parameters():
        assert_close(dict(G_ema.named_parameters())[name], 0.9 * before[name] + 0.1 * p.detach())


def test_parameters_averaged_buffers_copied_with_spectral_norm():
    G = _tiny(0)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    _run_train_steps(G)  # changes BN running stats and the SN u/v buffers of G
    ema_before = {n: p.detach().clone() for n, p in G_ema.named_parameters()}
    ema.update_ema(G_ema, G, 0.75)
    names = dict(G.named_parameters())
    assert "fc1.parametrizations.weight.original" in names  # the averaged SN parameter
    for name, p in G_ema.named_parameters():
        assert_close(p, 0.75 * ema_before[name] + 0.25 * names[name].detach())
    buffers = dict(G.named_buffers())
    assert {"fc1.parametrizations.weight.0._u", "bn_in.running_mean"} <= buffers.keys()
    for name, b in G_ema.named_buffers():
        assert torch.equal(b, buffers[name]), name
    assert not G_ema.training and not any(p.requires_grad for p in G_ema.parameters())


def test_mismatched_models_are_refused():
    with pytest.raises(ValueError, match="different parameters"):
        ema.update_ema(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.5)
    with pytest.raises(ValueError, match="decay"):
        ema.update_ema(nn.Linear(2, 2), nn.Linear(2, 2), 1.0)


def test_standing_stats_average_the_batch_statistics_and_leave_spectral_norm_alone():
    G = _tiny(0)
    _run_train_steps(G)  # running stats now hold something else
    G.train()
    g = torch.Generator().manual_seed(42)
    batches = [(torch.randn(16, DIM_Z, generator=g) * (i + 1) + i,
                torch.randint(0, CLASSES, (16,), generator=g)) for i in range(3)]
    u_before = {n: b.clone() for n, b in G.named_buffers() if n.endswith(("_u", "_v"))}
    assert u_before
    feed = iter(batches)

    ema.standing_stats(G, lambda: next(feed), n_batches=3)

    expected_mean = torch.stack([z.mean(0) for z, _ in batches]).mean(0)
    expected_var = torch.stack([z.var(0, unbiased=True) for z, _ in batches]).mean(0)
    assert_close(G.bn_in.running_mean, expected_mean)
    assert_close(G.bn_in.running_var, expected_var)
    assert G.bn_in.num_batches_tracked.item() == 3
    for name, b in G.named_buffers():
        if name in u_before:
            assert torch.equal(b, u_before[name]), name
    # Modes and momenta restored.
    assert all(m.training for m in G.modules())
    assert G.bn_in.momentum == 0.1 and G.bn_hidden.momentum == 0.3


def test_standing_stats_restore_eval_mode_and_refuse_zero_batches():
    G = _tiny(0).eval()
    before = G.bn_hidden.running_mean.clone()
    g = torch.Generator().manual_seed(0)
    ema.standing_stats(G, lambda: (torch.randn(8, DIM_Z, generator=g),
                                   torch.randint(0, CLASSES, (8,), generator=g)), 2)
    assert not any(m.training for m in G.modules())
    assert not torch.equal(G.bn_hidden.running_mean, before)
    with pytest.raises(ValueError, match="n_batches"):
        ema.standing_stats(G, lambda: None, 0)


def test_ramped_decay_caps_the_half_life_by_the_age_of_the_average():
    # Half-life of decay 0.998 at batch 32: 32 * ln 0.5 / ln 0.998 = 11,075 images.
    assert ema.ramped_decay(0.998, 32, age_nimg=10**9, rampup=0.05) == 0.998  # old enough: unchanged
    assert ema.ramped_decay(0.998, 32, age_nimg=1000, rampup=0.0) == 0.998  # off
    young = ema.ramped_decay(0.998, 32, age_nimg=6400, rampup=0.05)  # cap 320 images = 10 steps
    assert young == pytest.approx(0.5 ** (1 / 10))
    assert ema.ramped_decay(0.9, 32, age_nimg=0, rampup=0.05) == pytest.approx(0.5 ** (32 / 1.6))  # age >= batch
    assert ema.ramped_decay(0.0, 32, age_nimg=10, rampup=0.05) == 0.0  # BigGAN's warm-up copy stays a copy
    ages = [ema.ramped_decay(0.998, 32, age_nimg=a, rampup=0.05) for a in (640, 6400, 64000, 640000)]
    assert ages == sorted(ages) and ages[-1] == 0.998
