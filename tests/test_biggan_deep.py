"""BigGAN-deep (`bigan.models.biggan_deep`): BigGAN-PyTorch's parameter counts, the bottleneck
blocks and their shortcuts, truncation-dependent batch-norm statistics, and one GAN iteration
with every loss and every penalty. The model contract itself (shapes, determinism, state dicts,
gradients, per-sample outputs) is tests/test_models.py's, which covers biggan-deep too."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from bigan import models
from bigan.config import LOSSES, PENALTIES, ConfigError, LossConfig, ModelConfig, load_config
from bigan.models import biggan_deep
from bigan.train.step import Batch, StepState, gan_iteration

pytestmark = pytest.mark.unit

TINY = dict(arch="biggan-deep", resolution=32, num_classes=4, ch=8, d_ch=8, dim_z=16,
            shared_dim=8, attention=[16])


def _build(seed=0, **changes):
    torch.manual_seed(seed)
    return models.build(ModelConfig(**{**TINY, **changes}))


@pytest.mark.slow
def test_parameter_counts_are_biggan_pytorch_biggandeep():
    """BigGAN-PyTorch's BigGANdeep.py at 128 px, G_ch = D_ch = 128, dim_z = shared_dim = 128,
    1000 classes, attention at 64 (its launch_BigGAN_deep.sh) builds exactly these; the paper
    rounds them to 50.4M and 34.6M."""
    cfg = ModelConfig(arch="biggan-deep", resolution=128, ch=128, d_ch=128, dim_z=128,
                      shared_dim=128, num_classes=1000, attention=[64])
    G, D = models.build(cfg)
    assert sum(p.numel() for p in G.parameters()) == 50_244_484
    assert sum(p.numel() for p in D.parameters()) == 34_590_210


def test_two_bottleneck_blocks_per_resolution():
    G, D = _build(resolution=64)
    # G: 4 -> 8 -> 16 -> 32 -> 64, widths 16, 16, 8, 4, 2 (x ch); D: 64 -> 32 -> 16 -> 8 -> 4.
    assert [(b.conv1.in_channels, b.conv4.out_channels, b.upsample) for b in G.blocks] == [
        (128, 128, False), (128, 128, True), (128, 128, False), (128, 64, True),
        (64, 64, False), (64, 32, True), (32, 32, False), (32, 16, True)]
    assert [b.conv1.out_channels for b in G.blocks] == [32, 32, 32, 32, 16, 16, 8, 8]  # in / 4
    assert [(b.conv1.in_channels, b.conv4.out_channels, b.downsample) for b in D.blocks] == [
        (8, 16, True), (16, 16, False), (16, 32, True), (32, 32, False),
        (32, 64, True), (64, 64, False), (64, 128, True), (128, 128, False)]
    assert [b.conv1.out_channels for b in D.blocks] == [4, 4, 8, 8, 16, 16, 32, 32]  # out / 4
    assert G.attn_after == {3: "16"} and D.attn_after == {3: "16"}
    # G's shortcut has no conv at all; D's learns only the channels it adds.
    assert not any("sc" in name for name, _ in G.named_modules())
    assert [b.conv_sc.out_channels if b.conv_sc is not None else 0 for b in D.blocks] == [
        8, 0, 16, 0, 32, 0, 64, 0]


def test_g_shortcut_keeps_the_first_channels_and_d_shortcut_joins_new_ones():
    gblock = biggan_deep.GBlock(16, 8, cond_dim=4, upsample=True,
                                cfg=ModelConfig(**{**TINY, "spectral_norm": False}))
    dblock = biggan_deep.DBlock(8, 16, downsample=True,
                                cfg=ModelConfig(**{**TINY, "spectral_norm": False}))
    with torch.no_grad():
        for block in (gblock, dblock):  # silence the residual branch: only the shortcut is left
            block.conv4.weight.zero_(), block.conv4.bias.zero_()
        x = torch.randn(2, 16, 4, 4)
        out = gblock.eval()(x, torch.randn(2, 4), None)
        torch.testing.assert_close(out, F.interpolate(x[:, :8], scale_factor=2.0), rtol=0, atol=0)
        x = torch.randn(2, 8, 8, 8)
        pooled = F.avg_pool2d(x, 2)
        out = dblock(x)
        torch.testing.assert_close(out[:, :8], pooled, rtol=0, atol=0)
        torch.testing.assert_close(out[:, 8:], dblock.conv_sc(pooled))


def _package_stats(stats: torch.Tensor, truncation: float) -> torch.Tensor:
    """pytorch-pretrained-BigGAN's BigGANBatchNorm.forward lookup, written out for one psi."""
    coef, start = math.modf(truncation / (1.0 / (stats.shape[0] - 1)))
    start = int(start)
    if coef != 0.0:
        return stats[start] * coef + stats[start + 1] * (1 - coef)
    return stats[start]


def test_psi_statistics_follow_the_pretrained_biggan_lookup():
    stats = torch.randn(51, 6, dtype=torch.float64)
    psis = [0.0, 0.02, 0.137, 0.5, 0.731, 0.999, 1.0]
    got = biggan_deep.interpolate_psi_stats(stats, torch.tensor(psis, dtype=torch.float64))
    for row, psi in zip(got, psis):
        torch.testing.assert_close(row, _package_stats(stats, psi), rtol=0, atol=1e-12)
    # Outside [0, 1] the end sets are used.
    ends = biggan_deep.interpolate_psi_stats(stats, torch.tensor([-0.5, 3.0], dtype=torch.float64))
    torch.testing.assert_close(ends, stats[[0, 50]], rtol=0, atol=0)


# psi = k / 100 for k = 0..100: what a user types. The even k lie on the 51-set grid (TF-Hub's).
HUNDREDTHS = range(101)



def _randomise_psi_stats(G) -> None:
    """Distinct batch-norm statistics per psi set, so picking the wrong set shows."""
    with torch.no_grad():
        for name, buf in G.named_buffers():
            if name.endswith("running_means"):
                buf.normal_()
            elif name.endswith("running_vars"):
                buf.uniform_(0.5, 2.0)

def _exact_weights(sets: int) -> torch.Tensor:
    """psi_stat_weights [101, S] at psi = k / 100, from exact rational t = k (S - 1) / 100: a psi on
    the grid (c = 0) gets its own set alone. Not math.modf on floats: the package's own float64
    arithmetic lands off the grid at 0.14, 0.28, 0.56 (next set) and 0.58, 0.94 (previous set)."""
    rows = torch.zeros(len(HUNDREDTHS), sets, dtype=torch.float64)
    for k in HUNDREDTHS:
        t = Fraction(k * (sets - 1), 100)
        i, c = math.floor(t), t - math.floor(t)
        if c == 0:
            rows[k, i] = 1.0
        else:
            rows[k, i], rows[k, i + 1] = float(c), float(1 - c)
    return rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_two_decimal_psi_on_the_grid_picks_its_own_set(dtype):
    """In float32, 0.18, 0.3, 0.36, 0.54, 0.6, 0.66, 0.72, 0.98 land just above their grid point
    (so the next set was used); in float64 0.14, 0.28, 0.56, 0.58, 0.94 land beside it."""
    want = _exact_weights(51)
    psi = torch.tensor([k / 100 for k in HUNDREDTHS], dtype=dtype)
    got = biggan_deep.psi_stat_weights(psi, 51).double()
    on_grid = [k for k in HUNDREDTHS if k % 2 == 0]
    assert got[on_grid].argmax(1).tolist() == [k // 2 for k in on_grid]
    torch.testing.assert_close(got[on_grid], want[on_grid], rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # between grid points: c = 0.5


def test_two_decimal_psi_picks_the_grid_set_in_pytorch_and_the_onnx_graph(monkeypatch, tmp_path):
    """G and its exported graph (float32 psi input) against G with the exact weights of
    `_exact_weights` at every psi = k / 100. Before the grid tolerance both missed at the 8 float32
psi of the test above, by up to 1.9 in pixel value."""
    ort = pytest.importorskip("onnxruntime")
    from bigan.export.onnx import ServingGenerator, _to_onnx

    G, _ = _build(psi_stats=51, spectral_norm=False)
    _randomise_psi_stats(G)
    serving = ServingGenerator(G.eval())
    n = len(HUNDREDTHS)
    z = torch.randn(1, 16, generator=torch.Generator().manual_seed(1)).expand(n, 16).contiguous()
    y = torch.full((n,), 2)
    psi = torch.tensor([k / 100 for k in HUNDREDTHS], dtype=torch.float32)
    program = _to_onnx(serving, 16, None, psi_input=True)
    with torch.no_grad():
        got_torch = serving(z, y, psi)[1]
        with monkeypatch.context() as patch:
            patch.setattr(biggan_deep, "psi_stat_weights",
                          lambda _, sets: _exact_weights(sets).float())
            want = serving(z, y, psi)[1]
    program.save(str(tmp_path / "g.onnx"))
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    (got_onnx,) = session.run(["images_float"],
                              {"z": z.numpy(), "y": y.numpy(), "psi": psi.numpy()})
    torch.testing.assert_close(torch.from_numpy(got_onnx), want, rtol=0, atol=1e-4)
    torch.testing.assert_close(got_torch, want, rtol=0, atol=1e-5)


def test_psi_picks_each_samples_statistics_and_none_means_one():
    G, _ = _build(psi_stats=11)
    _randomise_psi_stats(G)
    G.eval()
    gen = torch.Generator().manual_seed(0)
    z, y = torch.randn(3, 16, generator=gen), torch.tensor([0, 1, 2])
    psi = torch.tensor([0.25, 0.66, 1.0])
    with torch.no_grad():
        together = G(z, y, psi)
        for i in range(3):
            torch.testing.assert_close(G(z[i:i + 1], y[i:i + 1], psi[i:i + 1]), together[i:i + 1])
        torch.testing.assert_close(G(z, y), G(z, y, torch.ones(3)), rtol=0, atol=0)
        assert not torch.allclose(G(z, y, torch.full((3,), 0.25)), together)


def test_training_with_psi_statistics_uses_batch_statistics():
    G, _ = _build(psi_stats=5)
    table = {k: v.clone() for k, v in G.named_buffers() if "running" in k}
    G.train()
    z, y = torch.randn(4, 16), torch.arange(4)
    G(z, y).sum().backward()
    assert all(torch.equal(v, dict(G.named_buffers())[k]) for k, v in table.items())


@pytest.mark.parametrize("field, value, why", [
    ("psi_stats", 1, "must be 0"), ("out_conv_channels", 2, "must be 0 or >= model.img_channels"),
    ("ch", 2, "ch >= 4"), ("resolution", 16, "must be one of")])
def test_config_rejects_what_biggan_deep_cannot_build(field, value, why):
    with pytest.raises(ConfigError, match=f"model.{field}.*{why}"):
        load_config(None, ["model.arch=biggan-deep", f"model.{field}={value}"])


def _batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return Batch(z=torch.randn(n, 16, generator=g), fake_y=torch.randint(0, 4, (n,), generator=g),
                 generator=g, real=torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,
                 real_y=torch.randint(0, 4, (n,), generator=g))


@pytest.mark.parametrize("loss, penalty", [(kind, "none") for kind in LOSSES]
                         + [("hinge", p) for p in PENALTIES if p != "none"])
def test_one_gan_iteration_with_every_loss_and_penalty(loss, penalty):
    G, D = _build()
    opt_G, opt_D = torch.optim.Adam(G.parameters(), 1e-4), torch.optim.Adam(D.parameters(), 4e-4)
    before = [p.detach().clone() for p in [*G.parameters(), *D.parameters()]]
    metrics = gan_iteration(G, D, opt_G, opt_D, [_batch(4, 0)], _batch(4, 1),
                            LossConfig(kind=loss, penalty=penalty, ortho_weight=1e-4), StepState())
    assert all(math.isfinite(float(v)) for v in metrics.values()), metrics
    if penalty != "none":
        assert "loss/penalty" in metrics
    after = [*G.parameters(), *D.parameters()]
    assert sum(not torch.equal(a, b) for a, b in zip(before, after)) > len(after) // 2
