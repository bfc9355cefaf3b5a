"""Progressive GAN generator and discriminator (Karras et al. 2018, "Progressive Growing of GANs for
Improved Quality, Stability, and Variation"), following the official code (tkarras/
progressive_growing_of_gans, `networks.py`: `G_paper`, `D_paper`, fused up/down-scaling).

Architecture (paper Table 2). Widths: the block at side 2^k has nf(k - 1) channels, with
nf(s) = min(fmap_max, fmap_base / 2^s) (paper: fmap_base 8192, fmap_max 512, i.e. 512 up to 32 px,
then 256, 128, 64, 32, 16 at 1024 px); smaller fmap_base/fmap_max give CPU-sized models.
G: pixel-normalised [z, class] -> dense to 4x4 -> conv3, then per doubling nearest-up2, conv3,
conv3, each conv followed by leaky ReLU(0.2) and pixel norm (Sec. 4.2); a linear 1x1 toRGB per
resolution. D mirrors it: 1x1 fromRGB + leaky ReLU per resolution, per halving conv3 and
conv3 + avg-pool2 (pooling before the activation, as the official fused conv2d_downscale2d),
and at 4x4 minibatch standard deviation (Sec. 3), conv3, dense, dense to one logit. Every weight
uses the equalized learning rate (Sec. 4.1, `bigan.layers.EqualizedConv2d`); G's output is
linear as in the paper (not tanh) and is clamped to [-1, 1] in eval mode only, so samples and
exports honour the [-1, 1] contract while training sees the paper's unclamped function.

Phases. Both networks hold every block from 4x4 to `model.resolution` and a toRGB/fromRGB per
phase resolution (`model.start_resolution` and up) from construction on, so parameter names and
optimizer state keys never change and a checkpoint from any phase loads into a fresh model. The
current phase is two attributes, not forward arguments: `current_resolution` (G's output side and
D's input side) and `alpha` (fade-in weight of the newest block, Sec. 2 / Fig. 2):

    G:  img = lerp(up2(toRGB_{r/2}(h_{r/2})), toRGB_r(block_r(h_{r/2})), alpha)
    D:  h   = lerp(fromRGB_{r/2}(avgpool2(x)), block_r(fromRGB_r(x)), alpha)

(`torch.lerp`, exact at alpha 0 and 1; the old branch is skipped at alpha 1). Set them with
`set_phase(resolution, alpha)`; they travel in `state_dict()` as `_extra_state` (a float64 tensor
[resolution, alpha]), so a checkpoint restores its phase. A new model starts at the final phase
(model.resolution, alpha 1): untouched by a trainer it is a plain, non-growing ProGAN.

Class conditioning (num_classes > 1; num_classes == 1 is the paper's unconditional model with
exactly its parameters). G concatenates a class vector to z before the latent pixel norm, as the
official code concatenates labels: a learned N(0, 1) embedding of `shared_dim` values, or the
one-hot label when shared_dim == 0. D uses projection (Miyato & Koyama 2018) on its last hidden
features phi: logit = w.phi + b + <e_y, phi>, with e_y a row of an equalized linear layer phi ->
num_classes, instead of the official AC-GAN head: D keeps the D(x, y) -> [N] contract of every
family, so all losses and gradient penalties in bigan apply unchanged, and projection avoids
AC-GAN's pull toward easily classified samples.

`model.class_cond: blocks` moves the class out of the latent and into every G block instead (not
in the paper; BigGAN's conditional batch norm, transposed to pixel norm, which has no affine
parameters of its own): after each pixel norm, h * (1 + gain_y) + bias_y per channel, with
[gain_y, bias_y] a per-block equalized linear map of the same class vector (embedding or one-hot),
its weight zero at init, so a new G is the class-free ProGAN and each block learns its own class
shift. z alone is pixel-normalised and fed to the 4x4 dense, so z keeps the whole latent. Why:
in the latent, a wide class vector made G ignore z and a narrow one made it ignore the class
(docs/benchmarks.md, the ProGAN section).

Spectral norm (`model.spectral_norm`) applies to D only and replaces its equalized-LR scaling
(SN already sets each layer's scale; multiplying by He's constant as well would shrink D's
signal ~50x per layer); G keeps equalized LR and pixel norm, so an exported G never needs
folding. D depends on the batch through minibatch std-dev by design (`uses_batch_statistics`);
gradient penalties differentiate sum_i D(x_i) as the official WGAN-GP does. `model.mbstd_groups:
class` pools that statistic within each class (`layers.ClassStdDev`) rather than within groups of
mixed classes, whose variety between classes hides a G that draws one image per class.

What a trainer does at a phase change (see `bigan.train.phases`, which computes the phase
from cur_nimg): call `set_phase(resolution, alpha)` on G, D and the EMA copy (`update_ema`
copies buffers only, not the phase) -- every step during a fade-in, since alpha moves; feed reals
at the phase resolution, cross-faded like G's output (`phases.phase_reals`); at a phase
boundary set the learning rates and, as the official code, clear Adam's moments. Optimizers are
built once over all parameters: parameters of blocks not yet in use get no gradient (grad None
with `zero_grad(set_to_none=True)`), and Adam skips them, so a new block starts with fresh
moments when it first receives gradient. Under DDP the unused parameters need
`find_unused_parameters=True`. The EMA copy is a deepcopy of the full G: nothing to grow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigan.config import PROGAN_RESOLUTIONS, ModelConfig
from bigan.layers import (ClassStdDev, EqualizedConv2d, EqualizedLinear, MinibatchStdDev, PixelNorm,
                          conv3x3_avgpool, fold_pays, snconv2d, snlinear, upsample_conv3x3)

SLOPE = 0.2  # leaky ReLU slope (paper Sec. A.1)
LINEAR_GAIN = 1 / math.sqrt(2)  # official gain=1 layers (toRGB, last dense): std 1/sqrt(fan_in)


def num_features(stage: int, fmap_base: int, fmap_max: int) -> int:
    """The official `nf(stage) = min(int(fmap_base / 2^stage), fmap_max)`, at least 1."""
    return max(1, min(int(fmap_base / 2.0 ** stage), fmap_max))


def widths(cfg: ModelConfig) -> dict[int, int]:
    """Channels of the block at each side 4..model.resolution: {4: nf(1), 8: nf(2), ...}."""
    return {r: num_features(int(math.log2(r)) - 1, cfg.fmap_base, cfg.fmap_max)
            for r in PROGAN_RESOLUTIONS if r <= cfg.resolution}


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, SLOPE)


class _Phased(nn.Module):
    """The phase state shared by G and D: `current_resolution`, `alpha`, and their checkpointing.
    Subclasses hold `blocks` (keyed by side) and per-phase RGB layers named by `rgb_layers`."""

    rgb_layers: str

    def _init_phases(self, cfg: ModelConfig) -> None:
        self.resolution, self.start_resolution = cfg.resolution, cfg.start_resolution
        self.phases = [r for r in PROGAN_RESOLUTIONS if cfg.start_resolution <= r <= cfg.resolution]
        self.current_resolution, self._alpha = cfg.resolution, 1.0

    @property
    def alpha(self) -> float:
        """Fade-in weight of the newest block: 0 = the previous phase's output, 1 = the new one."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self.set_phase(self.current_resolution, value)

    def set_phase(self, resolution: int, alpha: float = 1.0) -> None:
        """Run at `resolution` (one of `phases`), the newest block faded in by `alpha` in [0, 1];
        alpha < 1 needs a previous phase to fade from (resolution > start_resolution)."""
        if resolution not in self.phases:
            raise ValueError(f"resolution {resolution} is not a phase of this model; phases: "
                             f"{', '.join(map(str, self.phases))}")
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must be in [0, 1]")
        if alpha < 1.0 and resolution == self.start_resolution:
            raise ValueError(f"the first phase ({resolution}px) has nothing to fade from: alpha "
                             f"must be 1, got {alpha}")
        self.current_resolution, self._alpha = int(resolution), alpha

    def get_extra_state(self) -> Tensor:
        return torch.tensor([self.current_resolution, self._alpha], dtype=torch.float64)

    def set_extra_state(self, state: Tensor) -> None:
        resolution, alpha = state.tolist()
        self.set_phase(int(resolution), alpha)

    def inactive_parameter_names(self) -> set[str]:
        """Parameters the current phase does not use: they get no gradient (and no Adam step)."""
        r = self.current_resolution
        in_use = {r, r // 2} if self._alpha < 1.0 else {r}
        unused = [f"blocks.{b}." for b in map(int, self.blocks) if b > r]
        unused += [f"{self.rgb_layers}.{p}." for p in self.phases if p not in in_use]
        return {n for n, _ in self.named_parameters() if n.startswith(tuple(unused))}


# --- generator ------------------------------------------------------------------------------------

class ClassAffine(nn.Module):
    """A class-dependent gain and bias per channel after a pixel norm (`model.class_cond: blocks`):
    h * (1 + gain_y) + bias_y with [gain_y, bias_y] = W c_y, W an equalized linear map (no bias)
    whose weight starts at zero, so at init the block is exactly the class-free one and the
    modulation grows only as far as training pushes it (equalized lr: W's step is scaled like
    every other ProGAN weight). h: [N, ch, H, W], c: [N, class_dim] -> h's shape."""

    def __init__(self, class_dim: int, ch: int):
        super().__init__()
        self.linear = EqualizedLinear(class_dim, 2 * ch, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        gain, bias = self.linear(c)[:, :, None, None].chunk(2, dim=1)
        return h * (1.0 + gain) + bias


def _class_affine(class_dim: int, ch: int) -> ClassAffine | None:
    return ClassAffine(class_dim, ch) if class_dim else None


def _modulate(h: Tensor, affine: ClassAffine | None, c: Tensor | None) -> Tensor:
    return h if affine is None else affine(h, c)


class GFirstBlock(nn.Module):
    """4x4: dense z -> [ch, 4, 4] (official gain sqrt(2)/4, one bias per channel), conv3; each
    followed by leaky ReLU and pixel norm (and, with class_dim > 0, a ClassAffine of the class
    vector c). x: [N, in_features], c: [N, class_dim] or None -> [N, ch, 4, 4]."""

    def __init__(self, in_features: int, ch: int, class_dim: int = 0):
        super().__init__()
        self.ch = ch
        self.dense = EqualizedLinear(in_features, ch * 16, bias=False, gain=0.25)
        self.bias = nn.Parameter(torch.zeros(ch))
        self.conv = EqualizedConv2d(ch, ch, 3)
        self.norm = PixelNorm()
        self.cond0, self.cond1 = _class_affine(class_dim, ch), _class_affine(class_dim, ch)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        h = self.dense(x).view(-1, self.ch, 4, 4) + self.bias.view(1, -1, 1, 1)
        h = _modulate(self.norm(_lrelu(h)), self.cond0, c)
        return _modulate(self.norm(_lrelu(self.conv(h))), self.cond1, c)


class GBlock(nn.Module):
    """Doubling block: nearest-up2, conv3, conv3, each conv followed by leaky ReLU and pixel norm
    (and, with class_dim > 0, a ClassAffine of the class vector c).
    x: [N, in_ch, H, W], c: [N, class_dim] or None -> [N, out_ch, 2H, 2W]."""

    def __init__(self, in_ch: int, out_ch: int, class_dim: int = 0):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_ch, out_ch, 3)
        self.conv1 = EqualizedConv2d(out_ch, out_ch, 3)
        self.norm = PixelNorm()
        self.cond0, self.cond1 = _class_affine(class_dim, out_ch), _class_affine(class_dim, out_ch)

    # upsampling folded into conv0 (layers.upsample_conv3x3); speed.resample: True, False or
    # "auto" (a string: tested as a bool it always folded, layers.fold_pays decides by the side)
    fold_resample: bool | str = True

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        h = upsample_conv3x3(x, self.conv0) if fold_pays(self.fold_resample, x, upsample=True) \
            else self.conv0(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        h = _modulate(self.norm(_lrelu(h)), self.cond0, c)
        return _modulate(self.norm(_lrelu(self.conv1(h))), self.cond1, c)


class Generator(_Phased):
    """ProGAN generator. forward(z: [N, dim_z], y: long [N]) -> [N, img_channels, r, r] with r =
    `current_resolution` (model.resolution unless `set_phase` chose another); in eval mode
    clamped to [-1, 1] and each image depends only on its own (z, y). y is ignored when
    num_classes == 1. Modules: `first` (4x4), `blocks[str(r)]` (8..resolution), `to_rgb[str(r)]`
    (each phase), `embed` (learned class embedding, when conditional with shared_dim > 0); with
    class_cond "blocks", `cond0`/`cond1` (ClassAffine) in `first` and every block."""

    rgb_layers = "to_rgb"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._init_phases(cfg)
        self.dim_z, self.num_classes = cfg.dim_z, cfg.num_classes
        self.img_channels = cfg.img_channels
        self.class_dim = 0 if cfg.num_classes == 1 else (cfg.shared_dim or cfg.num_classes)
        self.class_cond = cfg.class_cond
        if cfg.num_classes > 1 and cfg.shared_dim > 0:
            self.embed = nn.Embedding(cfg.num_classes, cfg.shared_dim)  # N(0, 1), like z
        ch = widths(cfg)
        in_latent = self.class_dim if self.class_cond == "latent" else 0
        in_blocks = self.class_dim if self.class_cond == "blocks" else 0
        self.latent_norm = PixelNorm()
        self.first = GFirstBlock(cfg.dim_z + in_latent, ch[4], in_blocks)
        self.blocks = nn.ModuleDict({str(r): GBlock(ch[r // 2], ch[r], in_blocks)
                                     for r in ch if r > 4})
        self.to_rgb = nn.ModuleDict({str(r): EqualizedConv2d(ch[r], cfg.img_channels, 1,
                                                             gain=LINEAR_GAIN)
                                     for r in self.phases})

    def class_vector(self, y: Tensor, dtype: torch.dtype) -> Tensor:
        """y: long [N] -> [N, class_dim]: the learned embedding, or one-hot when shared_dim == 0."""
        if hasattr(self, "embed"):
            return self.embed(y).to(dtype)
        return F.one_hot(y, self.num_classes).to(dtype)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        if z.shape[1] != self.dim_z:
            raise ValueError(f"G expects z of shape [N, {self.dim_z}], got {list(z.shape)}")
        c = self.class_vector(y, z.dtype) if self.class_dim else None
        if c is not None and self.class_cond == "latent":
            x, c = torch.cat([z, c], dim=1), None
        else:
            x = z
        h, prev = self.first(self.latent_norm(x), c), None
        for r in range(3, int(math.log2(self.current_resolution)) + 1):
            prev, h = h, self.blocks[str(2 ** r)](h, c)
        img = self.to_rgb[str(self.current_resolution)](h)
        if self._alpha < 1.0:
            old = self.to_rgb[str(self.current_resolution // 2)](prev)
            img = torch.lerp(F.interpolate(old, scale_factor=2.0, mode="nearest"), img, self._alpha)
        return img if self.training else img.clamp(-1.0, 1.0)


# --- discriminator --------------------------------------------------------------------------------

def _d_conv(in_ch: int, out_ch: int, k: int, cfg: ModelConfig) -> nn.Module:
    if cfg.spectral_norm:
        return snconv2d(in_ch, out_ch, k, sn_eps=cfg.sn_eps, init=nn.init.normal_)
    return EqualizedConv2d(in_ch, out_ch, k)


def _d_linear(in_features: int, out_features: int, cfg: ModelConfig, gain: float = 1.0,
              bias: bool = True) -> nn.Module:
    if cfg.spectral_norm:
        return snlinear(in_features, out_features, bias=bias, sn_eps=cfg.sn_eps,
                        init=nn.init.normal_)
    return EqualizedLinear(in_features, out_features, bias=bias, gain=gain)


class DBlock(nn.Module):
    """Halving block: conv3 + leaky ReLU, conv3 + avg-pool2 + leaky ReLU (the official fused
    conv2d_downscale2d pools before the activation).
    x: [N, in_ch, H, W] -> [N, out_ch, H/2, W/2]."""

    def __init__(self, in_ch: int, out_ch: int, cfg: ModelConfig):
        super().__init__()
        self.conv0 = _d_conv(in_ch, in_ch, 3, cfg)
        self.conv1 = _d_conv(in_ch, out_ch, 3, cfg)

    fold_resample: bool | str = True  # pooling folded into conv1 (layers.conv3x3_avgpool); as GBlock's

    def forward(self, x: Tensor) -> Tensor:
        h = _lrelu(self.conv0(x))
        return _lrelu(conv3x3_avgpool(h, self.conv1) if fold_pays(self.fold_resample, h, upsample=False)
                      else F.avg_pool2d(self.conv1(h), 2))


class DLastBlock(nn.Module):
    """4x4: minibatch std-dev, conv3, dense to nf(0) features phi (leaky ReLU each), then
    logit = dense(phi) [+ projection <e_y, phi>]. x: [N, ch, 4, 4], y: long [N] -> [N]."""

    def __init__(self, ch: int, features: int, cfg: ModelConfig):
        super().__init__()
        self.mbstd: MinibatchStdDev | ClassStdDev | None = None
        if cfg.mbstd_group_size > 1:
            self.mbstd = (ClassStdDev(cfg.num_classes) if cfg.mbstd_groups == "class"
                          else MinibatchStdDev(cfg.mbstd_group_size))
        self.conv = _d_conv(ch + (self.mbstd is not None), ch, 3, cfg)
        self.dense0 = _d_linear(ch * 16, features, cfg)
        self.dense1 = _d_linear(features, 1, cfg, gain=LINEAR_GAIN)
        # Projection: row y of this layer's weight is the class embedding e_y.
        self.project = (_d_linear(features, cfg.num_classes, cfg, gain=LINEAR_GAIN, bias=False)
                        if cfg.num_classes > 1 else None)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.mbstd(x, y) if self.mbstd is not None else x
        phi = _lrelu(self.dense0(_lrelu(self.conv(h)).flatten(1)))
        out = self.dense1(phi).squeeze(1)
        if self.project is not None:
            out = out + self.project(phi).gather(1, y[:, None]).squeeze(1)
        return out


class Discriminator(_Phased):
    """ProGAN discriminator. forward(x: [N, img_channels, r, r], y: long [N]) -> logits [N] with r
    = `current_resolution`. Uses minibatch statistics (minibatch std-dev), so a sample's logit
    depends on the rest of its group of `mbstd_group_size`. Modules: `from_rgb[str(r)]` (each
    phase), `blocks[str(r)]` (r -> r/2 for r = 8..resolution), `last` (4x4)."""

    rgb_layers = "from_rgb"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._init_phases(cfg)
        self.num_classes = cfg.num_classes
        ch = widths(cfg)
        features = num_features(0, cfg.fmap_base, cfg.fmap_max)
        self.from_rgb = nn.ModuleDict({str(r): _d_conv(cfg.img_channels, ch[r], 1, cfg)
                                       for r in self.phases})
        self.blocks = nn.ModuleDict({str(r): DBlock(ch[r], ch[r // 2], cfg) for r in ch if r > 4})
        self.last = DLastBlock(ch[4], features, cfg)

    @property
    def uses_batch_statistics(self) -> bool:
        """True: a logit depends on the other samples of its minibatch std-dev group."""
        return self.last.mbstd is not None

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        r = self.current_resolution
        if tuple(x.shape[-2:]) != (r, r):
            raise ValueError(f"D is at the {r}x{r} phase but got images of {list(x.shape)}; call "
                             "set_phase on G and D together and feed reals at the phase "
                             "resolution (bigan.train.phases.phase_reals)")
        h = _lrelu(self.from_rgb[str(r)](x))
        if r > 4:
            h = self.blocks[str(r)](h)
        if self._alpha < 1.0:
            old = _lrelu(self.from_rgb[str(r // 2)](F.avg_pool2d(x, 2)))
            h = torch.lerp(old, h, self._alpha)
        for k in range(int(math.log2(r)) - 1, 2, -1):
            h = self.blocks[str(2 ** k)](h)
        return self.last(h, y)
