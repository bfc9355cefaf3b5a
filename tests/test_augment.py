"""bigan/augment.py: DiffAugment and ADA ops, keyed draws, ADA's p rule, and p in the D step."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from bigan import augment, config
from bigan.augment import ada_adjust, ada_augment, diffaugment
from bigan.config import AugmentConfig, LossConfig
from bigan.train.step import Batch, StepState, d_update, StepRuntime

pytestmark = pytest.mark.unit

OPS = {
    "color": lambda x, g, rows=None: augment.diff_color(x, g, rows),
    "translation": lambda x, g, rows=None: augment.diff_translation(x, g, rows),
    "cutout": lambda x, g, rows=None: augment.diff_cutout(x, g, rows),
    "diffaugment": lambda x, g, rows=None: diffaugment(x, "color,translation,cutout", g, rows),
    "ada": lambda x, g, rows=None: ada_augment(x, 0.6, g, rows),
}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 6, side: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=_gen(seed)) * 2 - 1


@pytest.mark.parametrize("op", OPS)
def test_each_op_is_differentiable(op):
    """Double-precision gradcheck: the op's Jacobian matches finite differences, for a fixed key."""
    x = _images(2, 6).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: OPS[op](t, _gen(3)), (x,), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("op", OPS)
def test_same_key_same_images_other_key_other_images(op):
    x = _images()
    assert torch.equal(OPS[op](x, _gen(5)), OPS[op](x, _gen(5)))
    assert not torch.equal(OPS[op](x, _gen(5)), OPS[op](x, _gen(6)))


@pytest.mark.parametrize("op", OPS)
def test_samples_get_different_draws(op):
    """One image repeated: every copy is augmented its own way."""
    x = _images(1, 16).expand(8, 3, 16, 16).contiguous()
    out = OPS[op](x, _gen(2)).flatten(1)
    distinct = {tuple(row.tolist()) for row in out}
    assert len(distinct) >= 6, f"{op}: only {len(distinct)} distinct augmentations of 8"


@pytest.mark.parametrize("op", OPS)
def test_a_workers_rows_are_its_slice_of_the_global_batch(op):
    """Drawn for the global batch and sliced: the halves of 2 workers equal 1 worker's whole."""
    x = _images(8)
    whole = OPS[op](x, _gen(4))
    halves = torch.cat([OPS[op](x[:4], _gen(4), (0, 8)), OPS[op](x[4:], _gen(4), (4, 8))])
    assert torch.equal(whole, halves)


def test_ada_at_p_zero_is_the_identity_and_draws_the_same_count():
    x = _images()
    assert torch.equal(ada_augment(x, 0.0, _gen(1)), x)
    # the number of draws does not depend on p: the generator ends in the same state
    g0, g1 = _gen(1), _gen(1)
    ada_augment(x, 0.0, g0), ada_augment(x, 0.9, g1)
    assert torch.equal(torch.rand(3, generator=g0), torch.rand(3, generator=g1))


def test_ada_at_high_p_changes_most_images():
    x = _images(32, 16)
    changed = (ada_augment(x, 0.8, _gen(1)) != x).flatten(1).any(1)
    assert changed.float().mean() > 0.9


def test_ada_pipeline_fires_only_its_transforms_and_draws_the_same_numbers():
    n, dev = 256, torch.device("cpu")
    # no flips or rotations: every inverse warp keeps the axes, scales positively and shifts
    inverse, moved = augment.ada_geometry(n, 0.8, _gen(2), None, dev,
                                          frozenset({"xint", "scale", "aniso", "xfrac"}))
    assert moved.float().mean() > 0.9
    assert torch.equal(inverse[:, 0, 1], torch.zeros(n)) and torch.equal(inverse[:, 1, 0], torch.zeros(n))
    assert bool((inverse[:, 0, 0] > 0).all() and (inverse[:, 1, 1] > 0).all())
    # the full pipeline flips and rotates some samples
    inverse, _ = augment.ada_geometry(n, 0.8, _gen(2), None, dev)
    assert bool((inverse[:, 0, 0] < 0).any() and (inverse[:, 0, 1] != 0).any())
    # translation alone: identity linear part
    inverse, _ = augment.ada_geometry(n, 0.8, _gen(2), None, dev, frozenset({"xint"}))
    assert torch.allclose(inverse[:, :2, :2], torch.eye(2).expand(n, 2, 2))
    x = _images(32, 16)
    # each half of the pipeline changes images, and draws as many numbers as the other
    for pipeline, other in (("color", "geom"), ("geom", "color")):
        g0, g1 = _gen(3), _gen(3)
        out = ada_augment(x, 0.8, g0, None, pipeline)
        assert (out != x).flatten(1).any(1).float().mean() > 0.5
        ada_augment(x, 0.8, g1, None, other)
        assert torch.equal(torch.rand(3, generator=g0), torch.rand(3, generator=g1))
    # a geometry-only pipeline never tints: the moved images are the warp, exactly
    geom_only = ada_augment(x, 0.8, _gen(3), None, "geom")
    bgc_geometry, _ = augment.ada_geometry(32, 0.8, _gen(3), None, dev, frozenset(config.ADA_PIPELINES["geom"]))
    grid = torch.nn.functional.affine_grid(bgc_geometry[:, :2, :], list(x.shape), align_corners=False)
    warped = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                                             align_corners=False)
    moved = (geom_only != x).flatten(1).any(1)
    assert_close(geom_only[moved], warped[moved])
    assert torch.equal(ada_augment(x, 0.8, _gen(3), None, "bgc"), ada_augment(x, 0.8, _gen(3)))


@pytest.mark.parametrize("pipeline", ["bg", "blit", "xint, scale", "brightness,contrast"])
def test_ada_pipeline_config_accepts_named_and_listed_pipelines(pipeline):
    AugmentConfig(kind="ada", ada_pipeline=pipeline).validate()


@pytest.mark.parametrize("pipeline", ["", "xint,xint", "cutout", "bgcf"])
def test_ada_pipeline_config_rejects_unknown_transforms_naming_the_field(pipeline):
    with pytest.raises(config.ConfigError, match="augment.ada_pipeline"):
        AugmentConfig(kind="ada", ada_pipeline=pipeline).validate()


def test_augment_dispatch():
    x = _images()
    assert augment.augment(x, AugmentConfig(kind="none"), 0.5, _gen()) is x
    assert torch.equal(augment.augment(x, AugmentConfig(kind="diffaugment", policy="cutout"), 0.0, _gen(1)),
                       augment.diff_cutout(x, _gen(1)))
    assert torch.equal(augment.augment(x, AugmentConfig(kind="ada"), 0.4, _gen(1)),
                       ada_augment(x, 0.4, _gen(1)))
    assert torch.equal(augment.augment(x, AugmentConfig(kind="ada", ada_pipeline="blit"), 0.4, _gen(1)),
                       ada_augment(x, 0.4, _gen(1), None, "blit"))


def test_translation_moves_whole_pixels_and_fills_zeros():
    x = torch.arange(64.0).view(1, 1, 8, 8).expand(16, 3, 8, 8) + 1  # no zeros inside
    out = augment.diff_translation(x, _gen(0))
    for img in out[:, 0]:
        kept = img[img != 0]
        assert kept.numel() >= 36  # at most 1 pixel of shift per side at 8 px (int(8 * 0.125 + 0.5))
        assert set(kept.tolist()) <= set(x[0, 0].flatten().tolist())


def test_cutout_zeroes_one_square_of_half_the_side():
    x = torch.ones(16, 3, 8, 8)
    out = augment.diff_cutout(x, _gen(0))
    zeros = (out[:, 0] == 0).flatten(1).sum(1)
    assert zeros.max() == 16 and zeros.min() >= 4  # a 4x4 square, clipped at the borders


def test_ada_adjust_follows_the_formula_and_its_bounds():
    p = torch.tensor(0.3)
    step = 64 * 4 / (500 * 1000)
    assert_close(ada_adjust(p, torch.tensor(0.9), 0.6, 64 * 4, 500.0, 0.8), p + step)
    assert_close(ada_adjust(p, torch.tensor(0.2), 0.6, 64 * 4, 500.0, 0.8), p - step)
    assert_close(ada_adjust(torch.tensor(0.79), torch.tensor(1.0), 0.6, 10_000, 1.0, 0.8), torch.tensor(0.8))
    assert_close(ada_adjust(torch.tensor(0.01), torch.tensor(-1.0), 0.6, 10_000, 1.0, 0.8), torch.tensor(0.0))


class _ConstantD(nn.Module):
    """A D whose output on every image is `value`: +1 is a D that calls everything real (as an
    overfitting D does on its training set), -1 one that does not."""

    def __init__(self, value: float):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(value))

    def forward(self, x, y):
        return self.bias + 0 * x.flatten(1).sum(1)


class _G(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, z, y):
        return torch.tanh(z[:, :48].view(-1, 3, 4, 4) + self.w)


def _d_updates(D: nn.Module, aug: AugmentConfig, state: StepState, n: int) -> None:
    G, opt = _G(), torch.optim.SGD(D.parameters(), lr=0.0)  # lr 0: D stays as constructed
    for k in range(n):
        g = _gen(k)
        batch = Batch(z=torch.randn(8, 48, generator=g), fake_y=torch.zeros(8, dtype=torch.long),
                      generator=g, real=_images(8, 4, seed=k), real_y=torch.zeros(8, dtype=torch.long))
        d_update(G, D, opt, batch, LossConfig(), state, StepRuntime(), aug)


def test_ada_p_rises_on_an_overfitting_d_and_falls_otherwise():
    aug = AugmentConfig(kind="ada", ada_interval=4, ada_kimg=0.1, ada_p_max=0.8)
    state = StepState()
    _d_updates(_ConstantD(1.0), aug, state, 8)  # r_t = 1 > 0.6: two adjustments up
    per = 8 * 4 / (0.1 * 1000)
    assert state.ada_p == pytest.approx(2 * per, rel=1e-6)
    _d_updates(_ConstantD(1.0), aug, state, 40)
    assert state.ada_p == pytest.approx(0.8)  # the cap
    _d_updates(_ConstantD(-1.0), aug, state, 4)  # r_t = -1 < 0.6: down
    assert state.ada_p == pytest.approx(0.8 - per, rel=1e-6)
    _d_updates(_ConstantD(-1.0), aug, state, 40)
    assert state.ada_p == 0.0


def test_lecam_emas_follow_d_and_the_penalty_enters_the_loss():
    aug = AugmentConfig(lecam_weight=0.3, lecam_decay=0.5, lecam_start_kimg=0.008)  # 1 update of 8
    state = StepState()
    _d_updates(_ConstantD(2.0), aug, state, 1)  # before the start: the EMAs equal the means
    assert (state.lecam_real, state.lecam_fake) == (2.0, 2.0)
    state.lecam_real, state.lecam_fake = 0.0, 4.0
    _d_updates(_ConstantD(2.0), aug, state, 1)  # then ema * 0.5 + 2 * 0.5
    assert (state.lecam_real, state.lecam_fake) == (1.0, 3.0)
