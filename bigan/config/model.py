"""The model sections: `model:` (which networks, at what size; read by `bigan/models/`) and
`progressive:` (ProGAN's phase schedule, which only means something for model.arch=progan).

A field's trailing comment is its documentation; `validate(prefix)` checks one section alone and
`check_against` what depends on another section (called by `Config.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bigan.config.vocabulary import (
    ARCHS,
    BIGGAN_RESOLUTIONS,
    D_ARCHS,
    DCGAN_RESOLUTIONS,
    PROGAN_CLASS_CONDS,
    PROGAN_MBSTD_GROUPS,
    PROGAN_RESOLUTIONS,
    PROJECTED_G_ARCHS,
    _one_of,
    _positive,
    _require,
    biggan_g_blocks,
)
from bigan.config.units import nimg, nimg_property

if TYPE_CHECKING:
    from bigan.config.training import TrainConfig


@dataclass
class ModelConfig:
    arch: str = "biggan"  # biggan | biggan-deep | dcgan | mlp | progan
    resolution: int = 32  # output side in pixels (biggan, biggan-deep: 32, 64, 128, 256, 512; progan: final phase, 4..1024)
    img_channels: int = 3  # image channels; the mlp pair uses data_dim instead
    num_classes: int = 10  # class-conditional on this many classes (1 = unconditional)
    dim_z: int = 120  # latent size; biggan splits it across the G blocks (hierarchical z), biggan-deep feeds it whole to every block (paper: 128)
    shared_dim: int = 128  # biggan, biggan-deep: shared class-embedding size (0 = one-hot class vector, one embedding per block); progan: class vector joined to z, or fed to every block's gain and bias (model.class_cond; 0 = one-hot)
    ch: int = 96  # G base width (BigGAN's ch); widths per block are multiples of it
    d_ch: int = 96  # D base width
    attention: list[int] = field(default_factory=lambda: [64])  # resolutions with self-attention
    d_arch: str = "native"  # native (the arch's own D) | projected (frozen EfficientNet-Lite0 features, Sauer et al. 2021; the `projected` extra) | native+projected (both, each judged by the loss on its own logits, as Vision-aided GAN, Kumari et al. 2022)
    projected_res: int = 224  # projected D: side the images are resized to for the pretrained network (paper: 224; a power of two >= 32 or 224)
    projected_batch_norm: bool = False  # projected D: batch norm after each head conv, as the paper's heads; on Imagenette it delayed G's collapse about sixfold (docs/training.md) and makes D score real and fake in separate calls; false by default so that checkpoints written before it resume
    projected_per_patch: bool = False  # projected D: one logit per head position (4 heads x 4x4), each judged by the loss like a sample, as the paper's loss; false: the mean of them, one logit per image
    hier: bool = True  # biggan: hierarchical latent (z chunks fed to every block); biggan-deep always feeds all of z
    spectral_norm: bool = True  # spectral normalization on G and D weights (progan: D only, replacing its equalized LR)
    sn_eps: float = 1e-6  # epsilon of the spectral-norm power iteration
    bn_eps: float = 1e-5  # epsilon of G's (conditional) batch norm (TF-Hub BigGAN-deep: 1e-4)
    out_bn_eps: float = 0.0  # biggan: epsilon of G's output batch norm (0 = bn_eps); BigGAN-PyTorch fixes it at 1e-5 whatever its BN_eps, so `bigan import` sets it
    psi_stats: int = 0  # biggan-deep: G's batch-norm statistics kept as this many sets, one per truncation psi on an even grid over [0, 1], picked by each sample's psi (0 = one running set, as training makes; TF-Hub BigGAN-deep: 51)
    out_conv_channels: int = 0  # biggan-deep: channels of G's output conv, the first img_channels being the image (0 = img_channels; TF-Hub BigGAN-deep: ch)
    data_dim: int = 2  # mlp: dimension of the data points
    mlp_hidden: int = 256  # mlp: hidden width of G and D
    mlp_layers: int = 3  # mlp: hidden layers of G and D
    start_resolution: int = 4  # progan: resolution of the first phase; layers below it are never faded in
    fmap_base: int = 8192  # progan: width at stage s is min(fmap_max, fmap_base / 2^s) (paper: 8192)
    fmap_max: int = 512  # progan: cap on every width (paper: 512)
    mbstd_group_size: int = 4  # progan: minibatch std-dev group size in D (min with the batch; 1 = off)
    mbstd_groups: str = "batch"  # progan: the samples each minibatch std-dev pools: batch (groups of mbstd_group_size, the paper) | class (every sample of one class in the worker's batch, G's classes then paired with the reals'; shows D a G that draws one image per class)
    class_cond: str = "latent"  # progan: where G takes the class: latent (joined to z before the pixel norm, the official code) | blocks (z alone in the latent; a zero-initialised per-channel gain and bias of the class vector after every pixel norm of every block)

    def validate(self, prefix: str = "model") -> None:
        _one_of(f"{prefix}.arch", self.arch, ARCHS)
        _one_of(f"{prefix}.d_arch", self.d_arch, D_ARCHS)
        if "projected" in self.d_arch:
            _one_of(f"{prefix}.arch", self.arch, PROJECTED_G_ARCHS)
            # Four levels at strides 2..16 of it, each an even side down to the heads' 4x4.
            _require(self.projected_res >= 64 and self.projected_res % 32 == 0,
                     f"{prefix}.projected_res", self.projected_res,
                     "must be a multiple of 32 and >= 64 (the projected D's coarsest level is res / 16)")
        _require(not self.projected_per_patch or "projected" in self.d_arch, f"{prefix}.projected_per_patch",
                 self.projected_per_patch, f"applies to the projected D only, and {prefix}.d_arch={self.d_arch!r}")
        if self.arch in ("biggan", "biggan-deep"):
            _one_of(f"{prefix}.resolution", self.resolution, BIGGAN_RESOLUTIONS)
        elif self.arch == "dcgan":
            _one_of(f"{prefix}.resolution", self.resolution, DCGAN_RESOLUTIONS)
        elif self.arch == "progan":
            _one_of(f"{prefix}.resolution", self.resolution, PROGAN_RESOLUTIONS)
            _require(self.start_resolution in PROGAN_RESOLUTIONS
                     and self.start_resolution <= self.resolution, f"{prefix}.start_resolution",
                     self.start_resolution, "must be a power of two from 4 up to model.resolution")
            for name in ("fmap_base", "fmap_max", "mbstd_group_size"):
                _positive(f"{prefix}.{name}", getattr(self, name))
        _one_of(f"{prefix}.class_cond", self.class_cond, PROGAN_CLASS_CONDS)
        if self.class_cond != "latent":
            # Only ProGAN's G has a latent-only class path to move; BigGAN's blocks already take it.
            _require(self.arch == "progan", f"{prefix}.class_cond", self.class_cond,
                     f"only model.arch=progan takes it (model.arch={self.arch}); leave it 'latent'")
            _require(self.num_classes > 1, f"{prefix}.class_cond", self.class_cond,
                     "needs a class-conditional model (model.num_classes > 1)")
        _one_of(f"{prefix}.mbstd_groups", self.mbstd_groups, PROGAN_MBSTD_GROUPS)
        if self.mbstd_groups == "class":
            _require(self.arch == "progan" and self.num_classes > 1 and self.mbstd_group_size > 1,
                     f"{prefix}.mbstd_groups", self.mbstd_groups,
                     "needs model.arch=progan, model.num_classes > 1 and minibatch std-dev on "
                     f"(model.mbstd_group_size > 1); here arch={self.arch}, num_classes="
                     f"{self.num_classes}, mbstd_group_size={self.mbstd_group_size}")
        for name in ("img_channels", "num_classes", "dim_z", "ch", "d_ch", "data_dim",
                     "mlp_hidden", "mlp_layers"):
            _positive(f"{prefix}.{name}", getattr(self, name))
        _positive(f"{prefix}.shared_dim", self.shared_dim, zero_ok=True)
        _positive(f"{prefix}.sn_eps", self.sn_eps)
        _positive(f"{prefix}.bn_eps", self.bn_eps)
        _positive(f"{prefix}.out_bn_eps", self.out_bn_eps, zero_ok=True)
        for r in self.attention:
            _require(isinstance(r, int) and r >= 8 and r & (r - 1) == 0, f"{prefix}.attention",
                     self.attention, "each entry must be a power-of-two resolution >= 8")
        if self.arch == "biggan-deep":
            self._validate_deep(prefix)
        if self.arch == "biggan" and self.hier:
            n_blocks = biggan_g_blocks(self.resolution)  # z is split into n_blocks + 1 chunks
            _require(self.dim_z >= n_blocks + 1, f"{prefix}.dim_z", self.dim_z,
                     f"hierarchical z at {self.resolution}px needs dim_z >= {n_blocks + 1}")

    def _validate_deep(self, prefix: str) -> None:
        # Bottlenecks run at a quarter of the narrowest width (G: ch, D: d_ch; 4 * d_ch at 32 px).
        _require(self.ch >= 4, f"{prefix}.ch", self.ch, "biggan-deep needs ch >= 4 (its "
                 "bottleneck blocks work at ch / 4 channels)")
        _require(self.d_ch >= 4 or self.resolution == 32, f"{prefix}.d_ch", self.d_ch,
                 "biggan-deep needs d_ch >= 4 (its bottleneck blocks work at d_ch / 4 channels)")
        _require(self.psi_stats == 0 or self.psi_stats >= 2, f"{prefix}.psi_stats",
                 self.psi_stats, "must be 0 (one set) or >= 2 (sets at psi = 0 and 1 at least)")
        _require(self.out_conv_channels == 0 or self.out_conv_channels >= self.img_channels,
                 f"{prefix}.out_conv_channels", self.out_conv_channels,
                 f"must be 0 or >= model.img_channels ({self.img_channels})")


@dataclass
class ProgressiveConfig:
    """ProGAN's phase schedule (Karras et al. 2018, Sec. 2 and App. A.1), used when model.arch is
    progan. Phases, in images shown to D: stabilise at model.start_resolution for `stab_kimg`,
    then for every doubling up to model.resolution fade the new block in over `fade_kimg` and
    stabilise for `stab_kimg`; the last phase runs until train.steps ends (the official code's
    lod_transition_kimg and lod_training_kimg). A phase ends at its image count wherever a step
    lands, so these need not be whole steps; the code reads them as `fade_nimg`, `stab_nimg`.
    The resolutions live in `model` (they decide which layers exist). `bigan.train.phases` turns
    this into phases."""

    fade_kimg: float = 600.0  # real images (thousands) per fade-in phase (alpha 0 -> 1; 0 = no fade-in)
    stab_kimg: float = 600.0  # ... per stabilisation phase (alpha = 1)
    batch_size: dict[int, int] = field(default_factory=dict)  # resolution -> global batch (missing: train.batch_size)
    g_lr: dict[int, float] = field(default_factory=dict)  # resolution -> G learning rate (missing: optim.g_lr)
    d_lr: dict[int, float] = field(default_factory=dict)  # resolution -> D learning rate (missing: optim.d_lr)
    reset_optimizer: bool = True  # clear Adam moments at every phase boundary (official reset_opt_for_new_lod)

    def validate(self, prefix: str = "progressive") -> None:
        _positive(f"{prefix}.fade_kimg", self.fade_kimg, zero_ok=True)
        _positive(f"{prefix}.stab_kimg", self.stab_kimg)
        nimg(self.fade_kimg, f"{prefix}.fade_kimg")  # whole images
        _positive(f"{prefix}.stab_kimg", nimg(self.stab_kimg, f"{prefix}.stab_kimg"))
        for name in ("batch_size", "g_lr", "d_lr"):
            for res, value in getattr(self, name).items():
                _one_of(f"{prefix}.{name}.{res} (resolution)", res, PROGAN_RESOLUTIONS)
                _positive(f"{prefix}.{name}.{res}", value)

    fade_nimg = nimg_property("fade_kimg")
    stab_nimg = nimg_property("stab_kimg")

    def check_against(self, model: ModelConfig, train: TrainConfig,
                      prefix: str = "progressive") -> None:
        """Cross-section checks: every keyed resolution is a phase of the model, and every phase's
        batch splits into minibatch std-dev groups (ProGAN's D needs N % min(group, N) == 0)."""
        phases = [r for r in PROGAN_RESOLUTIONS if model.start_resolution <= r <= model.resolution]
        for name in ("batch_size", "g_lr", "d_lr"):
            for res in getattr(self, name):
                _require(res in phases, f"{prefix}.{name}.{res}", getattr(self, name)[res],
                         f"{res} is not a phase resolution (model.start_resolution.."
                         f"model.resolution: {', '.join(map(str, phases))})")
        for res in phases:
            batch = self.batch_size.get(res, train.batch_size)
            group = min(model.mbstd_group_size, batch)
            where = f"{prefix}.batch_size.{res}" if res in self.batch_size else "train.batch_size"
            _require(batch % group == 0, where, batch,
                     f"the {res}px phase needs a multiple of the minibatch std-dev group "
                     f"(model.mbstd_group_size={model.mbstd_group_size})")
