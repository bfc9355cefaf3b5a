"""Penalties against closed forms: a linear D has ||grad D|| = ||w|| everywhere, a quadratic D
has grad D = x; orthogonal regularization against a hand-computed 2x2 case."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.testing import assert_close

from bigan import config, regularizers

pytestmark = pytest.mark.unit

SHAPE = (5, 2, 3, 3)  # N, C, H, W


class LinearD(nn.Module):
    """D(x, y) = <w, x.flatten()> + b: its input gradient is w for every x and y."""

    def __init__(self, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(dim, generator=g))
        self.b = nn.Parameter(torch.tensor(0.3))

    def forward(self, x, y):
        return x.flatten(1) @ self.w + self.b


class QuadraticD(nn.Module):
    """D(x, y) = a[y] / 2 * ||x||^2: its input gradient is a[y] * x."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.a = nn.Parameter(torch.arange(1.0, num_classes + 1.0))

    def forward(self, x, y):
        return 0.5 * self.a[y] * x.flatten(1).pow(2).sum(1)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g),
            torch.randint(0, 3, (SHAPE[0],), generator=g))


def _dim():
    return SHAPE[1] * SHAPE[2] * SHAPE[3]


def test_penalty_kinds_match_the_config_schema():
    assert regularizers.PENALTIES == config.PENALTIES


def test_gradient_norms_of_a_linear_d_equal_norm_w():
    D = LinearD(_dim())
    real, _, y = _batch()
    assert_close(regularizers.gradient_norms(D, real, y), D.w.norm().detach().expand(SHAPE[0]))


def test_gradient_norms_of_a_quadratic_d_are_per_sample():
    D = QuadraticD()
    real, _, y = _batch()
    expected = D.a[y].detach() * real.flatten(1).norm(dim=1)
    assert_close(regularizers.gradient_norms(D, real, y), expected)


@pytest.mark.parametrize("k", [1.0, 0.5, 0.0])
def test_linear_d_closed_forms_and_their_weight_gradients(k):
    D = LinearD(_dim())
    real, fake, y = _batch()
    w = D.w.detach()
    norm = w.norm()
    for name, pen in [
        ("wgan-gp", regularizers.wgan_gp_penalty(D, real, fake, y, target=k,
                                                 generator=torch.Generator().manual_seed(1))),
        ("dragan", regularizers.dragan_penalty(D, real, y, c=0.5, target=k,
                                               generator=torch.Generator().manual_seed(1))),
    ]:
        assert_close(pen, (norm - k) ** 2, msg=name)
        grad_w, grad_b = torch.autograd.grad(pen, [D.w, D.b], allow_unused=True)
        assert_close(grad_w, 2 * (norm - k) * w / norm, msg=name)
        assert grad_b is None  # the bias does not change the input gradient
    for pen in (regularizers.r1_penalty(D, real, y), regularizers.r2_penalty(D, fake, y)):
        assert_close(pen, norm ** 2)
        (grad_w,) = torch.autograd.grad(pen, D.w)
        assert_close(grad_w, 2 * w)


def test_r1_of_a_quadratic_d_is_the_mean_squared_norm_of_the_batch():
    D = QuadraticD()
    real, fake, y = _batch()
    a = D.a.detach()
    sq = real.flatten(1).pow(2).sum(1)
    assert_close(regularizers.r1_penalty(D, real, y), (a[y] ** 2 * sq).mean())
    # d/da_c E[a_y^2 ||x||^2] = (1/N) sum_{i: y_i = c} 2 a_c ||x_i||^2
    (grad_a,) = torch.autograd.grad(regularizers.r1_penalty(D, real, y), D.a)
    expected = torch.stack([(2 * a[c] * sq * (y == c)).sum() / len(y) for c in range(3)])
    assert_close(grad_a, expected)
    sq_fake = fake.flatten(1).pow(2).sum(1)
    y_fake = (y + 1) % 3
    assert_close(regularizers.r2_penalty(D, fake, y_fake), (a[y_fake] ** 2 * sq_fake).mean())


def test_wgan_gp_interpolates_with_one_uniform_eps_per_sample():
    """With grad D = x (a = 1), the penalty is E[(||eps real + (1 - eps) fake|| - k)^2], eps
    being torch.rand(N, generator) as documented."""
    D = QuadraticD(1)
    real, fake, _ = _batch()
    y = torch.zeros(SHAPE[0], dtype=torch.long)
    eps = torch.rand(SHAPE[0], generator=torch.Generator().manual_seed(7)).view(-1, 1, 1, 1)
    x_hat = eps * real + (1 - eps) * fake
    expected = (x_hat.flatten(1).norm(dim=1) - 0.7).pow(2).mean()
    got = regularizers.wgan_gp_penalty(D, real, fake, y, target=0.7,
                                       generator=torch.Generator().manual_seed(7))
    assert_close(got, expected)


def test_dragan_perturbs_with_gaussian_noise_of_std_c_times_batch_std():
    D = QuadraticD(1)
    real, _, _ = _batch()
    y = torch.zeros(SHAPE[0], dtype=torch.long)
    c = 0.3
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    x_pert = real + c * real.std(correction=0) * noise
    expected = (x_pert.flatten(1).norm(dim=1) - 1.0).pow(2).mean()
    got = regularizers.dragan_penalty(D, real, y, c=c, generator=torch.Generator().manual_seed(3))
    assert_close(got, expected)


def test_dragan_noise_scale_statistically():
    """E||x + delta||^2 = ||x||^2 + d (c sigma)^2 for delta ~ N(0, (c sigma)^2 I); k = 0 makes the
    penalty of D(x) = ||x||^2 / 2 exactly E||x + delta||^2. Large batch of one repeated x."""
    D = QuadraticD(1)
    x = torch.linspace(-2.0, 2.0, 8)
    real = x.repeat(20_000, 1)
    y = torch.zeros(len(real), dtype=torch.long)
    c, sigma = 0.5, x.std(correction=0)
    got = regularizers.dragan_penalty(D, real, y, c=c, target=0.0,
                                      generator=torch.Generator().manual_seed(0))
    expected = x.pow(2).sum() + 8 * (c * sigma) ** 2
    assert got.item() == pytest.approx(expected.item(), rel=0.01)


def test_penalties_send_no_gradient_to_the_generator():
    D = LinearD(_dim())
    q = nn.Parameter(torch.ones(()))
    real, fake, y = _batch()
    fake = fake * q  # as if produced by G
    for kind in ("wgan-gp", "r2"):
        pen = regularizers.penalty(kind, D, real, fake, y, generator=torch.Generator().manual_seed(0))
        (grad_q,) = torch.autograd.grad(pen, q, allow_unused=True)
        assert grad_q is None, kind


def test_penalty_backward_reaches_d_weights():
    D = LinearD(_dim())
    real, fake, y = _batch()
    regularizers.penalty("r1", D, real, fake, y).backward()
    assert_close(D.w.grad, 2 * D.w.detach())


def test_drift_penalty_is_the_mean_square_of_real_logits():
    assert_close(regularizers.drift_penalty(torch.tensor([1.0, -2.0, 3.0])),
                 torch.tensor((1 + 4 + 9) / 3))


@pytest.mark.parametrize("kind", ["wgan-gp", "r1", "r2", "dragan"])
def test_dispatch_matches_the_pure_functions(kind):
    D = QuadraticD()
    real, fake, y = _batch()
    fake_y = (y + 1) % 3

    def gen():
        return torch.Generator().manual_seed(11)

    direct = {
        "wgan-gp": lambda: regularizers.wgan_gp_penalty(D, real, fake, y, target=0.8, generator=gen()),
        "r1": lambda: regularizers.r1_penalty(D, real, y),
        "r2": lambda: regularizers.r2_penalty(D, fake, fake_y),
        "dragan": lambda: regularizers.dragan_penalty(D, real, y, c=0.2, target=0.8, generator=gen()),
    }[kind]()
    got = regularizers.penalty(kind, D, real, fake, y, fake_y=fake_y, target=0.8, dragan_c=0.2,
                               generator=gen())
    assert_close(got, direct)


def test_none_penalty_is_zero_without_calling_d():
    def D(x, y):
        raise AssertionError("D must not be called")

    real, fake, y = _batch()
    assert_close(regularizers.penalty("none", D, real, fake, y), torch.tensor(0.0))
    with pytest.raises(ValueError, match="unknown penalty 'r3'"):
        regularizers.penalty("r3", D, real, fake, y)


# --- orthogonal regularization ------------------------------------------------------------------

W22 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
# W W^T = [[5, 11], [11, 25]]: off-diagonal 11 twice -> 2 * 121 = 242.
ORTHO_W22 = 242.0


def _linear(weight: torch.Tensor, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_orthogonal_rows_cost_nothing():
    q, _ = torch.linalg.qr(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))
    layer = _linear(3.0 * q.T)  # rows orthogonal (norm 3: only off-diagonals count)
    assert_close(regularizers.orthogonal_regularization(layer), torch.tensor(0.0), atol=1e-5, rtol=0)


def test_hand_computed_2x2_and_its_gradient():
    layer = _linear(W22)
    value = regularizers.orthogonal_regularization(layer)
    assert_close(value, torch.tensor(ORTHO_W22))
    (grad,) = torch.autograd.grad(value, layer.weight)
    # d/dW ||A||_F^2 with A = W W^T * (1 - I) is 4 A W = 4 [[0, 11], [11, 0]] W.
    assert_close(grad, 4 * torch.tensor([[0.0, 11.0], [11.0, 0.0]]) @ W22)


@pytest.mark.parametrize("shape", [(40, 5), (10, 5), (9, 5), (5, 40), (6, 6)])
def test_closed_form_equals_autograd_of_the_masked_formula(shape):
    """Both forms (the [in, in] Gram matrix for rows >= 2 x columns, [out, out] otherwise) against
    autograd of ||W W^T * (1 - I)||_F^2 in float64, value and gradient; gradcheck on top."""
    w = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer = nn.Linear(shape[1], shape[0], bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(w)
    value = regularizers.orthogonal_regularization(layer)
    (grad,) = torch.autograd.grad(value, layer.weight)
    ref_w = w.clone().requires_grad_(True)
    ref = ((ref_w @ ref_w.T) * (1 - torch.eye(shape[0], dtype=torch.float64))).pow(2).sum()
    (ref_grad,) = torch.autograd.grad(ref, ref_w)
    assert_close(value, ref.detach(), rtol=1e-12, atol=1e-12)
    assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(regularizers._OffDiagonalGram.apply, (ref_w,))


def test_conv_weights_are_viewed_as_out_by_in_k_k():
    conv = nn.Conv2d(1, 2, kernel_size=(1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(W22.view(2, 1, 1, 2))
    assert_close(regularizers.orthogonal_regularization(conv), torch.tensor(ORTHO_W22))


def test_embeddings_biases_and_gains_are_skipped_and_layers_summed():
    model = nn.Sequential(nn.Embedding(4, 2), _linear(W22), nn.BatchNorm1d(2), _linear(2 * W22),
                          nn.LayerNorm(2))
    # 2 W: the Gram matrix scales by 4, its square by 16.
    assert_close(regularizers.orthogonal_regularization(model), torch.tensor(17 * ORTHO_W22))


def test_shared_layer_counts_once():
    layer = _linear(W22)
    assert_close(regularizers.orthogonal_regularization(nn.Sequential(layer, layer)),
                 torch.tensor(ORTHO_W22))


def test_spectral_norm_uses_the_unnormalized_weight_and_runs_no_power_iteration():
    layer = spectral_norm(_linear(W22))
    layer.train()
    u_before = layer.parametrizations.weight[0]._u.clone()
    value = regularizers.orthogonal_regularization(layer)
    assert_close(value, torch.tensor(ORTHO_W22))
    assert torch.equal(layer.parametrizations.weight[0]._u, u_before)
    (grad,) = torch.autograd.grad(value, layer.parametrizations.weight.original)
    assert_close(grad, 4 * torch.tensor([[0.0, 11.0], [11.0, 0.0]]) @ W22)


def test_module_without_weights_gives_zero():
    assert_close(regularizers.orthogonal_regularization(nn.ReLU()), torch.tensor(0.0))


def test_r1_plus_r2_is_the_sum_of_both_on_their_own_labels():
    """R3GAN's R1 + R2 with a quadratic D: E[a_y^2 ||x||^2] + E[a_y'^2 ||G(z)||^2]."""
    D = QuadraticD()
    real, fake, y = _batch()
    y_fake = (y + 2) % 3
    a = D.a.detach()
    want = (a[y] ** 2 * real.flatten(1).pow(2).sum(1)).mean() \
        + (a[y_fake] ** 2 * fake.flatten(1).pow(2).sum(1)).mean()
    assert_close(regularizers.penalty("r1+r2", D, real, fake, y, fake_y=y_fake), want)


def test_lecam_penalty_equals_its_formula():
    """R_LC = E[relu(D(x) - alpha_F)^2] + E[relu(alpha_R - D(G(z)))^2] (Tseng et al. 2021)."""
    real = torch.tensor([0.5, 2.0, -1.0, 3.0])
    fake = torch.tensor([-2.0, 0.4, 1.5, -0.5])
    alpha_r, alpha_f = 1.0, 0.0
    want = ((0.5 ** 2 + 2.0 ** 2 + 0 + 3.0 ** 2) / 4) + ((3.0 ** 2 + 0.6 ** 2 + 0 + 1.5 ** 2) / 4)
    assert_close(regularizers.lecam_penalty(real, fake, alpha_r, alpha_f), torch.tensor(want))
    # gradient reaches D's outputs only where the hinge is active
    real = real.clone().requires_grad_(True)
    regularizers.lecam_penalty(real, fake, alpha_r, alpha_f).backward()
    assert_close(real.grad, torch.tensor([2 * 0.5, 2 * 2.0, 0.0, 2 * 3.0]) / 4)


def test_ema_of_mean_follows_the_value_before_its_start():
    assert_close(regularizers.ema_of_mean(torch.tensor(10.0), torch.tensor(2.0), 0.9, False),
                 torch.tensor(2.0))
    assert_close(regularizers.ema_of_mean(torch.tensor(10.0), torch.tensor(2.0), 0.9, True),
                 torch.tensor(10.0 * 0.9 + 2.0 * 0.1))
