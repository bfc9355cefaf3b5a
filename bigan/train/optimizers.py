"""The two Adam optimizers of a GAN, built one way for the trainer, the benches and the tests."""

from __future__ import annotations

import torch
from torch import nn

from bigan.config import OptimConfig


def build_optimizers(G: nn.Module, D: nn.Module,
                     optim: OptimConfig) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """(Adam over G's parameters at optim.g_lr, Adam over D's at optim.d_lr), both with
    optim.betas and optim.eps (BigGAN: betas (0, 0.999), eps 1e-6; TTUR lrs 1e-4 / 4e-4)."""
    betas = tuple(optim.betas)
    return (torch.optim.Adam(G.parameters(), lr=optim.g_lr, betas=betas, eps=optim.eps),
            torch.optim.Adam(D.parameters(), lr=optim.d_lr, betas=betas, eps=optim.eps))
