"""GAN objectives as pure functions of the discriminator's logits.

Each pair `<kind>_d_loss(real_logits, fake_logits)` / `<kind>_g_loss(fake_logits)` (RpGAN: also `real_logits`) takes D's raw
outputs (shape [N], before any sigmoid) and returns the scalar mean loss that D or G minimises.
The probabilistic losses are written with `softplus`, using log(sigmoid(l)) = -softplus(-l) and
log(1 - sigmoid(l)) = -softplus(l), so they stay finite for logits of any size. `d_loss` and
`g_loss` dispatch on `LossConfig.kind` and add one-sided label smoothing and label noise, which
`train/step.py` calls once per D or G update.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bigan.config import LOSSES as LOSS_KINDS

# Losses with a target label per sample; smoothing and noise change those targets.
PROBABILISTIC_KINDS = ("nonsaturating", "minimax", "lsgan")

Target = float | Tensor


def _bce_with_logits(logits: Tensor, target: Target) -> Tensor:
    """Elementwise -[t log sigmoid(l) + (1 - t) log(1 - sigmoid(l))], stable for any l."""
    return target * F.softplus(-logits) + (1 - target) * F.softplus(logits)


# --- minimax and non-saturating (Goodfellow et al. 2014) ----------------------------------------

def nonsaturating_d_loss(real_logits: Tensor, fake_logits: Tensor, real_target: Target = 1.0,
                         fake_target: Target = 0.0) -> Tensor:
    """D's cross-entropy, Goodfellow et al. 2014 ("Generative Adversarial Nets", Eq. 1).

        L_D = -E_x[t_r log D(x) + (1 - t_r) log(1 - D(x))]
              -E_z[t_f log D(G(z)) + (1 - t_f) log(1 - D(G(z)))],   D = sigmoid(logits)

    With the default targets t_r = 1, t_f = 0 this is E[softplus(-l_real)] + E[softplus(l_fake)].
    Targets may be floats or per-sample tensors (label smoothing / noise, see `d_loss`).
    """
    return (_bce_with_logits(real_logits, real_target).mean()
            + _bce_with_logits(fake_logits, fake_target).mean())


def minimax_d_loss(real_logits: Tensor, fake_logits: Tensor, real_target: Target = 1.0,
                   fake_target: Target = 0.0) -> Tensor:
    """D's side of the minimax game, Goodfellow et al. 2014 (Eq. 1): the same cross-entropy
    as `nonsaturating_d_loss`,  L_D = -E[log D(x)] - E[log(1 - D(G(z)))]."""
    return nonsaturating_d_loss(real_logits, fake_logits, real_target, fake_target)


def minimax_g_loss(fake_logits: Tensor) -> Tensor:
    """The saturating generator loss of Goodfellow et al. 2014 (Eq. 1):

        L_G = E_z[log(1 - D(G(z)))] = -E[softplus(l_fake)]

    Its gradient vanishes when D confidently rejects the fakes (l_fake << 0), the reason the
    paper proposes the non-saturating variant.
    """
    return -F.softplus(fake_logits).mean()


def nonsaturating_g_loss(fake_logits: Tensor) -> Tensor:
    """The non-saturating generator loss, Goodfellow et al. 2014 (Sec. 3):

        L_G = -E_z[log D(G(z))] = E[softplus(-l_fake)]
    """
    return F.softplus(-fake_logits).mean()


# --- hinge (Lim & Ye 2017, "Geometric GAN"; Miyato et al. 2018, Eq. 16-17) ----------------------

def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]  (Lim & Ye 2017; Miyato et al. 2018)."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """L_G = -E[D(G(z))]  (Lim & Ye 2017; Miyato et al. 2018, as used by SAGAN and BigGAN)."""
    return -fake_logits.mean()


# --- Wasserstein (Arjovsky et al. 2017, "Wasserstein GAN", Eq. 3) --------------------------------

def wasserstein_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The critic maximises E[D(x)] - E[D(G(z))], so L_D = E[D(G(z))] - E[D(x)] (Arjovsky 2017).

    The Lipschitz constraint is not part of the loss: pair it with a penalty (WGAN-GP).
    """
    return fake_logits.mean() - real_logits.mean()


def wasserstein_g_loss(fake_logits: Tensor) -> Tensor:
    """L_G = -E[D(G(z))]  (Arjovsky et al. 2017)."""
    return -fake_logits.mean()


# --- least squares (Mao et al. 2017, "Least Squares GANs", Eq. 2) -------------------------------

def lsgan_d_loss(real_logits: Tensor, fake_logits: Tensor, real_target: Target = 1.0,
                 fake_target: Target = 0.0) -> Tensor:
    """L_D = 1/2 E[(D(x) - b)^2] + 1/2 E[(D(G(z)) - a)^2]  with a = 0, b = 1 (Mao et al. 2017).

    D(.) is the raw output (no sigmoid). `real_target` is b and `fake_target` is a; both may be
    per-sample tensors (label smoothing / noise, see `d_loss`).
    """
    return (0.5 * (real_logits - real_target).pow(2).mean()
            + 0.5 * (fake_logits - fake_target).pow(2).mean())


def lsgan_g_loss(fake_logits: Tensor, target: float = 1.0) -> Tensor:
    """L_G = 1/2 E[(D(G(z)) - c)^2]  with c = 1 (Mao et al. 2017, Eq. 2)."""
    return 0.5 * (fake_logits - target).pow(2).mean()


# --- relativistic pairing (Jolicoeur-Martineau 2019; Huang et al. 2024, "R3GAN", Eq. 2) ------

def rpgan_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The relativistic pairing GAN's D loss (RpGAN), with f = softplus as R3GAN uses it:

        L_D = E_{x, z}[softplus(D(G(z)) - D(x))] = E[f(-(D(x) - D(G(z))))]

    where sample i of the real batch is paired with sample i of the fake batch (same N)."""
    return F.softplus(fake_logits - real_logits).mean()


def rpgan_g_loss(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    """RpGAN's G loss: L_G = E_{x, z}[softplus(D(x) - D(G(z)))], pairs as in `rpgan_d_loss`;
    D(x) is a constant for G (the trainer computes it without gradient to D)."""
    return F.softplus(real_logits - fake_logits).mean()


_D_LOSSES = {"hinge": hinge_d_loss, "nonsaturating": nonsaturating_d_loss,
             "minimax": minimax_d_loss, "wasserstein": wasserstein_d_loss, "lsgan": lsgan_d_loss,
             "rpgan": rpgan_d_loss}
_G_LOSSES = {"hinge": hinge_g_loss, "nonsaturating": nonsaturating_g_loss,
             "minimax": minimax_g_loss, "wasserstein": wasserstein_g_loss, "lsgan": lsgan_g_loss}


def _check_kind(kind: str) -> None:
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; choose one of {', '.join(LOSS_KINDS)}")


def _uniform(like: Tensor, generator: torch.Generator | None,
             rows: tuple[int, int] | None = None) -> Tensor:
    # Draw on the generator's device (the trainer's generators live on the CPU), then move. With
    # rows = (first, total) draw for the whole global batch and keep this worker's rows.
    device = generator.device if generator is not None else like.device
    if rows is None:
        return torch.rand(like.shape, generator=generator, device=device).to(like.device)
    first, total = rows
    full = torch.rand((total,) + tuple(like.shape[1:]), generator=generator, device=device)
    return full[first:first + like.shape[0]].to(like.device)


def d_targets(real_logits: Tensor, fake_logits: Tensor, label_smoothing: float = 0.0,
              label_noise: float = 0.0, generator: torch.Generator | None = None,
              rows: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample D targets (t_real, t_fake), shaped like the logits.

    Labels start as 1 (real) and 0 (fake). Label noise flips each label independently with
    probability p = `label_noise`, from u ~ U[0, 1) drawn with `generator` (reals first, then
    fakes; nothing is drawn when p = 0; with `rows` = (first, total) the logits are rows
    first..first+N of a global batch of `total`, whose draws are made whole and sliced). One-sided label smoothing (Salimans et al. 2016,
    "Improved Techniques for Training GANs", Sec. 3.4) then turns every label 1 into 1 - s,
    s = `label_smoothing`, and leaves label 0 at 0:  t = (1 - s) * label.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise={label_noise} must be in [0, 1]")
    real_label = torch.ones_like(real_logits)
    fake_label = torch.zeros_like(fake_logits)
    if label_noise > 0:
        real_label = torch.where(_uniform(real_logits, generator, rows) < label_noise, 0.0, real_label)
        fake_label = torch.where(_uniform(fake_logits, generator, rows) < label_noise, 1.0, fake_label)
    return (1 - label_smoothing) * real_label, (1 - label_smoothing) * fake_label


def _weighted(loss: Callable[..., Tensor], weights: Sequence[float], *per_sample: Tensor) -> Tensor:
    """`loss` of an ensemble D's logits [N, K] (or [N, K, P], P patches per member) as the
    weighted mean of each member's own loss on its column (every `per_sample` tensor is split by
    column alike); with no weights, or logits [N], `loss` itself: the plain mean over every
    element, each member (and patch) weighing the same."""
    if not weights or per_sample[0].dim() == 1:
        return loss(*per_sample)
    if len(weights) != per_sample[0].shape[1]:
        raise ValueError(f"{len(weights)} member weights for a D of {per_sample[0].shape[1]} members")
    total = sum(w * loss(*(t[:, k] if isinstance(t, Tensor) and t.dim() >= 2 else t
                           for t in per_sample)) for k, w in enumerate(weights))
    return total / sum(weights)


def d_loss(kind: str, real_logits: Tensor, fake_logits: Tensor, label_smoothing: float = 0.0,
           label_noise: float = 0.0, generator: torch.Generator | None = None,
           rows: tuple[int, int] | None = None, weights: Sequence[float] = ()) -> Tensor:
    """The scalar D loss of `kind` (one of LOSS_KINDS) on logits of shape [N], or [N, K] for an
    ensemble of K discriminators (`bigan/models/ensemble.py`), each member judged on its column,
    their losses averaged with `weights` (`loss.member_weights`; empty: equal), or [N, K, P]
    with P patches per member, each patch judged like a sample.

    `label_smoothing` s and `label_noise` p change the targets as `d_targets` describes; they
    exist only for the losses with targets (nonsaturating, minimax, lsgan) and raise ValueError
    for hinge and wasserstein when non-zero.
    """
    _check_kind(kind)
    if kind not in PROBABILISTIC_KINDS:
        if label_smoothing or label_noise:
            raise ValueError(f"label smoothing/noise need a loss with targets "
                             f"({', '.join(PROBABILISTIC_KINDS)}), not {kind!r}; set both to 0")
        return _weighted(_D_LOSSES[kind], weights, real_logits, fake_logits)
    if not label_smoothing and not label_noise:
        return _weighted(_D_LOSSES[kind], weights, real_logits, fake_logits)
    t_real, t_fake = d_targets(real_logits, fake_logits, label_smoothing, label_noise, generator, rows)
    return _weighted(_D_LOSSES[kind], weights, real_logits, fake_logits, t_real, t_fake)


# Losses whose G side compares with D's logits on real data (the G step needs a real batch).
RELATIVISTIC_KINDS = ("rpgan",)


def g_loss(kind: str, fake_logits: Tensor, real_logits: Tensor | None = None,
           weights: Sequence[float] = ()) -> Tensor:
    """The scalar G loss of `kind` (one of LOSS_KINDS) on D's logits for G(z), shape [N] or [N, K]
    (`weights` as in `d_loss`: G follows the weighted sum of the members' gradients); the
    relativistic losses (RELATIVISTIC_KINDS) also need `real_logits` of the same shape."""
    _check_kind(kind)
    if kind in RELATIVISTIC_KINDS:
        if real_logits is None:
            raise ValueError(f"the {kind} G loss compares with D's logits on real data: pass real_logits")
        return _weighted(rpgan_g_loss, weights, fake_logits, real_logits)
    return _weighted(_G_LOSSES[kind], weights, fake_logits)
