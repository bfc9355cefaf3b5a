"""The model contract, checked for every builder in `bigan.models.MODELS`, plus BigGAN's paper
parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils import parametrizations, parametrize

from bigan import models
from bigan.config import ModelConfig
from bigan.models import biggan

pytestmark = pytest.mark.unit

TINY = dict(num_classes=4, ch=8, d_ch=8, dim_z=16, shared_dim=8, attention=[16])
CASES = {
    "biggan-32": ModelConfig(arch="biggan", resolution=32, **TINY),
    "biggan-64": ModelConfig(arch="biggan", resolution=64, **TINY),
    "biggan-128": ModelConfig(arch="biggan", resolution=128, **{**TINY, "ch": 4, "d_ch": 4}),
    "biggan-32-flat-z-per-block-embed": ModelConfig(
        arch="biggan", resolution=32, **{**TINY, "hier": False, "shared_dim": 0}),
    "biggan-32-no-sn-1-class-gray": ModelConfig(
        arch="biggan", resolution=32, spectral_norm=False, img_channels=1,
        **{**TINY, "num_classes": 1}),
    "biggan-deep-32": ModelConfig(arch="biggan-deep", resolution=32, **TINY),
    "biggan-deep-64-psi-stats-wide-out-conv-one-hot": ModelConfig(
        arch="biggan-deep", resolution=64, psi_stats=5, out_conv_channels=8,
        **{**TINY, "shared_dim": 0}),
    "dcgan-32": ModelConfig(arch="dcgan", resolution=32, **TINY),
    "dcgan-64-no-sn": ModelConfig(arch="dcgan", resolution=64, spectral_norm=False, **TINY),
    # The projected D (frozen EfficientNet-Lite0) against two of the generators it serves.
    "biggan-32-projected-d": ModelConfig(arch="biggan", resolution=32, d_arch="projected",
                                         projected_res=64, **TINY),
    "dcgan-64-projected-d-gray": ModelConfig(arch="dcgan", resolution=64, d_arch="projected",
                                             projected_res=64, img_channels=1, **TINY),
    # Both side by side (bigan/models/ensemble.py): a logit per member, [N, 2].
    "biggan-32-native-and-projected-d": ModelConfig(arch="biggan", resolution=32,
                                                    d_arch="native+projected", projected_res=64,
                                                    projected_batch_norm=True, **TINY),
    "mlp": ModelConfig(arch="mlp", num_classes=4, dim_z=8, mlp_hidden=16, mlp_layers=2),
    "mlp-1-class-3d": ModelConfig(arch="mlp", num_classes=1, dim_z=8, data_dim=3,
                                  mlp_hidden=16, mlp_layers=2, spectral_norm=False),
    "progan-16": ModelConfig(arch="progan", resolution=16, num_classes=4, dim_z=16, shared_dim=8,
                             fmap_base=64, fmap_max=8, spectral_norm=False),
    "progan-8-sn-one-hot-gray": ModelConfig(arch="progan", resolution=8, num_classes=4, dim_z=16,
                                            shared_dim=0, fmap_base=64, fmap_max=8,
                                            img_channels=1, start_resolution=8),
}


def test_every_builder_is_covered():
    assert {c.arch for c in CASES.values()} == set(models.MODELS)


@pytest.fixture(params=list(CASES), ids=list(CASES))
def cfg(request) -> ModelConfig:
    c = CASES[request.param]
    c.validate()
    return c


def build(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return models.build(cfg)


def test_build_generator_builds_the_same_G_without_D(cfg):
    G, _ = build(cfg)
    torch.manual_seed(0)
    alone = models.build_generator(cfg)
    assert type(alone) is type(G)
    for (name, a), (_, b) in zip(G.state_dict().items(), alone.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def inputs(cfg: ModelConfig, n: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, cfg.dim_z, generator=gen)
    y = torch.randint(0, cfg.num_classes, (n,), generator=gen)
    shape = (cfg.data_dim,) if cfg.arch == "mlp" else (cfg.img_channels, cfg.resolution,
                                                       cfg.resolution)
    x = torch.rand(n, *shape, generator=gen) * 2 - 1
    return z, y, x


def open_attention(model: torch.nn.Module) -> None:
    """Give every self-attention a nonzero gamma, so gradients also reach its convs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)


def test_shapes_and_attributes(cfg):
    G, D = build(cfg)
    z, y, x = inputs(cfg)
    for mode in (True, False):
        G.train(mode), D.train(mode)
        out = G(z, y)
        assert out.shape == x.shape
        logits = (4,) if cfg.d_arch != "native+projected" else (4, 2)
        assert D(out, y).shape == logits and D(x, y).shape == logits
    assert G.dim_z == cfg.dim_z and G.num_classes == cfg.num_classes
    if cfg.arch == "mlp":
        assert G.data_dim == cfg.data_dim
    else:
        assert G.resolution == cfg.resolution and G.img_channels == cfg.img_channels
        assert out.abs().max() <= 1.0


def test_seeded_construction_is_deterministic(cfg):
    a, b = build(cfg, seed=3), build(cfg, seed=3)
    for m1, m2 in zip(a, b):
        s1, s2 = m1.state_dict(), m2.state_dict()
        assert list(s1) == list(s2)
        for k in s1:
            torch.testing.assert_close(s1[k], s2[k], rtol=0, atol=0, msg=k)
    other = build(cfg, seed=4)[0].state_dict()
    assert any(not torch.equal(v, other[k]) for k, v in a[0].state_dict().items())


@pytest.mark.parametrize("training", [False, True])
def test_state_dict_round_trip(cfg, training):
    (G, D), (G2, D2) = build(cfg, seed=0), build(cfg, seed=1)
    open_attention(G), open_attention(D)
    G2.load_state_dict(G.state_dict())
    D2.load_state_dict(D.state_dict())
    z, y, x = inputs(cfg)
    for m in (G, D, G2, D2):
        m.train(training)
    torch.testing.assert_close(G2(z, y), G(z, y))
    torch.testing.assert_close(D2(x, y), D(x, y))


@pytest.mark.parametrize("training", [True, False])
def test_gradients_reach_every_parameter(cfg, training):
    G, D = build(cfg)
    open_attention(G), open_attention(D)
    G.train(training), D.train(training)
    z, y, x = inputs(cfg)
    (D(G(z, y), y).sum() + D(x, y).sum()).backward()
    for model in (G, D):
        # ProGAN holds the layers of every phase; those of other phases get no gradient.
        unused = model.inactive_parameter_names() if cfg.arch == "progan" else set()
        for name, p in model.named_parameters():
            if name in unused:
                assert p.grad is None, name
                continue
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            if not training:
                # In train mode a conv bias right before batch norm has an (exactly) cancelled
                # gradient; in eval mode every parameter must actually move the output.
                assert p.grad.abs().sum() > 0, name


def test_eval_outputs_are_per_sample(cfg):
    G, D = build(cfg)
    open_attention(G), open_attention(D)
    G.eval(), D.eval()
    z, y, x = inputs(cfg)
    with torch.no_grad():
        images, logits = G(z, y), D(x, y)
        for i in range(len(z)):
            one = slice(i, i + 1)
            torch.testing.assert_close(G(z[one], y[one]), images[one])
            if not getattr(D, "uses_batch_statistics", False):  # ProGAN: minibatch std-dev
                torch.testing.assert_close(D(x[one], y[one]), logits[one])


def test_deepcopy_is_independent(cfg):
    G, D = build(cfg)
    G.eval()
    z, y, _ = inputs(cfg)
    with torch.no_grad():
        before = G(z, y)
    G2 = copy.deepcopy(G)
    with torch.no_grad():
        torch.testing.assert_close(G2(z, y), before, rtol=0, atol=0)
    ptrs = {t.data_ptr() for t in [*G.parameters(), *G.buffers()]}
    assert not ptrs & {t.data_ptr() for t in [*G2.parameters(), *G2.buffers()]}
    # Training the copy (weights, BN running stats, spectral-norm u/v) leaves G untouched.
    G2.train()
    with torch.no_grad():
        for p in G2.parameters():
            p.add_(0.1)
        G2(z, y)
        G2.eval()
        assert not torch.equal(G2(z, y), before)
        torch.testing.assert_close(G(z, y), before, rtol=0, atol=0)
    copy.deepcopy(D)


@pytest.mark.parametrize("resolution", [256, 512])
def test_biggan_large_resolutions_build_and_run(resolution):
    cfg = ModelConfig(arch="biggan", resolution=resolution, num_classes=3, ch=4, d_ch=4,
                      dim_z=16, shared_dim=4, attention=[64])
    G, D = build(cfg)
    G.eval(), D.eval()
    z, y, _ = inputs(cfg, n=1)
    with torch.no_grad():
        img = G(z, y)
        assert img.shape == (1, 3, resolution, resolution)
        assert D(img, y).shape == (1,)
    assert list(G.attention) == ["64"] and list(D.attention) == ["64"]


def test_attention_only_where_the_model_passes():
    cfg = ModelConfig(arch="biggan", resolution=32, ch=8, d_ch=8, dim_z=16,
                      attention=[8, 64, 128])
    G, D = build(cfg)
    assert list(G.attention) == ["8"]  # G blocks output 8, 16, 32
    assert list(D.attention) == ["8"]  # D blocks output 16, 8, 8, 8: attention once


def test_hierarchical_z_chunks():
    assert biggan.z_chunks(120, 5, hier=True) == [20] * 6  # the paper's 128 px split
    assert biggan.z_chunks(120, 6, hier=True) == [18] + [17] * 6  # the rest goes to the linear
    assert biggan.z_chunks(120, 6, hier=False) == [120]


def test_build_rejects_unknown_arch():
    with pytest.raises(ValueError, match="'stylegan'"):
        models.build(ModelConfig(arch="stylegan"))


def test_spectral_norm_flag_covers_every_weight_layer():
    G, D = build(CASES["biggan-32"])
    weighted = [m for m in [*G.modules(), *D.modules()]
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding))]
    plain = [m for m in weighted if not parametrize.is_parametrized(m, "weight")]
    assert plain == [G.shared]  # BigGAN-PyTorch keeps G's shared embedding unnormalised


def test_biggan_paper_parameter_counts(monkeypatch):
    """The BigGAN paper's model (Brock et al. 2019) at 128 px, ch=96: G 70.4M, D 88.0M."""
    cfg = ModelConfig(arch="biggan", resolution=128, ch=96, d_ch=96, num_classes=1000, dim_z=120,
                      shared_dim=128, attention=[64], hier=True)
    # Shapes only: on the meta device nothing is allocated or initialised (a real build took ~2
    # minutes of CI), and spectral norm's start-up power iterations, which change no shape,
    # would run through torch's slow meta decompositions.
    monkeypatch.setattr(parametrizations._SpectralNorm, "_power_method", lambda self, w, n: None)
    with torch.device("meta"):
        G, D = build(cfg)
    n_g = sum(p.numel() for p in G.parameters())
    n_d = sum(p.numel() for p in D.parameters())
    assert abs(n_g / 70.4e6 - 1) < 0.005, n_g
    assert abs(n_d / 88.0e6 - 1) < 0.005, n_d
