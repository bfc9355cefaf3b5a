"""Discriminator penalties and BigGAN's orthogonal regularization, as pure functions.

The gradient penalties take the discriminator as a callable `D(x, y) -> logits [N]` (an
ensemble's [N, K]: the gradient of the sum over its members; [N, K, P] with P patches per
member: of the sum over the members of each one's mean over its patches) and return the unweighted scalar
penalty; the caller multiplies by its weight (lambda for WGAN-GP and DRAGAN, gamma / 2 for R1,
R2 and R1+R2) and by the lazy-regularization interval (`train/step.py`). Input
gradients are taken with `create_graph=True`, so backpropagating a penalty reaches D's weights
(a double backward). The per-sample gradient is read off the gradient of sum_i D(x_i), which
assumes D treats samples independently (no batch norm in D, as in BigGAN and ProGAN).
`orthogonal_regularization` is for G's weights; `penalty` dispatches on `LossConfig.penalty`.
The trainer computes every gradient penalty on the images BEFORE augmentation (`bigan/augment.py`),
as R3GAN does: the penalty constrains D's gradient on the data and on G's samples themselves.
`lecam_penalty` acts on D's outputs (on the augmented images D was trained on) instead.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from bigan.config import PENALTIES

Discriminator = Callable[[Tensor, Tensor], Tensor]



def logit_total(logits: Tensor) -> Tensor:
    """The sum of D's logits over images and members, each member's patches averaged: logits
    [N], [N, K] or [N, K, P] (P patches, `model.projected_per_patch`) -> a scalar. Averaging
    keeps a per-patch D's gradient at the scale of its one-logit form (the mean of the patches),
    the gradient G's loss follows."""
    return logits.mean(dim=2).sum() if logits.dim() == 3 else logits.sum()


def _input_gradients(D: Discriminator, x: Tensor, y: Tensor) -> Tensor:
    """grad_x logit_total(D(x, y)), shaped like x, differentiable w.r.t. D's weights.

    x is detached first: a penalty constrains D only and never sends gradient to G.
    """
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(logit_total(D(x, y)), x, create_graph=True)
    return grad


def _per_sample_shape(x: Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.dim() - 1)


def _random(kind: str, x: Tensor, shape: tuple[int, ...], generator: torch.Generator | None,
            rows: tuple[int, int] | None = None) -> Tensor:
    # Draw on the generator's device (the trainer's generators live on the CPU), then move. With
    # rows = (first, total) draw for the whole global batch and keep this worker's rows, so a
    # sample's noise does not depend on the number of workers.
    device = generator.device if generator is not None else x.device
    draw = torch.rand if kind == "uniform" else torch.randn
    if rows is None:
        return draw(shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    first, total = rows
    full = draw((total,) + tuple(shape[1:]), generator=generator, device=device, dtype=x.dtype)
    return full[first:first + shape[0]].to(x.device)


def gradient_norms(D: Discriminator, x: Tensor, y: Tensor) -> Tensor:
    """||grad_x D(x_i, y_i)||_2 per sample, shape [N] (the Euclidean norm over all of C, H, W)."""
    return _input_gradients(D, x, y).flatten(1).norm(dim=1)


def wgan_gp_penalty(D: Discriminator, real: Tensor, fake: Tensor, y: Tensor, target: float = 1.0,
                    generator: torch.Generator | None = None,
                    rows: tuple[int, int] | None = None) -> Tensor:
    """WGAN-GP, Gulrajani et al. 2017 ("Improved Training of Wasserstein GANs", Eq. 3):

        E[(||grad D(x_hat, y)|| - k)^2],  x_hat = eps * real + (1 - eps) * fake,

    one eps ~ U[0, 1) per sample (`torch.rand(N, generator=generator)`), k = `target`. `fake`
    is detached here. The interpolates are scored with the labels `y` (the trainer passes the
    real labels, as PyTorch-StudioGAN does). `rows` = (first, total): real/fake are rows
    first..first+N of a global batch of `total`; eps is drawn for all of it and sliced.
    """
    eps = _random("uniform", real, _per_sample_shape(real), generator, rows)
    x_hat = eps * real.detach() + (1 - eps) * fake.detach()
    return (gradient_norms(D, x_hat, y) - target).pow(2).mean()


def r1_penalty(D: Discriminator, real: Tensor, y: Tensor) -> Tensor:
    """R1, Mescheder et al. 2018 ("Which Training Methods for GANs do actually Converge?",
    Eq. 9): E_x[||grad_x D(x, y)||^2] on real data. The caller multiplies by gamma / 2."""
    return _input_gradients(D, real, y).flatten(1).pow(2).sum(dim=1).mean()


def r2_penalty(D: Discriminator, fake: Tensor, y: Tensor) -> Tensor:
    """R2, Mescheder et al. 2018 (Eq. 10): E_z[||grad_x D(G(z), y)||^2] on (detached) fakes.
    The caller multiplies by gamma / 2."""
    return _input_gradients(D, fake, y).flatten(1).pow(2).sum(dim=1).mean()


def r1_r2_penalty(D: Discriminator, real: Tensor, fake: Tensor, y: Tensor,
                  fake_y: Tensor) -> Tensor:
    """R1 + R2 (Huang et al. 2024, "The GAN is dead; long live the GAN!" (R3GAN), Sec. 3):
    E_x[||grad_x D(x, y)||^2] + E_z[||grad D(G(z), y')||^2], both zero-centred, on the images
    before any augmentation. The caller multiplies by gamma / 2."""
    return r1_penalty(D, real, y) + r2_penalty(D, fake, fake_y)


def lecam_penalty(real_logits: Tensor, fake_logits: Tensor, ema_real: Tensor | float,
                  ema_fake: Tensor | float) -> Tensor:
    """LeCam regularization, Tseng et al. 2021 ("Regularizing Generative Adversarial Networks
    under Limited Data", Eq. 3, as in their lecam-gan `lecam_reg`):

        R_LC = E_x[relu(D(x) - alpha_F)^2] + E_z[relu(alpha_R - D(G(z)))^2]

    alpha_R, alpha_F: exponential moving averages of D's mean output on real and on fake images
    (`ema_real`, `ema_fake`, kept by the caller). The caller multiplies by lambda (0.3 with hinge)."""
    return (torch.relu(real_logits - ema_fake).pow(2).mean()
            + torch.relu(ema_real - fake_logits).pow(2).mean())


def ema_of_mean(ema: Tensor, value: Tensor, decay: float, started: bool) -> Tensor:
    """ema * d + value * (1 - d), with d = `decay` once `started`, else 0 (the EMA follows the
    value), as lecam-gan's `ema_losses.update` does before its start iteration."""
    d = decay if started else 0.0
    return ema * d + value * (1 - d)


def dragan_penalty(D: Discriminator, real: Tensor, y: Tensor, c: float = 0.5, target: float = 1.0,
                   generator: torch.Generator | None = None,
                   rows: tuple[int, int] | None = None) -> Tensor:
    """DRAGAN, Kodali et al. 2017 ("On Convergence and Stability of GANs", Eq. 4):

        E[(||grad D(x + delta, y)|| - k)^2],  delta = c * sigma * n,  n ~ N(0, I) elementwise,

    where sigma is the standard deviation of all elements of the real batch (population std,
    correction 0, like NumPy's `X.std()` in the authors' code) and n is drawn with
    `torch.randn(real.shape, generator=generator)`; k = `target`. Unlike the authors' code,
    whose noise is U[0, 1) (`np.random.random`), the perturbation is the zero-mean Gaussian
    of the paper, with standard deviation c * sigma. `rows` = (first, total): n is drawn for a
    global batch of `total` and sliced; sigma is still this batch's own (per worker).
    """
    real = real.detach()
    sigma = real.std(correction=0)
    delta = c * sigma * _random("normal", real, tuple(real.shape), generator, rows)
    return (gradient_norms(D, real + delta, y) - target).pow(2).mean()


def drift_penalty(real_logits: Tensor) -> Tensor:
    """ProGAN's drift term, Karras et al. 2018 ("Progressive Growing of GANs", Sec. A.1):
    E_x[D(x)^2], which keeps the critic's output near zero; the caller multiplies by
    epsilon_drift (paper: 0.001)."""
    return real_logits.pow(2).mean()


def _orthogonal_weights(module: nn.Module) -> list[Tensor]:
    """The unnormalized weights of every linear and conv layer (with spectral norm: `original`)."""
    found: dict[int, Tensor] = {}
    for m in module.modules():
        if not isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        if torch.nn.utils.parametrize.is_parametrized(m, "weight"):
            # Never m.weight here: with spectral norm that would run a power iteration.
            w = getattr(m.parametrizations.weight, "original", None)
            if w is None:  # a parametrization with several originals (e.g. weight_norm)
                w = m.weight
        elif hasattr(m, "weight_orig"):  # the older hook-based torch.nn.utils.spectral_norm
            w = m.weight_orig
        else:
            w = m.weight
        if w is not None and w.dim() >= 2:
            found.setdefault(id(w), w)  # a layer shared by two blocks counts once
    return list(found.values())


def orthogonal_regularization(module: nn.Module) -> Tensor:
    """BigGAN's modified orthogonal regularization, Brock et al. 2019 ("Large Scale GAN
    Training", Eq. 3), summed over the weights of every linear and conv layer of `module`:

        R(W) = sum_W ||W W^T * (1 - I)||_F^2,   W reshaped to [out, in * kh * kw],

    i.e. only the off-diagonal inner products of the rows (filters) are pushed to zero; their
    norms are free. As in BigGAN-PyTorch (`utils.ortho`), the Gram matrix is W W^T of the
    [shape[0], -1] view, and layers with spectral norm use the unnormalized
    `parametrizations.weight.original`. Embeddings, biases and other 1-d parameters (gains)
    are skipped. The caller multiplies by beta. Note: BigGAN-PyTorch adds the hand-written
    gradient 2 (W W^T * (1 - I)) W, which is the gradient of R/2; its strength 1e-4 is
    beta = 5e-5 here.
    """
    weights = _orthogonal_weights(module)
    if not weights:
        param = next(module.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    total = None
    for weight in weights:
        term = _OffDiagonalGram.apply(weight.reshape(weight.shape[0], -1))
        total = term if total is None else total + term
    return total


class _OffDiagonalGram(torch.autograd.Function):
    """||W W^T * (1 - I)||_F^2 for W [out, in] with its closed-form gradient
    4 (W W^T * (1 - I)) W, the way BigGAN-PyTorch's `utils.ortho` writes it: 2 GEMMs per weight
    where autograd of the masked formula took 3 plus four passes over the [out, out] matrix.
    Where out >= 2 in (BigGAN-128's first linear layer is [24576, 20]: its 24576^2 Gram matrix
    is 2.4 GB) the same value and gradient come from the small [in, in] Gram matrix:
    ||W W^T||_F^2 = ||W^T W||_F^2, so R = ||W^T W||_F^2 - sum_i d_i^2 and dR/dW =
    4 (W (W^T W) - d * W) with d_i = ||w_i||^2. Rows outnumbering columns 2:1 cannot be near
    orthogonal, so the off-diagonal part is at least half of ||W^T W||_F^2 and the subtraction
    loses no more than a bit to rounding. With both forms, forward and backward of G's term at
    128 px paper width took 2.8 s of one core's CPU time where autograd took 19 s."""

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        if w.shape[0] >= 2 * w.shape[1]:
            small = w.T @ w
            d = w.pow(2).sum(dim=1, keepdim=True)
            ctx.save_for_backward(w, small, d)
            return small.pow(2).sum() - d.pow(2).sum()
        off = w @ w.T
        off.diagonal().zero_()
        ctx.save_for_backward(w, off, None)
        return torch.dot(off.flatten(), off.flatten())

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        w, gram, d = ctx.saved_tensors
        if d is not None:
            return (4 * grad) * torch.addmm(w * d, w, gram, alpha=1, beta=-1)
        return (4 * grad) * (gram @ w)


def penalty(kind: str, D: Discriminator, real: Tensor, fake: Tensor, y: Tensor, *,
            fake_y: Tensor | None = None, target: float = 1.0, dragan_c: float = 0.5,
            generator: torch.Generator | None = None,
            rows: tuple[int, int] | None = None) -> Tensor:
    """The unweighted penalty `kind` (one of PENALTIES) for one D update.

    `y` labels the real batch; `fake_y` labels the fakes (R2 uses it; defaults to `y`). `rows`:
    this batch's place in a global batch, for the per-sample draws (see `wgan_gp_penalty`).
    "none" returns a zero scalar without calling D.
    """
    if kind == "none":
        return torch.zeros((), device=real.device)
    if kind == "wgan-gp":
        return wgan_gp_penalty(D, real, fake, y, target=target, generator=generator, rows=rows)
    if kind == "r1":
        return r1_penalty(D, real, y)
    if kind == "r2":
        return r2_penalty(D, fake, y if fake_y is None else fake_y)
    if kind == "r1+r2":
        return r1_r2_penalty(D, real, fake, y, y if fake_y is None else fake_y)
    if kind == "dragan":
        return dragan_penalty(D, real, y, c=dragan_c, target=target, generator=generator,
                              rows=rows)
    raise ValueError(f"unknown penalty {kind!r}; choose one of {', '.join(PENALTIES)}")
