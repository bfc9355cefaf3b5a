"""A small class-conditional DCGAN pair (Radford et al. 2016) for 32, 64 and 128 px.

Following the paper's guidelines: G is a stack of stride-2 transposed convs with batch norm and
ReLU and a tanh output; D is a stack of stride-2 convs with LeakyReLU(0.2); weights start from
N(0, 0.02). Conditioning: G concatenates a class embedding to z; D adds the projection term
<embed(y), h> (Miyato & Koyama 2018) to a linear output on globally sum-pooled features. D has no
batch norm, so it is per-sample and works with every gradient penalty; spectral norm on D's
convs, linear and embedding is optional (`cfg.spectral_norm`, as SN-GAN, which replaces D's batch
norm by it). G is never spectral-normalised.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from bigan.config import DCGAN_RESOLUTIONS as RESOLUTIONS
from bigan.config import ModelConfig
from bigan.layers import sn_embedding, snconv2d, snlinear

dcgan_init = functools.partial(nn.init.normal_, mean=0.0, std=0.02)


def _num_doublings(cfg: ModelConfig) -> int:
    if cfg.resolution not in RESOLUTIONS:
        raise ValueError(f"dcgan has no architecture for resolution {cfg.resolution}; "
                         f"use one of {', '.join(map(str, RESOLUTIONS))}")
    return cfg.resolution.bit_length() - 3  # log2(resolution / 4)


class Generator(nn.Module):
    """forward(z: [N, dim_z], y: long [N]) -> [N, img_channels, res, res] in [-1, 1].

    [z, embed(y)] as a 1x1 map -> 4x4 transposed conv to ch * 2^(n-1) channels, then n - 1
    stride-2 transposed convs halving the width down to ch, each with BN + ReLU, and a last
    stride-2 transposed conv to img_channels + tanh (n = log2(res / 4)). Batch-norm running
    statistics live in `main.*` (nn.BatchNorm2d); in eval mode images are per-sample.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = _num_doublings(cfg)
        self.dim_z, self.num_classes = cfg.dim_z, cfg.num_classes
        self.resolution, self.img_channels = cfg.resolution, cfg.img_channels
        embed_dim = cfg.shared_dim if cfg.shared_dim > 0 else cfg.dim_z
        self.embed = nn.Embedding(cfg.num_classes, embed_dim)
        widths = [cfg.ch * 2 ** (n - 1 - i) for i in range(n)]
        layers: list[nn.Module] = []
        c_in = cfg.dim_z + embed_dim
        for i, c_out in enumerate(widths):
            stride, pad = (1, 0) if i == 0 else (2, 1)  # the first layer maps 1x1 -> 4x4
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride, pad, bias=False),
                       nn.BatchNorm2d(c_out, eps=cfg.bn_eps), nn.ReLU()]
            c_in = c_out
        layers += [nn.ConvTranspose2d(c_in, cfg.img_channels, 4, 2, 1), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Embedding)):
                dcgan_init(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = torch.cat([z, self.embed(y)], dim=1)
        return self.main(h[:, :, None, None])


class Discriminator(nn.Module):
    """forward(x: [N, img_channels, res, res], y: long [N]) -> logits [N].

    n stride-2 4x4 convs (d_ch, 2 d_ch, ..., d_ch * 2^(n-1)) with LeakyReLU(0.2) down to 4x4,
    global sum pooling to h, then linear(h) + <embed(y), h>.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = _num_doublings(cfg)
        self.num_classes, self.resolution = cfg.num_classes, cfg.resolution
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps, init=dcgan_init)
        layers: list[nn.Module] = []
        c_in = cfg.img_channels
        for i in range(n):
            c_out = cfg.d_ch * 2 ** i
            layers += [snconv2d(c_in, c_out, 4, stride=2, padding=1, **sn), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.main = nn.Sequential(*layers)
        self.linear = snlinear(c_in, 1, **sn)
        self.embed = sn_embedding(cfg.num_classes, c_in, **sn)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.main(x).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)
