"""An MLP generator/discriminator pair for low-dimensional point data (the 2-D Gaussian ring and
grid of `bigan.data.synthetic`), where mode collapse is visible at a glance.

G: [z, embed(y)] -> `mlp_layers` x (Linear(mlp_hidden) + ReLU) -> Linear(data_dim), no output
squashing. D: `mlp_layers` x (Linear(mlp_hidden) + LeakyReLU(0.2)) -> h, then linear(h) plus the
projection term <embed(y), h> (Miyato & Koyama 2018). Class conditioning only when
num_classes > 1 (y is accepted and ignored otherwise). Spectral norm on D when
`cfg.spectral_norm`; G never. torch's default initialisation throughout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bigan.config import ModelConfig
from bigan.layers import sn_embedding, snlinear


class Generator(nn.Module):
    """forward(z: [N, dim_z], y: long [N]) -> points [N, data_dim]; per-sample (no batch norm)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dim_z, self.num_classes, self.data_dim = cfg.dim_z, cfg.num_classes, cfg.data_dim
        embed_dim = 0
        if cfg.num_classes > 1:
            embed_dim = cfg.shared_dim if cfg.shared_dim > 0 else cfg.dim_z
        self.embed = nn.Embedding(cfg.num_classes, embed_dim) if embed_dim else None
        layers: list[nn.Module] = []
        width = cfg.dim_z + embed_dim
        for _ in range(cfg.mlp_layers):
            layers += [nn.Linear(width, cfg.mlp_hidden), nn.ReLU()]
            width = cfg.mlp_hidden
        layers.append(nn.Linear(width, cfg.data_dim))
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        return self.main(z)


class Discriminator(nn.Module):
    """forward(x: [N, data_dim], y: long [N]) -> logits [N]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_classes, self.data_dim = cfg.num_classes, cfg.data_dim
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps, init=None)
        layers: list[nn.Module] = []
        width = cfg.data_dim
        for _ in range(cfg.mlp_layers):
            layers += [snlinear(width, cfg.mlp_hidden, **sn), nn.LeakyReLU(0.2)]
            width = cfg.mlp_hidden
        self.main = nn.Sequential(*layers)
        self.linear = snlinear(width, 1, **sn)
        self.embed = sn_embedding(cfg.num_classes, width, **sn) if cfg.num_classes > 1 else None

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.main(x)
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(dim=1)
        return out
