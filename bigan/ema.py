"""Exponential moving average of the generator's weights, and BigGAN's standing statistics.

The trainer keeps a copy G_ema and calls `update_ema(G_ema, G, ema_decay(cur_nimg, ...))` after
every G step (Yazici et al. 2019, "The Unusual Effectiveness of Averaging in GAN Training";
Brock et al. 2019, BigGAN). Parameters are averaged; buffers (batch-norm running statistics,
spectral-norm u/v vectors) are copied from G, as stylegan2-ada does. Copied running statistics
were measured on G's activations, not on those of the averaged weights, so eval-mode samples of
G_ema are slightly off; `standing_stats` recomputes them by running G_ema on fresh batches
(BigGAN's "standing statistics") before accurate eval-mode sampling.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn


def ema_decay(nimg: int, decay: float, start_nimg: int) -> float:
    """The EMA decay after `nimg` real images: 0.0 while nimg < start_nimg (`ema.start_kimg`),
    then `decay`.

    A decay of 0 makes G_ema a copy of G: the warm-up of BigGAN's `ema_start`, which keeps the
    poor early weights out of the average.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay={decay} must be in [0, 1)")
    return 0.0 if nimg < start_nimg else float(decay)


def ramped_decay(decay: float, batch: int, age_nimg: int, rampup: float) -> float:
    """`decay` with StyleGAN2-ADA's EMA ramp-up (`ema_rampup`), in terms of a per-step decay.

    The average's half-life in images, batch * ln 0.5 / ln decay (batch: the real images one G
    step stands for), is capped at `rampup` times `age_nimg`, the images shown since the averaged
    weights began. Without the cap a short run or
    a short ProGAN phase averages mostly weights from before it: a new block's initial weights
    (measured: at 16 px after 312 G steps, decay 0.998 gave washed-out grids whose within-class
    spread was 0.23 against raw G's 0.38). rampup 0 leaves `decay` as it is."""
    if rampup <= 0.0 or decay <= 0.0:
        return decay
    half_life = batch * math.log(0.5) / math.log(decay)
    cap = rampup * max(age_nimg, batch)
    return decay if half_life <= cap else 0.5 ** (batch / cap)


def _paired(kind: str, a: list[tuple[str, Tensor]], b: list[tuple[str, Tensor]]):
    names_a, names_b = [n for n, _ in a], [n for n, _ in b]
    if names_a != names_b:
        missing = sorted(set(names_a) ^ set(names_b)) or "same names in another order"
        raise ValueError(f"EMA model and model have different {kind} ({missing}); build the EMA "
                         "copy with copy.deepcopy of the unwrapped model")
    return [(ta, tb) for (_, ta), (_, tb) in zip(a, b)]


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """One EMA step, in place on `ema_model` (Yazici et al. 2019, Eq. 2):

        p_ema <- decay * p_ema + (1 - decay) * p      for every parameter,
        b_ema <- b                                    for every buffer.

    Both models must list the same parameter and buffer names in the same order (e.g. G_ema is
    a deepcopy of G); with spectral-norm parametrizations the averaged parameter is
    `parametrizations.weight.original` and u/v are buffers, so they are copied.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay={decay} must be in [0, 1)")
    params = _paired("parameters", list(ema_model.named_parameters()), list(model.named_parameters()))
    buffers = _paired("buffers", list(ema_model.named_buffers()), list(model.named_buffers()))
    for p_ema, p in params:
        p = p.detach().to(device=p_ema.device, dtype=p_ema.dtype)
        if decay == 0.0:
            p_ema.copy_(p)  # exact copy during warm-up
        else:
            p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in buffers:
        b_ema.copy_(b)


def _tracking_batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def standing_stats(model: nn.Module, sample_batch: Callable[[], tuple[Tensor, Tensor]],
                   n_batches: int) -> None:
    """Recompute every BatchNorm's running statistics of `model` in place (BigGAN, Sec. 3.1 and
    BigGAN-PyTorch's `accumulate_standing_stats`).

    Resets each BatchNorm's running mean/var, sets momentum=None (a cumulative average), runs
    `model(*sample_batch())` `n_batches` times under no_grad with only the BatchNorm modules in
    train mode, then restores every module's mode and every momentum. Afterwards

        running_mean = (1/n) sum_b mean_b,   running_var = (1/n) sum_b var_b (unbiased),

    the plain average of the per-batch statistics. Everything else stays in eval mode, so
    spectral-norm power iterations (and dropout) do not run and the weights' u/v are unchanged.
    Modules that normalise without `nn.BatchNorm*` are not touched.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches={n_batches} must be >= 1: with none the statistics "
                         "would be left at their reset values")
    bns = _tracking_batch_norms(model)
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in bns]
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for _ in range(n_batches):
                model(*sample_batch())
    finally:
        for m, training in modes:
            m.training = training
        for m, momentum in momenta:
            m.momentum = momentum
