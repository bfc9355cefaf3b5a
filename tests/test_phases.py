"""bigan.train.phases and the `progressive` config section: phases and boundaries, alpha, batch
size and learning rates against the official TrainingSchedule, applying a phase, the real-image
cross-fade, and the shipped ProGAN configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bigan import models
from bigan.config import ConfigError, load_config
from bigan.train import phases
from tests.helpers import CONFIGS

pytestmark = pytest.mark.unit



def cfg_with(*overrides: str):
    base = ["model.arch=progan", "model.resolution=16", "model.start_resolution=4",
            "model.fmap_base=64", "model.fmap_max=8", "model.dim_z=8", "model.num_classes=3",
            "model.shared_dim=4", "model.spectral_norm=false", "data.source=synthetic",
            "progressive.fade_kimg=0.1", "progressive.stab_kimg=0.2", "train.batch_size=8",
            "optim.g_lr=0.001", "optim.d_lr=0.002"]
    return load_config(None, base + list(overrides))


def test_phases_and_boundaries():
    P = phases.Phase
    assert phases.all_phases(cfg_with()) == [
        P(0, 4, False, 0, 200), P(1, 8, True, 200, 300), P(2, 8, False, 300, 500),
        P(3, 16, True, 500, 600), P(4, 16, False, 600, None)]
    assert phases.phase_boundaries(cfg_with()) == [200, 300, 500, 600]
    no_fade = phases.all_phases(cfg_with("progressive.fade_kimg=0"))
    assert [(p.resolution, p.fading, p.start_nimg) for p in no_fade] == [
        (4, False, 0), (8, False, 200), (16, False, 400)]
    single = phases.all_phases(cfg_with("model.start_resolution=16"))
    assert single == [P(0, 16, False, 0, None)]


@pytest.mark.parametrize("nimg, index, res, alpha", [
    (0, 0, 4, 1.0), (199, 0, 4, 1.0), (200, 1, 8, 0.0), (250, 1, 8, 0.5), (299, 1, 8, 0.99),
    (300, 2, 8, 1.0), (550, 3, 16, 0.5), (600, 4, 16, 1.0), (10**12, 4, 16, 1.0)])
def test_phase_at(nimg, index, res, alpha):
    ph = phases.phase_at(nimg, cfg_with())
    assert (ph.index, ph.resolution, ph.phase.fading) == (index, res, index in (1, 3))
    assert ph.alpha == pytest.approx(alpha)


def _official(cur_nimg: int, resolution: int, initial: int, training: int, transition: int):
    """The official code's TrainingSchedule (train.py): level of detail -> (resolution, alpha)."""
    phase_dur = training + transition
    phase_idx = cur_nimg // phase_dur
    phase_nimg = cur_nimg - phase_idx * phase_dur
    lod = math.log2(resolution) - math.log2(initial) - phase_idx
    lod -= max(phase_nimg - training, 0) / transition
    lod = max(lod, 0.0)
    return 2 ** (int(math.log2(resolution)) - math.floor(lod)), 1 - (lod - math.floor(lod))


def test_matches_the_official_schedule():
    cfg = cfg_with("progressive.fade_kimg=0.3", "progressive.stab_kimg=0.3")
    for nimg in range(0, 3000, 7):
        ph = phases.phase_at(nimg, cfg)
        res, alpha = _official(nimg, 16, 4, 300, 300)
        assert ph.resolution == res and ph.alpha == pytest.approx(alpha), nimg


def test_batch_size_and_learning_rates_per_resolution():
    cfg = cfg_with("progressive.batch_size={4: 32, 16: 4}", "progressive.g_lr={8: 0.003}",
                   "progressive.d_lr.16=0.004")
    got = [(ph.batch_size, ph.g_lr, ph.d_lr) for ph in
           (phases.phase_at(n, cfg) for n in (0, 250, 300, 550, 700))]
    assert got == [(32, 0.001, 0.002), (8, 0.003, 0.002), (8, 0.003, 0.002),
                   (4, 0.001, 0.004), (4, 0.001, 0.004)]  # a fade-in uses the new resolution's


def test_entered_new_phase():
    cfg = cfg_with()
    assert not phases.entered_new_phase(0, 199, cfg)
    assert phases.entered_new_phase(192, 200, cfg)
    assert phases.entered_new_phase(296, 304, cfg)
    assert not phases.entered_new_phase(600, 10**9, cfg)
    with pytest.raises(ValueError, match="cur_nimg=-1"):
        phases.phase_at(-1, cfg)


def test_apply_phase_and_reset_optimizer_state():
    import copy

    cfg = cfg_with("progressive.g_lr={8: 0.003}")
    torch.manual_seed(0)
    G, D = models.build(cfg.model)
    G_ema = copy.deepcopy(G)
    opt_G, opt_D = (torch.optim.Adam(m.parameters(), lr=1.0) for m in (G, D))
    ph = phases.phase_at(250, cfg)
    phases.apply_phase(ph, [G, D, G_ema], opt_G, opt_D)
    for net in (G, D, G_ema):
        assert (net.current_resolution, net.alpha) == (8, 0.5)
    assert [g["lr"] for g in opt_G.param_groups] == [0.003]
    assert [g["lr"] for g in opt_D.param_groups] == [0.002]
    z, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    D(G(z, y), y).mean().backward()
    opt_G.step(), opt_D.step()
    assert len(opt_G.state) > 0 and len(opt_D.state) > 0
    phases.reset_optimizer_state(opt_G, opt_D)
    assert len(opt_G.state) == 0 and len(opt_D.state) == 0
    opt_G.step()  # fresh moments from the next step on
    assert all(s["step"] == 1 for s in opt_G.state.values())


def test_phase_reals():
    x = torch.randn(2, 3, 16, 16)
    x8 = phases.phase_reals(x, 8, 1.0)
    torch.testing.assert_close(x8, x.reshape(2, 3, 8, 2, 8, 2).mean(dim=(3, 5)))  # 2x2 box
    x4 = phases.phase_reals(x, 4, 1.0)
    torch.testing.assert_close(x4, F.avg_pool2d(F.avg_pool2d(x, 2), 2))  # the official pyramid
    coarse = F.interpolate(F.avg_pool2d(x8, 2), scale_factor=2.0, mode="nearest")
    torch.testing.assert_close(phases.phase_reals(x, 8, 0.0), coarse, rtol=0, atol=0)
    torch.testing.assert_close(phases.phase_reals(x, 8, 0.25), 0.75 * coarse + 0.25 * x8)
    torch.testing.assert_close(phases.phase_reals(x, 16, 1.0), x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="power-of-two multiple"):
        phases.phase_reals(torch.randn(1, 3, 12, 12), 8, 1.0)


# --- the config section and the shipped configs ---------------------------------------------------

def test_progan_configs_load_and_validate():
    paper = load_config(CONFIGS / "progan_1024.yaml")
    m, p = paper.model, paper.progressive
    assert (m.arch, m.resolution, m.start_resolution, m.fmap_base, m.fmap_max) == (
        "progan", 1024, 4, 8192, 512)
    assert (p.fade_nimg, p.stab_nimg) == (600_000, 600_000)
    assert p.batch_size == {4: 16, 8: 16, 16: 16, 32: 16, 64: 16, 128: 16, 256: 14, 512: 6,
                            1024: 3}
    assert (paper.optim.g_lr, paper.optim.d_lr, paper.optim.betas, paper.optim.eps) == (
        0.001, 0.001, [0.0, 0.99], 1e-8)
    assert (paper.loss.kind, paper.loss.penalty, paper.loss.penalty_weight,
            paper.loss.drift_weight) == ("wasserstein", "wgan-gp", 10.0, 0.001)
    assert len(phases.all_phases(paper)) == 17
    demo = load_config(CONFIGS / "progan_demo.yaml")
    assert demo.data.source == "synthetic" and demo.model.resolution == 64
    assert [ph.resolution for ph in phases.all_phases(demo)] == [4, 8, 8, 16, 16, 32, 32, 64, 64]
    final_start = phases.all_phases(demo)[-1].start_nimg
    nimg = 0
    for _ in range(demo.train.steps):
        nimg += phases.phase_at(nimg, demo).batch_size * demo.optim.d_steps
    assert nimg > final_start  # the demo reaches its last phase


@pytest.mark.parametrize("override, field, words", [
    ("progressive.batch_size={3: 8}", "progressive.batch_size.3", "must be one of"),
    ("progressive.batch_size={32: 8}", "progressive.batch_size.32", "not a phase resolution"),
    ("progressive.g_lr={8: 0}", "progressive.g_lr.8", "must be > 0"),
    ("progressive.batch_size={8: 6}", "progressive.batch_size.8", "minibatch std-dev group"),
    ("train.batch_size=6", "train.batch_size", "minibatch std-dev group"),
    ("progressive.fade_kimg=-1", "progressive.fade_kimg", ">= 0"),
    ("progressive.stab_kimg=0", "progressive.stab_kimg", "> 0"),
    ("progressive.stab_kimg=0.0005", "progressive.stab_kimg", "whole number of images"),
    ("progressive.batch_size=[8]", "progressive.batch_size", "must be a mapping"),
    ("progressive.batch_size={8: x}", "progressive.batch_size.8", "integer"),
    ("model.start_resolution=32", "model.start_resolution", "up to model.resolution"),
    ("model.resolution=2048", "model.resolution", "must be one of"),
    ("model.fmap_max=0", "model.fmap_max", "must be > 0"),
])
def test_bad_progressive_values_name_the_field(override, field, words):
    with pytest.raises(ConfigError) as err:
        cfg_with(override)
    assert field in str(err.value) and words in str(err.value)


def test_dotted_override_of_one_resolution():
    cfg = load_config(CONFIGS / "progan_1024.yaml", ["progressive.batch_size.1024=4"])
    assert cfg.progressive.batch_size[1024] == 4 and cfg.progressive.batch_size[512] == 6
    assert all(isinstance(k, int) for k in cfg.progressive.batch_size)


def test_the_ema_age_restarts_when_a_new_block_fades_in():
    """ema.rampup counts images since the newest block's layers began: the fade-in's start, kept
    through the stabilisation after it; a fixed-resolution run counts from the start."""
    import torch

    from bigan.train.curriculum import Fixed, Progressive

    cfg = cfg_with()
    stab, fade = cfg.progressive.stab_nimg, cfg.progressive.fade_nimg
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    course = Progressive(cfg, [], opt, opt, 0)

    def age(nimg: int) -> int:
        course.begin_step(0, nimg)
        return course.ema_age_nimg(nimg)

    assert age(stab - 1) == stab - 1  # first phase: since the start
    assert age(stab + 5) == 5  # fading in the first new block
    assert age(stab + fade + 7) == fade + 7  # stabilising it: still since its fade-in began
    assert age(2 * stab + fade + 3) == 3  # the next block's fade-in
    assert Fixed(cfg, opt, opt).ema_age_nimg(12345) == 12345
