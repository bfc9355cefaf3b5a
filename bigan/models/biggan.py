"""BigGAN generator and discriminator (Brock et al. 2019, "Large Scale GAN Training for High
Fidelity Natural Image Synthesis"), following the architecture tables of ajbrock/BigGAN-PyTorch
(`G_arch`, `D_arch` in BigGAN.py) for 32, 64, 128, 256 and 512 px.

G: shared class embedding, hierarchical latent (z split into one chunk for the initial linear
layer and one per block, each block conditioned on [embedding, chunk] through conditional batch
norm), residual up-blocks, self-attention at the `cfg.attention` resolutions, BN-ReLU-conv-tanh
output. D: residual down-blocks, self-attention, ReLU + global sum pooling, a linear output plus
the projection term <embed(y), h> (Miyato & Koyama 2018). Spectral norm on every conv, linear and
D embedding when `cfg.spectral_norm`; orthogonal initialisation (BigGAN-PyTorch `G_init='ortho'`).
At 128 px, ch=96, 1000 classes this gives the paper's 70.4M (G) and 88.0M (D) parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigan.config import BIGGAN_D_WIDTHS, BIGGAN_G_WIDTHS, ModelConfig
from bigan.layers import (ConditionalBatchNorm2d, SelfAttention, add_upsampled, conv3x3_avgpool, fold_pays,
                          sn_embedding, snconv2d, snlinear, upsample_conv3x3)

# The width tables live in bigan.config, beside the resolutions they define.
# D block i halves the side when D_DOWN[r][i] (BigGAN-PyTorch `D_arch`).
D_DOWN = {r: [True] * (len(w) - 1) + [False] for r, w in BIGGAN_D_WIDTHS.items()}
D_DOWN[32] = [True, True, False, False]
BOTTOM = 4  # G's initial side in pixels


def _check_resolution(cfg: ModelConfig) -> None:
    if cfg.resolution not in BIGGAN_G_WIDTHS:
        raise ValueError(f"biggan has no architecture for resolution {cfg.resolution}; "
                         f"use one of {', '.join(map(str, BIGGAN_G_WIDTHS))}")


def z_chunks(dim_z: int, n_blocks: int, hier: bool) -> list[int]:
    """Sizes of the pieces of z: [initial linear, block 1, ..., block n] when `hier`, else [dim_z].

    BigGAN-PyTorch drops dim_z % (n_blocks + 1) latent dimensions; here the remainder goes to
    the initial linear layer so that G takes exactly `dim_z` inputs (120 at 128 px: 6 x 20).
    """
    if not hier:
        return [dim_z]
    size, extra = divmod(dim_z, n_blocks + 1)
    if size == 0:
        raise ValueError(f"hierarchical z needs dim_z >= {n_blocks + 1}, got {dim_z}")
    return [size + extra] + [size] * n_blocks


class GBlock(nn.Module):
    """Residual up-block: x -> CBN-ReLU-up2-conv3-CBN-ReLU-conv3, plus up2-conv1 shortcut.
    x: [N, in_ch, H, W], c: [N, cond_dim] -> [N, out_ch, 2H, 2W]."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, cfg: ModelConfig):
        super().__init__()
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps)
        self.bn1 = ConditionalBatchNorm2d(in_ch, cond_dim, eps=cfg.bn_eps, **sn)
        self.conv1 = snconv2d(in_ch, out_ch, 3, **sn)
        self.bn2 = ConditionalBatchNorm2d(out_ch, cond_dim, eps=cfg.bn_eps, **sn)
        self.conv2 = snconv2d(out_ch, out_ch, 3, **sn)
        self.conv_sc = snconv2d(in_ch, out_ch, 1, **sn)  # always learnable: every block upsamples

    fold_resample: bool | str = True  # upsampling folded into conv1 (layers.fold_pays); speed.resample

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = F.relu(self.bn1(x, c))
        folded = fold_pays(self.fold_resample, h, upsample=True)
        if folded:
            h = upsample_conv3x3(h, self.conv1)
        else:  # as BigGAN-PyTorch: upsample, then convolve
            h = self.conv1(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.conv2(F.relu(self.bn2(h, c)))
        if not folded:
            return h + self.conv_sc(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        # A 1x1 conv and nearest upsampling commute: the shortcut convolves the small input (4x
        # fewer FLOPs) and is added to each 2x2 cell without an upsampled copy (layers.add_upsampled).
        return add_upsampled(h, self.conv_sc(x))


class Generator(nn.Module):
    """BigGAN generator. forward(z: [N, dim_z], y: long [N]) -> [N, img_channels, res, res] in
    [-1, 1]. In eval mode each image depends only on its own (z, y).

    Class conditioning: with `cfg.shared_dim > 0` a shared embedding [num_classes, shared_dim]
    (not spectral-normalised: BigGAN-PyTorch found SN there cripples G) feeds every block; with
    `shared_dim == 0` each conditional batch norm gets the one-hot class vector, i.e. its
    gain/bias projections hold their own per-block class embeddings (BigGAN-PyTorch's
    G_shared=False). Batch-norm running statistics: `blocks.*.bn{1,2}.bn` and `out_bn`.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _check_resolution(cfg)
        self.dim_z, self.num_classes = cfg.dim_z, cfg.num_classes
        self.resolution, self.img_channels = cfg.resolution, cfg.img_channels
        widths = [m * cfg.ch for m in BIGGAN_G_WIDTHS[cfg.resolution]]
        n_blocks = len(widths) - 1
        self.chunks = z_chunks(cfg.dim_z, n_blocks, cfg.hier)
        self.hier = cfg.hier
        self.shared_dim = cfg.shared_dim
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps)

        if cfg.shared_dim > 0:
            self.shared = nn.Embedding(cfg.num_classes, cfg.shared_dim)
            nn.init.orthogonal_(self.shared.weight)
        class_dim = cfg.shared_dim if cfg.shared_dim > 0 else cfg.num_classes
        cond_dim = class_dim + (self.chunks[1] if cfg.hier else 0)

        self.linear = snlinear(self.chunks[0], widths[0] * BOTTOM * BOTTOM, **sn)
        self.blocks = nn.ModuleList(
            GBlock(widths[i], widths[i + 1], cond_dim, cfg) for i in range(n_blocks))
        self.block_res = [BOTTOM * 2 ** (i + 1) for i in range(n_blocks)]
        self.attention = nn.ModuleDict(
            {str(r): SelfAttention(widths[i + 1], **sn)
             for i, r in enumerate(self.block_res) if r in cfg.attention})
        self.out_bn = nn.BatchNorm2d(widths[-1], eps=cfg.out_bn_eps or cfg.bn_eps)
        self.out_conv = snconv2d(widths[-1], cfg.img_channels, 3, **sn)

    def class_vector(self, y: Tensor) -> Tensor:
        """y: long [N] -> [N, shared_dim] (or one-hot [N, num_classes] when shared_dim == 0)."""
        if self.shared_dim > 0:
            return self.shared(y)
        return F.one_hot(y, self.num_classes).to(self.linear.bias.dtype)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        if z.shape[1] != self.dim_z:
            raise ValueError(f"G expects z of shape [N, {self.dim_z}], got {list(z.shape)}")
        e = self.class_vector(y)
        zs = torch.split(z, self.chunks, dim=1)
        h = self.linear(zs[0]).view(z.shape[0], -1, BOTTOM, BOTTOM)
        for i, (block, res) in enumerate(zip(self.blocks, self.block_res)):
            c = torch.cat([e, zs[i + 1]], dim=1) if self.hier else e
            h = block(h, c)
            if str(res) in self.attention:
                h = self.attention[str(res)](h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class DBlock(nn.Module):
    """Residual down-block: [ReLU]-conv3-ReLU-conv3-[avgpool2], plus an avgpool-conv1 shortcut
    (learnable when the width or size changes). x: [N, in_ch, H, W] -> [N, out_ch, H/2, W/2]
    (or H, W without downsampling)."""

    def __init__(self, in_ch: int, out_ch: int, cfg: ModelConfig, preactivation: bool,
                 downsample: bool):
        super().__init__()
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps)
        self.preactivation, self.downsample = preactivation, downsample
        self.conv1 = snconv2d(in_ch, out_ch, 3, **sn)
        self.conv2 = snconv2d(out_ch, out_ch, 3, **sn)
        self.conv_sc = snconv2d(in_ch, out_ch, 1, **sn) if in_ch != out_ch or downsample else None

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    fold_resample: bool | str = True  # pooling folded into conv2 (layers.fold_pays); speed.resample

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(F.relu(x) if self.preactivation else x))
        if self.downsample and fold_pays(self.fold_resample, h, upsample=False):
            h = conv3x3_avgpool(h, self.conv2)
        else:
            h = self._pool(self.conv2(h))
        # A 1x1 conv and 2x2 average pooling commute, so BigGAN-PyTorch's two shortcut orders
        # are the same function; pooling first is 4x cheaper.
        sc = self._pool(x)
        return h + (sc if self.conv_sc is None else self.conv_sc(sc))


class Discriminator(nn.Module):
    """BigGAN discriminator with projection conditioning.
    forward(x: [N, img_channels, res, res], y: long [N]) -> logits [N]; per-sample (no batch
    statistics anywhere in D)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _check_resolution(cfg)
        self.num_classes, self.resolution = cfg.num_classes, cfg.resolution
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps)
        widths = [m * cfg.d_ch for m in BIGGAN_D_WIDTHS[cfg.resolution]]
        ins = [cfg.img_channels] + widths[:-1]
        self.blocks = nn.ModuleList()
        self.block_res, res = [], cfg.resolution
        for i, (c_in, c_out, down) in enumerate(zip(ins, widths, D_DOWN[cfg.resolution])):
            self.blocks.append(DBlock(c_in, c_out, cfg, preactivation=i > 0, downsample=down))
            res = res // 2 if down else res
            self.block_res.append(res)
        # One attention per listed resolution, after the first block that outputs it (at 32 px
        # three blocks run at 8x8; BigGAN-PyTorch's table would stack one after each).
        self.attn_after: dict[int, str] = {}
        for i, r in enumerate(self.block_res):
            if r in cfg.attention and str(r) not in self.attn_after.values():
                self.attn_after[i] = str(r)
        self.attention = nn.ModuleDict(
            {r: SelfAttention(widths[i], **sn) for i, r in self.attn_after.items()})
        self.linear = snlinear(widths[-1], 1, **sn)
        self.embed = sn_embedding(cfg.num_classes, widths[-1], **sn)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.attn_after:
                h = self.attention[self.attn_after[i]](h)
        h = F.relu(h).sum(dim=(2, 3))  # global sum pooling, as SN-GAN
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)
