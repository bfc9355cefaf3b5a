"""bigan.models.progan: shapes at every phase, fade-in against its formula, equalized-LR scales,
minibatch statistics, the paper's parameter counts, gradient penalties and Adam at a fade-in
phase, class conditioning, and the phase travelling in the state dict."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bigan import models, regularizers
from bigan.config import ConfigError, ModelConfig
from bigan.models import progan

pytestmark = pytest.mark.unit

TINY = dict(arch="progan", num_classes=3, dim_z=8, shared_dim=4, fmap_base=64, fmap_max=8,
            spectral_norm=False)


def build(seed: int = 0, **changes):
    cfg = ModelConfig(**{**TINY, "resolution": 16, **changes})
    cfg.validate()
    torch.manual_seed(seed)
    return models.build(cfg)


def inputs(n: int = 4, res: int = 16, num_classes: int = 3, dim_z: int = 8, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim_z, generator=gen)
    y = torch.randint(0, num_classes, (n,), generator=gen)
    x = torch.rand(n, 3, res, res, generator=gen) * 2 - 1
    return z, y, x


def test_shapes_at_every_phase_from_4_to_1024():
    G, D = build(resolution=1024, fmap_base=16, fmap_max=4)
    assert G.phases == D.phases == [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    z, y, _ = inputs(n=1)
    G.eval(), D.eval()
    with torch.no_grad():
        for res in G.phases:
            for alpha in ([1.0] if res == 4 else [0.5, 1.0]):
                G.set_phase(res, alpha), D.set_phase(res, alpha)
                img = G(z, y)
                assert img.shape == (1, 3, res, res)
                assert img.abs().max() <= 1.0
                assert D(img, y).shape == (1,)


def test_widths_follow_the_paper():
    cfg = ModelConfig(arch="progan", resolution=1024)
    assert progan.widths(cfg) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128,
                                  256: 64, 512: 32, 1024: 16}
    assert progan.widths(ModelConfig(arch="progan", resolution=64, fmap_base=64, fmap_max=8)) == {
        4: 8, 8: 8, 16: 8, 32: 4, 64: 2}


@pytest.mark.parametrize("res", [8, 16])
@pytest.mark.parametrize("training", [True, False])
def test_generator_fade_in_endpoints(res, training):
    G, _ = build(resolution=16, start_resolution=4)
    G.train(training)
    z, y, _ = inputs()
    with torch.no_grad():
        G.set_phase(res // 2, 1.0)
        old = G(z, y)
        G.set_phase(res, 0.0)
        torch.testing.assert_close(G(z, y), F.interpolate(old, scale_factor=2.0, mode="nearest"),
                                   rtol=0, atol=0)
        # alpha = 1: the new block's toRGB, composed by hand from the modules.
        h = G.first(G.latent_norm(torch.cat([z, G.class_vector(y, z.dtype)], dim=1)))
        for r in range(3, int(math.log2(res)) + 1):
            h = G.blocks[str(2 ** r)](h)
        new = G.to_rgb[str(res)](h)
        new = new if training else new.clamp(-1, 1)
        G.set_phase(res, 1.0)
        torch.testing.assert_close(G(z, y), new, rtol=0, atol=0)
        G.set_phase(res, 0.25)  # in between: the linear blend of the two
        expected = 0.75 * F.interpolate(old, scale_factor=2.0, mode="nearest") + 0.25 * new
        if training:
            torch.testing.assert_close(G(z, y), expected)


@pytest.mark.parametrize("res", [8, 16])
@pytest.mark.parametrize("sn", [False, True])
def test_discriminator_fade_in_endpoints(res, sn):
    _, D = build(resolution=16, spectral_norm=sn)
    D.eval()  # spectral norm: no power iteration between the calls
    _, y, x = inputs(res=res)
    with torch.no_grad():
        D.set_phase(res // 2, 1.0)
        old = D(F.avg_pool2d(x, 2), y)
        D.set_phase(res, 0.0)
        torch.testing.assert_close(D(x, y), old, rtol=0, atol=0)
        h = progan._lrelu(D.from_rgb[str(res)](x))
        for r in range(int(math.log2(res)), 2, -1):
            h = D.blocks[str(2 ** r)](h)
        D.set_phase(res, 1.0)
        torch.testing.assert_close(D(x, y), D.last(h, y), rtol=0, atol=0)


def test_phase_validation_and_checks():
    G, D = build(resolution=16, start_resolution=8)
    assert G.phases == [8, 16] and (G.current_resolution, G.alpha) == (16, 1.0)  # built final
    with pytest.raises(ValueError, match="not a phase"):
        G.set_phase(4)
    with pytest.raises(ValueError, match="nothing to fade from"):
        G.set_phase(8, 0.5)
    with pytest.raises(ValueError, match=r"alpha=1.5 must be in \[0, 1\]"):
        D.alpha = 1.5
    D.alpha = 0.3
    assert (D.current_resolution, D.alpha) == (16, 0.3)
    _, y, x = inputs(res=8)
    with pytest.raises(ValueError, match="16x16 phase"):
        D(x, y)
    assert "first.dense.weight" in dict(G.named_parameters())
    assert "to_rgb.4.weight" not in dict(G.named_parameters())  # below start_resolution


def test_equalized_learning_rate_scales():
    G, D = build(resolution=8)
    he = lambda fan_in: math.sqrt(2 / fan_in)  # noqa: E731
    ch = progan.widths(ModelConfig(**{**TINY, "resolution": 8}))
    assert G.first.dense.scale == pytest.approx(0.25 * he(8 + 4))  # official gain sqrt(2)/4
    assert G.blocks["8"].conv0.scale == pytest.approx(he(ch[4] * 9))
    assert G.to_rgb["8"].scale == pytest.approx(1 / math.sqrt(ch[8]))  # official gain 1
    assert D.from_rgb["8"].scale == pytest.approx(he(3))
    assert D.last.conv.scale == pytest.approx(he((ch[4] + 1) * 9))  # + the std-dev map
    assert D.last.dense1.scale == pytest.approx(1 / math.sqrt(D.last.dense1.weight.shape[1]))
    w = torch.cat([p.detach().flatten() for n, p in G.named_parameters() if n.endswith("weight")
                   and "embed" not in n])
    assert abs(w.mean().item()) < 0.05 and abs(w.std().item() - 1) < 0.05  # N(0, 1) storage


def test_minibatch_stddev_groups_in_the_discriminator():
    _, D = build(resolution=8, mbstd_group_size=2)
    assert D.uses_batch_statistics and D.last.mbstd.group_size == 2
    _, y, x = inputs(n=4, res=8)
    with torch.no_grad():
        base = D(x, y)
        x2 = x.clone()
        x2[2] += 0.5  # groups are {0, 2} and {1, 3}
        out = D(x2, y)
    assert out[0] != base[0] and out[2] != base[2]
    torch.testing.assert_close(out[[1, 3]], base[[1, 3]], rtol=0, atol=0)
    _, D1 = build(resolution=8, mbstd_group_size=1)
    assert D1.last.mbstd is None and not D1.uses_batch_statistics


def test_class_grouped_stddev_ties_each_logit_to_its_own_class_only():
    _, D = build(resolution=8, mbstd_groups="class")
    assert D.uses_batch_statistics and isinstance(D.last.mbstd, progan.ClassStdDev)
    _, _, x = inputs(n=4, res=8)
    y = torch.tensor([0, 1, 0, 2])
    with torch.no_grad():
        base = D(x, y)
        x2 = x.clone()
        x2[2] += 0.5  # shares its class with sample 0 only
        out = D(x2, y)
    assert out[0] != base[0] and out[2] != base[2]
    torch.testing.assert_close(out[[1, 3]], base[[1, 3]], rtol=0, atol=0)


@pytest.mark.parametrize("changes, says", [
    (dict(mbstd_groups="classes"), "one of"),
    (dict(mbstd_groups="class", num_classes=1), "num_classes > 1"),
    (dict(mbstd_groups="class", mbstd_group_size=1), "mbstd_group_size > 1"),
    (dict(mbstd_groups="class", arch="biggan", resolution=32), "arch=progan"),
])
def test_class_grouped_stddev_is_refused_where_it_cannot_apply(changes, says):
    with pytest.raises(ConfigError, match=f"model.mbstd_groups.*{says}"):
        ModelConfig(**{**TINY, "resolution": 16, **changes}).validate()


def test_paper_parameter_counts_at_1024():
    """Karras et al. 2018, Table 2: 23.1M parameters in G and in D. The official networks.py
    (G_paper/D_paper, label_size 0, every toRGB/fromRGB) counts 23,079,115 and 23,087,249."""
    cfg = ModelConfig(arch="progan", resolution=1024, num_classes=1, dim_z=512,
                      spectral_norm=False)
    with torch.device("meta"):
        G, D = models.build(cfg)
    n_g = sum(p.numel() for p in G.parameters())
    n_d = sum(p.numel() for p in D.parameters())
    assert (n_g, n_d) == (23_079_115, 23_087_249)
    assert abs(n_g / 23.1e6 - 1) < 0.01 and abs(n_d / 23.1e6 - 1) < 0.01


@pytest.mark.parametrize("penalty", ["wgan-gp", "r1", "r2", "dragan"])
@pytest.mark.parametrize("sn", [False, True])
def test_gradient_penalties_through_d_at_a_fade_in(penalty, sn):
    G, D = build(resolution=16, spectral_norm=sn)
    G.set_phase(16, 0.4), D.set_phase(16, 0.4)
    z, y, real = inputs()
    with torch.no_grad():
        fake = G(z, y)
    gen = torch.Generator().manual_seed(0)
    pen = regularizers.penalty(penalty, D, real, fake, y, fake_y=y, generator=gen)
    assert pen.ndim == 0 and torch.isfinite(pen) and pen > 0
    pen.backward()  # the double backward reaches D's weights
    inactive = D.inactive_parameter_names()
    for name, p in D.named_parameters():
        if name in inactive or name == "last.dense1.bias":  # the output bias has no grad_x term
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    old_path = [p for n, p in D.named_parameters() if n.startswith("from_rgb.8")]
    assert old_path and all(p.grad.abs().sum() > 0 for p in old_path)  # the faded-out branch


def test_adam_over_all_parameters_leaves_unused_blocks_untouched():
    from bigan.config import LossConfig, OptimConfig
    from bigan.train.optimizers import build_optimizers
    from bigan.train.step import Batch, StepState, gan_iteration

    G, D = build(resolution=16)
    G.set_phase(8, 0.5), D.set_phase(8, 0.5)
    opt_G, opt_D = build_optimizers(G, D, OptimConfig(g_lr=1e-2, d_lr=1e-2, betas=[0.0, 0.99], eps=1e-8))
    before = {id(m): copy.deepcopy(m.state_dict()) for m in (G, D)}
    z, y, x = inputs(res=8)
    gen = torch.Generator().manual_seed(0)
    cfg = LossConfig(kind="wasserstein", penalty="wgan-gp", drift_weight=1e-3)
    for _ in range(2):
        gan_iteration(G, D, opt_G, opt_D, [Batch(z, y, gen, real=x, real_y=y)], Batch(z, y, gen),
                      cfg, StepState())
    for model, opt in ((G, opt_G), (D, opt_D)):
        inactive = model.inactive_parameter_names()
        assert any(n.startswith("blocks.16") for n in inactive)
        params = dict(model.named_parameters())
        for name, p in params.items():
            moved = not torch.equal(p.detach(), before[id(model)][name])
            assert moved == (name not in inactive), name
            assert (p in opt.state) == (name not in inactive), name


def test_class_conditioning_depends_on_y():
    z, _, x = inputs(n=3, res=8)
    y_a, y_b = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    for shared_dim in (4, 0):  # learned embedding, one-hot
        G, D = build(resolution=8, shared_dim=shared_dim)
        G.eval()
        with torch.no_grad():
            assert (G(z, y_a) - G(z, y_b)).abs().amax(dim=(1, 2, 3)).min() > 1e-4
            assert (D(x, y_a) - D(x, y_b)).abs().min() > 1e-6
        assert hasattr(G, "embed") == (shared_dim > 0)
    G, D = build(resolution=8, num_classes=1)
    with torch.no_grad():
        torch.testing.assert_close(G(z, y_a), G(z, y_b), rtol=0, atol=0)
        torch.testing.assert_close(D(x, y_a * 0), D(x, y_b * 0), rtol=0, atol=0)
    assert D.last.project is None and not hasattr(G, "embed")


def test_phase_travels_in_the_state_dict():
    import safetensors.torch

    G, D = build(resolution=16)
    G.set_phase(16, 0.375), D.set_phase(8, 1.0)
    G2, D2 = build(seed=1)
    state = safetensors.torch.load(safetensors.torch.save(G.state_dict()))  # checkpoint format
    G2.load_state_dict(state)
    D2.load_state_dict(D.state_dict())
    assert (G2.current_resolution, G2.alpha) == (16, 0.375)
    assert (D2.current_resolution, D2.alpha) == (8, 1.0)
    z, y, _ = inputs()
    torch.testing.assert_close(G2(z, y), G(z, y), rtol=0, atol=0)
    ema = copy.deepcopy(G)
    assert (ema.current_resolution, ema.alpha) == (16, 0.375)


def test_spectral_norm_covers_d_only():
    from torch.nn.utils import parametrize

    G, D = build(resolution=8, spectral_norm=True)
    names = [n for n, _ in D.named_parameters()]
    assert all(n.endswith((".parametrizations.weight.original", ".bias")) for n in names), names
    assert "last.project.parametrizations.weight.original" in names
    assert not any(parametrize.is_parametrized(m) for m in G.modules())


def test_block_class_conditioning_starts_class_free_then_modulates_each_block():
    G, _ = build(resolution=16, class_cond="blocks")
    G.eval()
    params = dict(G.named_parameters())
    cond = sorted(n for n in params if ".cond" in n)
    assert cond == [f"{b}.cond{i}.linear.weight" for b in ("blocks.16", "blocks.8", "first")
                    for i in (0, 1)]
    assert all(not params[n].any() for n in cond)  # zero at init
    assert G.first.dense.weight.shape[1] == 8  # z alone in the latent: no class beside it
    z, _, _ = inputs(n=3)
    y_a, y_b = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    # At init G is the unconditional ProGAN with the same weights (which has no class anywhere).
    free, _ = build(resolution=16, num_classes=1)
    missing, unexpected = free.load_state_dict(G.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == sorted(["embed.weight", *cond])
    free.eval()
    with torch.no_grad():
        class_free = free(z, y_a)
        torch.testing.assert_close(G(z, y_a), class_free, rtol=0, atol=0)
        torch.testing.assert_close(G(z, y_b), class_free, rtol=0, atol=0)
        # Trained (here: random) maps give each class its own gain and bias per channel.
        gen = torch.Generator().manual_seed(3)
        for n in cond:
            params[n].copy_(torch.randn(params[n].shape, generator=gen) * 0.3)
        assert (G(z, y_a) - G(z, y_b)).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        affine, c = G.blocks["8"].cond1, G.class_vector(y_a, z.dtype)
        x = torch.randn(3, 8, 4, 4, generator=gen)
        gain_bias = c @ affine.linear.weight.T * math.sqrt(2 / 4)  # equalized lr, class_dim 4
        gain, bias = gain_bias[:, :8, None, None], gain_bias[:, 8:, None, None]
        torch.testing.assert_close(affine(x, c), x * (1 + gain) + bias)
    # The phase logic covers them: a block's maps wait with its block; first's are always in use.
    G.set_phase(8, 1.0)
    inactive = G.inactive_parameter_names()
    assert {"blocks.16.cond0.linear.weight", "blocks.16.cond1.linear.weight"} <= inactive
    assert not any(n.startswith(("first.cond", "blocks.8.cond")) for n in inactive)
    assert "embed.weight" not in inactive


def test_class_cond_is_checked_at_load_by_name():
    from bigan.config import ConfigError, load_config

    for bad, match in (({"class_cond": "block"}, "must be one of latent, blocks"),
                       ({"class_cond": "blocks", "num_classes": 1}, "model.num_classes > 1"),
                       ({"class_cond": "blocks", "arch": "biggan", "resolution": 32},
                        "only model.arch=progan")):
        with pytest.raises(ConfigError, match=rf"model\.class_cond=.*{match}"):
            ModelConfig(**{**TINY, "resolution": 16, **bad}).validate()
    with pytest.raises(ConfigError, match=r"model\.class_cond='film'"):
        load_config(None, ["model.arch=progan", "model.resolution=16", "model.class_cond=film"])
    assert ModelConfig().class_cond == "latent"  # the default builds what it built before
