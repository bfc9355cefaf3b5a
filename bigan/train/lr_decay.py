"""Learning-rate decay at the end of training: both Adam learning rates fall from their configured
(or, for ProGAN, their phase's) values to 0 at `train.steps`, starting at `optim.lr_decay_start`
of the run. A pure function of the step, set before every iteration, so a resumed run follows the
same curve as an uninterrupted one without storing scheduler state.

Why: the last steps of a GAN run at a constant lr keep G jittering around the data; annealing
lets it settle onto sharp modes (on PacGAN's 2-D mixtures it raised the share of samples within
3 std of a mode; numbers in bench/quality.py).
"""

from __future__ import annotations

import math

import torch


def lr_scale(step: int, steps: int, kind: str, start: float) -> float:
    """Multiplier of the learning rates for the iteration that follows `step` completed ones:
    1 before `start * steps`, then down to 0 at `steps`, linearly or along a half cosine."""
    if kind == "none":
        return 1.0
    begin = start * steps
    if step <= begin:
        return 1.0
    t = min(1.0, (step - begin) / (steps - begin))
    if kind == "linear":
        return 1.0 - t
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown lr decay {kind!r}")


def set_lrs(opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer, g_lr: float,
            d_lr: float) -> None:
    """Set the learning rate of every parameter group of G's and D's optimizers."""
    for opt, lr in ((opt_G, g_lr), (opt_D, d_lr)):
        for group in opt.param_groups:
            group["lr"] = lr
