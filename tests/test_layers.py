"""bigan.layers: each block against its formula (BigGAN-PyTorch ccbn/Attention, ProGAN Sec. 3-4.2,
spectral norm against torch.linalg)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from bigan.layers import (ConditionalBatchNorm2d, EqualizedConv2d, EqualizedLinear,
                          ClassStdDev, MinibatchStdDev, PixelNorm, SelfAttention, add_upsampled, attend,
                          conv3x3_avgpool, sn_embedding, snconv2d, snlinear, upsample_conv3x3)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("training", [True, False])
def test_conditional_bn_with_zero_projections_is_plain_bn(training):
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(6, cond_dim=5, eps=1e-5, use_sn=False)
    bn = nn.BatchNorm2d(6, eps=1e-5, affine=False)
    with torch.no_grad():
        cbn.gain.weight.zero_()
        cbn.bias.weight.zero_()
        cbn.bn.running_mean.uniform_(-1, 1)  # eval mode then uses these, not batch statistics
        cbn.bn.running_var.uniform_(0.5, 2)
    bn.load_state_dict(cbn.bn.state_dict())
    cbn.train(training), bn.train(training)
    x, c = torch.randn(4, 6, 3, 3), torch.randn(4, 5)
    torch.testing.assert_close(cbn(x, c), bn(x))


def test_conditional_bn_gain_and_bias_follow_the_condition():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(3, cond_dim=2, use_sn=False).eval()
    x, c = torch.randn(2, 3, 4, 4), torch.randn(2, 2)
    gain = 1 + c @ cbn.gain.weight.T
    bias = c @ cbn.bias.weight.T
    expected = cbn.bn(x) * gain[:, :, None, None] + bias[:, :, None, None]
    torch.testing.assert_close(cbn(x, c), expected)


def test_self_attention_with_zero_gamma_is_identity():
    torch.manual_seed(0)
    attn = SelfAttention(16)
    x = torch.randn(2, 16, 8, 8)
    assert attn.gamma.item() == 0.0
    torch.testing.assert_close(attn(x), x, rtol=0, atol=0)
    with torch.no_grad():
        attn.gamma.fill_(1.0)
    assert (attn(x) - x).abs().max() > 1e-3  # and gamma does switch the attention path on


def test_attend_over_query_tiles_equals_the_whole_softmax():
    torch.manual_seed(0)
    theta, phi, g = torch.randn(2, 3, 64), torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    whole = g @ torch.softmax(theta.transpose(1, 2) @ phi, dim=-1).transpose(1, 2)  # [2, 5, 64]
    for tile in (16 * 64, 16 * 7, 16, 1):  # one tile, 7 queries (uneven last tile), 1 query
        torch.testing.assert_close(attend(theta, phi, g, tile), whole, rtol=1e-5, atol=1e-6)


def test_self_attention_rejects_too_few_channels():
    with pytest.raises(ValueError, match="at least 8 channels"):
        SelfAttention(4)


def test_equalized_lr_scale_is_he_constant():
    conv = EqualizedConv2d(5, 7, 3)
    lin = EqualizedLinear(12, 4, gain=0.5)
    assert conv.scale == pytest.approx(math.sqrt(2 / (5 * 3 * 3)))
    assert lin.scale == pytest.approx(0.5 * math.sqrt(2 / 12))
    x = torch.randn(2, 5, 6, 6)
    torch.testing.assert_close(
        conv(x), nn.functional.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1))
    v = torch.randn(3, 12)
    torch.testing.assert_close(lin(v), v @ (lin.weight * lin.scale).T + lin.bias)


def test_equalized_weights_are_standard_normal():
    torch.manual_seed(0)
    w = EqualizedLinear(256, 256).weight.detach()
    assert abs(w.mean().item()) < 0.01 and abs(w.std().item() - 1) < 0.01


def test_pixel_norm_gives_unit_mean_square_per_pixel():
    x = torch.randn(3, 16, 5, 5) * 7
    ms = PixelNorm()(x).pow(2).mean(dim=1)
    torch.testing.assert_close(ms, torch.ones_like(ms))


def test_minibatch_stddev_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    out = MinibatchStdDev(group_size=2)(torch.from_numpy(x)).numpy()
    # Groups are {0, 2} and {1, 3}: sample i is in group i mod (N / G).
    expected = np.empty(4, np.float32)
    for members in ([0, 2], [1, 3]):
        std = np.sqrt(x[members].var(axis=0) + 1e-8)  # population variance over the group
        expected[members] = std.mean()
    np.testing.assert_allclose(out[:, :3], x)
    np.testing.assert_allclose(out[:, 3], np.broadcast_to(expected[:, None, None], (4, 2, 2)),
                               rtol=1e-6)


def test_class_stddev_pools_each_class_alone():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3, 2, 2)).astype(np.float32)
    y = np.array([2, 0, 2, 1, 0, 2])
    out = ClassStdDev(num_classes=4)(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    expected = np.empty(6, np.float32)
    for k in range(4):
        members = np.flatnonzero(y == k)
        if len(members):
            expected[members] = np.sqrt(x[members].var(axis=0) + 1e-8).mean()
    assert expected[3] == pytest.approx(1e-4)  # class 1 is seen once: no variety to show
    np.testing.assert_allclose(out[:, :3], x)
    np.testing.assert_allclose(out[:, 3], np.broadcast_to(expected[:, None, None], (6, 2, 2)),
                               rtol=1e-5)


def test_class_stddev_sees_one_image_per_class_where_mixed_groups_do_not():
    """The case it exists for: every class drawn as one image. Groups of mixed classes still show
    the variety between classes; grouping by class shows none."""
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    per_class = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    collapsed = per_class[y]
    mixed = MinibatchStdDev(group_size=4)(collapsed)[:, 3, 0, 0]
    by_class = ClassStdDev(num_classes=4)(collapsed, y)[:, 3, 0, 0]
    assert mixed.min() > 0.3  # two classes per group (i mod 2): half the gap between them
    assert by_class.max() < 1e-3


def test_minibatch_stddev_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="not divisible"):
        MinibatchStdDev(group_size=4)(torch.randn(6, 2, 2, 2))


@pytest.mark.parametrize("make", [lambda: snlinear(16, 8, init=None),
                                  lambda: snconv2d(4, 6, 3, init=None),
                                  lambda: sn_embedding(10, 5, init=None)])
def test_spectral_norm_converges_to_unit_largest_singular_value(make):
    torch.manual_seed(0)
    layer = make()
    assert parametrize.is_parametrized(layer, "weight")
    original = layer.parametrizations.weight.original
    mat = original.detach().flatten(1)
    # Give the weight a clear spectral gap (sigma_1 = 3 sigma_2), so a few power iterations
    # (one per training-mode access of `weight`) pin sigma_1 down.
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    s = torch.linspace(1.0, 0.1, len(s)) * 3.0
    s[1:] /= 3.0
    with torch.no_grad():
        original.copy_((u @ torch.diag(s) @ vh).view_as(original))
    layer.train()
    for _ in range(5):
        layer.weight
    layer.eval()
    sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
    torch.testing.assert_close(sigma, torch.tensor(1.0), rtol=1e-4, atol=1e-4)


def test_sn_factories_use_parametrizations_and_orthogonal_init():
    lin = snlinear(8, 8, use_sn=False)
    torch.testing.assert_close(lin.weight @ lin.weight.T, torch.eye(8))
    sn_lin = snlinear(8, 4, sn_eps=1e-3)
    assert "parametrizations.weight.original" in dict(sn_lin.named_parameters())
    assert {"parametrizations.weight.0._u", "parametrizations.weight.0._v"} <= set(
        dict(sn_lin.named_buffers()))
    assert sn_lin.parametrizations.weight[0].eps == 1e-3


# --- resampling folded into 3x3 convolutions ------------------------------------------------------

FOLD_CONVS = {
    "conv2d": lambda: nn.Conv2d(5, 6, 3, padding=1),
    "spectral-norm": lambda: snconv2d(5, 6, 3),
    "equalized": lambda: EqualizedConv2d(5, 6, 3),
}


def _unfolded(kind: str, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if kind == "up":
        return conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    return torch.nn.functional.avg_pool2d(conv(x), 2)


@pytest.mark.parametrize("make", list(FOLD_CONVS.values()), ids=list(FOLD_CONVS))
@pytest.mark.parametrize("kind", ["up", "pool"])
def test_folded_resampling_equals_resample_then_convolve_in_values_and_gradients(kind, make):
    torch.manual_seed(0)
    # float64, so that the comparison shows the maps are equal, not merely close in float32
    conv = make().double().eval()  # eval: a spectral-norm weight is the same on every read
    with torch.no_grad():
        conv.bias.normal_()  # a non-zero bias: it must be added once per output pixel
    x = torch.randn(3, 5, 6, 8, dtype=torch.float64, requires_grad=True)  # rows and columns differ
    folded = upsample_conv3x3 if kind == "up" else conv3x3_avgpool
    out, ref = folded(x, conv), _unfolded(kind, conv, x)
    assert out.shape == ref.shape == ((3, 6, 12, 16) if kind == "up" else (3, 6, 3, 4))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    weights = [p for p in conv.parameters() if p.dim() == 4]
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, *weights, conv.bias], g)
    want = torch.autograd.grad(ref, [x, *weights, conv.bias], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_folded_resampling_is_a_real_stride_2_layout_not_a_shifted_copy():
    # One non-zero 3x3 tap: upsample-then-convolve moves each input pixel to known output pixels.
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # output (i, j) reads upsampled (i-1, j-1)
    x = torch.arange(1.0, 5.0).view(1, 1, 2, 2)
    out = upsample_conv3x3(x, conv)[0, 0]
    expected = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 2], [0, 1, 1, 2], [0, 3, 3, 4.]])
    assert torch.equal(out, expected)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_add_upsampled_is_the_add_of_the_upsampled_tensor_bit_for_bit(layout):
    """The same float32 sums as h + F.interpolate(small): values and both gradients equal exactly
    (not merely close), also for channels_last and non-contiguous inputs, and it differentiates
    twice (a penalty's double backward through G would)."""
    torch.manual_seed(0)
    h = torch.randn(3, 4, 6, 10, requires_grad=True)  # rows and columns differ
    small = torch.randn(3, 4 if layout != "sliced" else 7, 3, 5, requires_grad=True)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    h_in, s_in = h.contiguous(memory_format=fmt), small.contiguous(memory_format=fmt)
    if layout == "sliced":
        s_in = s_in[:, 1:5]
    got = add_upsampled(h_in, s_in)
    want = h_in + torch.nn.functional.interpolate(s_in, scale_factor=2.0, mode="nearest")
    assert got.shape == want.shape and torch.equal(got, want)
    g = torch.randn_like(want).requires_grad_()  # a second derivative reaches g through backward
    for a, b in zip(torch.autograd.grad(got, [h, small], g, create_graph=True),
                    torch.autograd.grad(want, [h, small], g, create_graph=True)):
        assert torch.equal(a, b)
    second = torch.autograd.grad(
        torch.autograd.grad(add_upsampled(h_in, s_in), small, g, create_graph=True)[0].pow(2).sum(), g)
    assert torch.equal(second[0], torch.autograd.grad(
        torch.autograd.grad(want, small, g, create_graph=True)[0].pow(2).sum(), g)[0])


def test_folded_resampling_rejects_other_convolutions():
    with pytest.raises(ValueError, match="3x3 stride-1 'same' convolution"):
        upsample_conv3x3(torch.zeros(1, 2, 4, 4), nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="3x3 stride-1 'same' convolution"):
        conv3x3_avgpool(torch.zeros(1, 2, 4, 4), nn.Conv2d(2, 2, 3, stride=2, padding=1))
