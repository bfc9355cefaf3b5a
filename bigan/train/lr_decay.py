"""Learning-rate decay at the end of training: both Adam learning rates fall from their configured
(or, for ProGAN, their phase's) values to 0 at `train.steps`, starting at the step that reaches
`optim.lr_decay_start_kimg` (by default half of train.steps). A pure function of the step, set before every iteration, so a resumed run follows the
same curve as an uninterrupted one without storing scheduler state.

Why: at a constant lr the last steps of a GAN run keep G jittering around the data; annealing
lets the final weights settle. Measured on PacGAN's 2-D mixtures (bench/quality.py), its effect
was within the spread between seeds (+0.9 and -0.5 points of high-quality samples on the ring at
12k and 24k steps, -1.4 on the grid at 12k): a tool to try, not a default.
"""

from __future__ import annotations

import math

import torch


def lr_scale(step: int, steps: int, kind: str, begin: float) -> float:
    """Multiplier of the learning rates for the iteration that follows `step` completed ones:
    1 up to step `begin`, then down to 0 at `steps`, linearly or along a half cosine."""
    if kind == "none":
        return 1.0
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
