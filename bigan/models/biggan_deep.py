"""BigGAN-deep generator and discriminator (Brock et al. 2019, "Large Scale GAN Training for High
Fidelity Natural Image Synthesis", appendix B), laid out as ajbrock/BigGAN-PyTorch `BigGANdeep.py`.

Both networks are made of bottleneck residual blocks: a 1x1 conv reduces to a quarter of the
channels (G: of the input's, D: of the output's), two 3x3 convs work at that width, a 1x1 conv
expands again; two blocks per resolution. G's shortcut keeps the first out_ch channels when a block
narrows (no 1x1 conv); D's concatenates a 1x1 conv's out_ch - in_ch new channels to x when a block
widens. G conditions every block on the whole [class embedding, z] (no hierarchical split): it
feeds the initial linear layer and every conditional batch norm. Self-attention follows the pair
of blocks that outputs each `cfg.attention` resolution. At 128 px, ch = d_ch = 128, dim_z =
shared_dim = 128 and 1000 classes this builds BigGAN-PyTorch's 50,244,484 (G) and 34,590,210 (D)
parameters (paper: 50.4M / 34.6M; tests/test_biggan_deep.py).

Two fields let the same code hold the TF-Hub BigGAN-deep weights converted by huggingface
(`bigan.imports.hf_biggan`): `cfg.psi_stats` keeps G's batch-norm statistics as one set per
truncation psi on an even grid over [0, 1], mixed by each sample's psi (`TruncationBatchNorm2d`),
and `cfg.out_conv_channels` lets the output conv have more channels than the image (TF-Hub: ch),
of which the first `img_channels` are the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigan.config import BIGGAN_D_WIDTHS, BIGGAN_G_WIDTHS, ModelConfig
from bigan.layers import (SelfAttention, add_upsampled, fold_pays, sn_embedding, snconv2d, snlinear,
                          upsample_conv3x3)

BOTTOM = 4  # G's initial side in pixels
# D pair i halves the side unless it is the last pair at 32 px (BigGAN-PyTorch D_arch[32]).
D_DOWN_32 = (True, True, False)


def _check_resolution(cfg: ModelConfig) -> None:
    if cfg.resolution not in BIGGAN_G_WIDTHS:
        raise ValueError(f"biggan-deep has no architecture for resolution {cfg.resolution}; "
                         f"use one of {', '.join(map(str, BIGGAN_G_WIDTHS))}")


# A psi this close to a grid point psi_k = k / (S - 1) is psi_k: the set is picked as the package
# means it, not as float rounding of psi (S - 1) happens to fall. float32 holds a decimal psi within
# 3e-8, and psi (S - 1) in float32 adds at most (S - 1) 6e-8, so 1e-5 leaves a 100x margin; a psi
# within 1e-5 of the grid but meant beside it is where the package's pick depends on rounding too.
# Rounding t to the grid is exact in float32 and exports to plain ONNX ops (Round, Abs, Where);
# computing in float64 inside the graph would not help, since the float32 input is already off
# the grid (0.3f = 0.30000001) before any cast.
PSI_GRID_TOLERANCE = 1e-5


def psi_stat_weights(psi: Tensor, sets: int) -> Tensor:
    """Per-sample weights [N, S] over a table of S batch-norm statistic sets, row k measured at
    psi_k = k / (S - 1), such that `weights @ table` is each sample's statistics for its psi.

    With t = psi (S - 1), i = floor(t), c = t - i (pytorch-pretrained-BigGAN `BigGANBatchNorm`,
    the TF-Hub BigGAN-deep conversion, reproduced as it is so that its weights give its images):

        stats(psi) = c * stats[i] + (1 - c) * stats[i + 1]   if c != 0,   stats[i] if c == 0.

    Note the weights: the fraction c goes to the lower grid point, so the result jumps at every
    grid point (just above psi_i it is ~stats[i + 1], at psi_i it is stats[i]). Because of that
    jump, t within `PSI_GRID_TOLERANCE` (S - 1) of an integer is taken as that integer: a psi on
    the grid picks its own set in float32 and float64 alike (the package's float64 t lands beside
    the grid at 0.14, 0.28, 0.56, 0.58 and 0.94; float32's at 0.18, 0.3, 0.6 and five more).
    psi is clamped to [0, 1] first: psi > 1 (or no truncation) uses the psi = 1 set.
    psi: [N] float32 or float64 -> [N, S] in psi's dtype.
    """
    steps = sets - 1
    t = psi.clamp(0.0, 1.0) * steps
    grid = t.round()
    t = torch.where((t - grid).abs() <= PSI_GRID_TOLERANCE * steps, grid, t)
    lower = t.floor()
    c = (t - lower)[:, None]
    i = lower.long().clamp(0, steps)
    at_i = F.one_hot(i, sets).to(psi.dtype)
    at_j = F.one_hot((i + 1).clamp(max=steps), sets).to(psi.dtype)
    return torch.where(c != 0, c * at_i + (1 - c) * at_j, at_i)


def interpolate_psi_stats(stats: Tensor, psi: Tensor) -> Tensor:
    """stats: [S, C] table over the psi grid, psi: [N] -> [N, C] (`psi_stat_weights`)."""
    return psi_stat_weights(psi.to(stats.dtype), stats.shape[0]) @ stats


class TruncationBatchNorm2d(nn.Module):
    """Batch norm over [N, C, H, W] (optionally affine) with either one set of running statistics
    (`psi_stats == 0`: exactly nn.BatchNorm2d, kept under `.norm`) or `psi_stats` sets, one per
    truncation psi on an even grid over [0, 1] (`running_means`, `running_vars`: [S, C]), mixed
    per sample in eval mode by `weights` [N, S] (`psi_stat_weights`, computed once per forward by
    G; None = the psi = 1 set). Trained with psi sets it normalises by the batch's own statistics
    and leaves the table as it is (the table comes from imported weights).
    forward(x: [N, C, H, W], weights: [N, S] or None) -> [N, C, H, W]."""

    def __init__(self, num_features: int, psi_stats: int, eps: float, affine: bool):
        super().__init__()
        self.psi_stats, self.eps = psi_stats, eps
        if psi_stats == 0:
            self.norm = nn.BatchNorm2d(num_features, eps=eps, affine=affine)
            return
        self.register_buffer("running_means", torch.zeros(psi_stats, num_features))
        self.register_buffer("running_vars", torch.ones(psi_stats, num_features))
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: Tensor, weights: Tensor | None) -> Tensor:
        if self.psi_stats == 0:
            return self.norm(x)
        if self.training:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        if weights is None:
            mean = self.running_means[-1:, :, None, None]
            var = self.running_vars[-1:, :, None, None]
        else:
            mean = (weights @ self.running_means)[:, :, None, None]
            var = (weights @ self.running_vars)[:, :, None, None]
        out = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            out = out * self.weight[:, None, None] + self.bias[:, None, None]
        return out


class DeepConditionalBatchNorm2d(nn.Module):
    """out = BN(x) * (1 + W_g c) + W_b c (BigGAN-PyTorch `ccbn`) over a `TruncationBatchNorm2d`.
    x: [N, C, H, W], c: [N, cond_dim], w: statistic weights [N, S] or None -> [N, C, H, W]."""

    def __init__(self, num_features: int, cond_dim: int, cfg: ModelConfig):
        super().__init__()
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps)
        self.bn = TruncationBatchNorm2d(num_features, cfg.psi_stats, cfg.bn_eps, affine=False)
        self.gain = snlinear(cond_dim, num_features, bias=False, **sn)
        self.bias = snlinear(cond_dim, num_features, bias=False, **sn)

    def forward(self, x: Tensor, c: Tensor, w: Tensor | None) -> Tensor:
        gain = 1 + self.gain(c)[:, :, None, None]
        return self.bn(x, w) * gain + self.bias(c)[:, :, None, None]


class GBlock(nn.Module):
    """Bottleneck up-block: CBN-ReLU-conv1x1 (in -> in/4), CBN-ReLU-[up2]-conv3, CBN-ReLU-conv3,
    CBN-ReLU-conv1x1 (-> out); shortcut: x[:, :out] (out <= in), [up2].
    x: [N, in_ch, H, W], c: [N, cond_dim] -> [N, out_ch, H', W'] (H' = 2H when `upsample`)."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, upsample: bool, cfg: ModelConfig):
        super().__init__()
        if out_ch > in_ch:
            raise ValueError(f"a biggan-deep G block cannot widen ({in_ch} -> {out_ch} channels)")
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps)
        hidden = in_ch // 4
        self.out_ch, self.upsample = out_ch, upsample
        self.bn1 = DeepConditionalBatchNorm2d(in_ch, cond_dim, cfg)
        self.conv1 = snconv2d(in_ch, hidden, 1, **sn)
        self.bn2 = DeepConditionalBatchNorm2d(hidden, cond_dim, cfg)
        self.conv2 = snconv2d(hidden, hidden, 3, **sn)
        self.bn3 = DeepConditionalBatchNorm2d(hidden, cond_dim, cfg)
        self.conv3 = snconv2d(hidden, hidden, 3, **sn)
        self.bn4 = DeepConditionalBatchNorm2d(hidden, cond_dim, cfg)
        self.conv4 = snconv2d(hidden, out_ch, 1, **sn)

    def _up(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest") if self.upsample else x

    fold_resample: bool | str = True  # upsampling folded into conv2 (layers.fold_pays); speed.resample

    def forward(self, x: Tensor, c: Tensor, w: Tensor | None) -> Tensor:
        h = F.relu(self.bn2(self.conv1(F.relu(self.bn1(x, c, w))), c, w))
        h = upsample_conv3x3(h, self.conv2) if self.upsample and fold_pays(self.fold_resample, h, upsample=True) \
            else self.conv2(self._up(h))
        h = self.conv3(F.relu(self.bn3(h, c, w)))
        h = self.conv4(F.relu(self.bn4(h, c, w)))
        # The shortcut added to each 2x2 cell without an upsampled copy (layers.add_upsampled).
        return add_upsampled(h, x[:, :self.out_ch]) if self.upsample else h + x[:, :self.out_ch]


class Generator(nn.Module):
    """BigGAN-deep generator. forward(z: [N, dim_z], y: long [N], psi: [N] or None) ->
    [N, img_channels, res, res] in [-1, 1]. psi matters only with `cfg.psi_stats` (its batch-norm
    statistics are picked by it; None = 1); in eval mode each image depends only on its own inputs.

    Class vector: a shared embedding [num_classes, shared_dim] (one-hot when shared_dim == 0),
    joined as c = [embedding, z] and fed whole to the linear layer and every block. Resolution r
    has two blocks, widths[i] -> widths[i] then widths[i] -> widths[i + 1] with the 2x upsampling
    in the second (`BIGGAN_G_WIDTHS`, as BigGAN-PyTorch's G_arch).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _check_resolution(cfg)
        self.dim_z, self.num_classes = cfg.dim_z, cfg.num_classes
        self.resolution, self.img_channels = cfg.resolution, cfg.img_channels
        self.shared_dim, self.psi_stats = cfg.shared_dim, cfg.psi_stats
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps)
        widths = [m * cfg.ch for m in BIGGAN_G_WIDTHS[cfg.resolution]]
        if cfg.shared_dim > 0:
            self.shared = nn.Embedding(cfg.num_classes, cfg.shared_dim)
            nn.init.orthogonal_(self.shared.weight)
        cond_dim = (cfg.shared_dim or cfg.num_classes) + cfg.dim_z

        self.linear = snlinear(cond_dim, widths[0] * BOTTOM * BOTTOM, **sn)
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        self.attn_after: dict[int, str] = {}  # block index -> attention key
        res = BOTTOM
        for i in range(len(widths) - 1):
            self.blocks.append(GBlock(widths[i], widths[i], cond_dim, False, cfg))
            self.blocks.append(GBlock(widths[i], widths[i + 1], cond_dim, True, cfg))
            res *= 2
            if res in cfg.attention:
                self.attn_after[len(self.blocks) - 1] = str(res)
                self.attention[str(res)] = SelfAttention(widths[i + 1], **sn)
        self.out_bn = TruncationBatchNorm2d(widths[-1], cfg.psi_stats, cfg.bn_eps, affine=True)
        self.out_conv = snconv2d(widths[-1], cfg.out_conv_channels or cfg.img_channels, 3, **sn)

    def class_vector(self, y: Tensor) -> Tensor:
        """y: long [N] -> [N, shared_dim] (or one-hot [N, num_classes] when shared_dim == 0)."""
        if self.shared_dim > 0:
            return self.shared(y)
        return F.one_hot(y, self.num_classes).to(self.linear.bias.dtype)

    def forward(self, z: Tensor, y: Tensor, psi: Tensor | None = None) -> Tensor:
        if z.shape[1] != self.dim_z:
            raise ValueError(f"G expects z of shape [N, {self.dim_z}], got {list(z.shape)}")
        c = torch.cat([self.class_vector(y), z], dim=1)
        # Computed once here rather than in each of the 4 * blocks + 1 batch norms, in at least
        # float32 (an fp16 psi is off the grid by up to 2e-4, beyond PSI_GRID_TOLERANCE), then
        # cast to G's dtype for the mixing.
        w = None if psi is None or not self.psi_stats else psi_stat_weights(
            psi.to(torch.promote_types(psi.dtype, torch.float32)), self.psi_stats).to(z.dtype)
        h = self.linear(c).view(z.shape[0], -1, BOTTOM, BOTTOM)
        for i, block in enumerate(self.blocks):
            h = block(h, c, w)
            if i in self.attn_after:
                h = self.attention[self.attn_after[i]](h)
        h = self.out_conv(F.relu(self.out_bn(h, w)))[:, :self.img_channels]
        return torch.tanh(h)


class DBlock(nn.Module):
    """Bottleneck down-block: ReLU-conv1x1 (in -> out/4), ReLU-conv3, ReLU-conv3, ReLU-[avgpool2]-
    conv1x1 (-> out); shortcut: [avgpool2], then x joined with a 1x1 conv's out - in new channels
    when out > in. x: [N, in_ch, H, W] -> [N, out_ch, H', W'] (H' = H/2 when `downsample`)."""

    def __init__(self, in_ch: int, out_ch: int, downsample: bool, cfg: ModelConfig):
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"a biggan-deep D block cannot narrow ({in_ch} -> {out_ch} channels)")
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps)
        hidden = out_ch // 4
        self.downsample = downsample
        self.conv1 = snconv2d(in_ch, hidden, 1, **sn)
        self.conv2 = snconv2d(hidden, hidden, 3, **sn)
        self.conv3 = snconv2d(hidden, hidden, 3, **sn)
        self.conv4 = snconv2d(hidden, out_ch, 1, **sn)
        self.conv_sc = snconv2d(in_ch, out_ch - in_ch, 1, **sn) if out_ch > in_ch else None

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.relu(x))
        h = self.conv3(F.relu(self.conv2(F.relu(h))))
        h = self.conv4(self._pool(F.relu(h)))
        sc = self._pool(x)
        if self.conv_sc is not None:
            sc = torch.cat([sc, self.conv_sc(sc)], dim=1)
        return h + sc


class Discriminator(nn.Module):
    """BigGAN-deep discriminator with projection conditioning (Miyato & Koyama 2018).
    forward(x: [N, img_channels, res, res], y: long [N]) -> logits [N]; per-sample.

    A 3x3 input conv to widths[0], then per resolution two blocks, widths[i] -> widths[i + 1]
    (downsampling) and widths[i + 1] -> widths[i + 1] (`BIGGAN_D_WIDTHS`, as BigGAN-PyTorch's
    D_arch), ReLU, global sum pooling, linear output plus <embed(y), h>.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _check_resolution(cfg)
        self.num_classes, self.resolution = cfg.num_classes, cfg.resolution
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps)
        widths = [m * cfg.d_ch for m in BIGGAN_D_WIDTHS[cfg.resolution]]
        n_pairs = len(widths) - 1
        downs = D_DOWN_32 if cfg.resolution == 32 else (True,) * n_pairs
        self.input_conv = snconv2d(cfg.img_channels, widths[0], 3, **sn)
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        self.attn_after: dict[int, str] = {}
        res = cfg.resolution
        for i in range(n_pairs):
            self.blocks.append(DBlock(widths[i], widths[i + 1], downs[i], cfg))
            self.blocks.append(DBlock(widths[i + 1], widths[i + 1], False, cfg))
            res = res // 2 if downs[i] else res
            if res in cfg.attention and str(res) not in self.attention:
                self.attn_after[len(self.blocks) - 1] = str(res)
                self.attention[str(res)] = SelfAttention(widths[i + 1], **sn)
        self.linear = snlinear(widths[-1], 1, **sn)
        self.embed = sn_embedding(cfg.num_classes, widths[-1], **sn)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.input_conv(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.attn_after:
                h = self.attention[self.attn_after[i]](h)
        h = F.relu(h).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)
