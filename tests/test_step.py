"""One GAN iteration: who gets gradients, how many updates, lazy regularization, bf16."""

from __future__ import annotations


import pytest
import torch

from bigan import models
from bigan.config import LossConfig, ModelConfig
from bigan.train.step import Batch, StepRuntime, StepState, d_update, g_update, gan_iteration

pytestmark = pytest.mark.unit


def _setup(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="mlp", num_classes=3, dim_z=4, data_dim=2, mlp_hidden=16, mlp_layers=2)
    G, D = models.build(cfg)
    return G, D, torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(z=torch.randn(n, 4, generator=g), fake_y=torch.randint(0, 3, (n,), generator=g),
                 generator=g, real=torch.randn(n, 2, generator=g),
                 real_y=torch.randint(0, 3, (n,), generator=g))


def test_g_update_computes_no_discriminator_gradient():
    G, D, opt_G, _ = _setup()
    before = [p.detach().clone() for p in G.parameters()]
    g_update(G, D, opt_G, _batch(), LossConfig(), StepRuntime())
    assert all(p.grad is None for p in D.parameters())
    assert all(p.requires_grad for p in D.parameters())  # unfrozen afterwards
    assert any(not torch.equal(a, b) for a, b in zip(before, G.parameters()))


def test_d_update_leaves_the_generator_untouched():
    G, D, _, opt_D = _setup()
    state = StepState()
    d_update(G, D, opt_D, _batch(), LossConfig(penalty="wgan-gp"), state, StepRuntime())
    assert all(p.grad is None for p in G.parameters()) and state.d_updates == 1


def test_k_discriminator_steps_then_one_generator_step():
    G, D, opt_G, opt_D = _setup()
    state = StepState()
    metrics = gan_iteration(G, D, opt_G, opt_D, [_batch(seed=i) for i in range(3)], _batch(seed=9),
                            LossConfig(), state)
    assert state.d_updates == 3
    assert next(iter(opt_D.state.values()))["step"].item() == 3
    assert next(iter(opt_G.state.values()))["step"].item() == 1
    assert {"loss/D", "loss/G", "D/real", "D/fake"} <= metrics.keys()


def test_lazy_regularization_applies_the_penalty_every_interval():
    G, D, _, opt_D = _setup()
    state, cfg = StepState(), LossConfig(penalty="r1", penalty_interval=2)
    seen = ["loss/penalty" in d_update(G, D, opt_D, _batch(seed=i), cfg, state, StepRuntime())
            for i in range(4)]
    assert seen == [True, False, True, False]


def test_penalty_is_scaled_by_weight_and_interval():
    """The D gradient from the penalty term is weight * interval * dPen (R1: weight / 2)."""
    losses = []
    for weight, interval in [(0.0, 1), (2.0, 1), (2.0, 3)]:
        G, D, _, _ = _setup()
        grads = {}
        opt = torch.optim.SGD(D.parameters(), lr=0.0)
        runtime = StepRuntime(backward=lambda loss: (grads.setdefault("loss", float(loss.detach())), loss.backward()))
        d_update(G, D, opt, _batch(), LossConfig(penalty="r1", penalty_weight=weight,
                                                penalty_interval=interval), StepState(), runtime)
        losses.append(grads["loss"])
    base, w2, w2i3 = losses
    assert w2i3 - base == pytest.approx(3 * (w2 - base), rel=1e-5)


def test_bf16_autocast_trains_with_finite_losses():
    G, D, opt_G, opt_D = _setup()
    runtime = StepRuntime(autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    metrics = gan_iteration(G, D, opt_G, opt_D, [_batch()], _batch(seed=1),
                            LossConfig(penalty="wgan-gp"), StepState(), runtime)
    assert all(torch.isfinite(v) for v in metrics.values())


def test_gradient_clipping_bounds_the_norm():
    G, D, _, opt_D = _setup()
    clipped = []
    runtime = StepRuntime(grad_clip=1e-3, clip_grad=lambda p, m: clipped.append(m) or
                          torch.nn.utils.clip_grad_norm_(list(p), m))
    out = d_update(G, D, opt_D, _batch(), LossConfig(), StepState(), runtime)
    assert clipped == [1e-3] and out["grad_norm/D"] > 0
    total = torch.norm(torch.stack([p.grad.norm() for p in D.parameters() if p.grad is not None]))
    assert total <= 1e-3 * 1.01
