"""The training sections: `loss:`, `optim:`, `ema:`, `train:` (batch, length, cadences,
strategy), `recovery:` (what a divergence makes the run do), `finetune:` (starting from another
run's or an imported generator's weights), `speed:` (how an iteration runs,
never what it computes) and `augment:` (what D sees, for little data).

A field's trailing comment is its documentation; `validate(prefix)` checks one section alone.
`AugmentConfig` parses its op lists when a value is set, so the training step reads names, never
strings to split (`bigan/augment.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bigan.config.vocabulary import (
    ADA_COLOR,
    ADA_GEOMETRY,
    ADA_PIPELINES,
    AUGMENTS,
    D_CALLS,
    DIFFAUGMENT_OPS,
    LOSSES,
    LR_DECAYS,
    MEMORY_FORMATS,
    NEW_CLASS_INITS,
    OPTIMIZER_IMPLS,
    PENALTIES,
    PRECISIONS,
    RESAMPLING,
    STRATEGIES,
    TRACKERS,
    _distinct_names,
    _one_of,
    _positive,
    _require,
    ada_ops,
    comma_list,
)
from bigan.config.units import nimg_property


@dataclass
class LossConfig:
    kind: str = "hinge"  # hinge | nonsaturating | minimax | wasserstein | lsgan | rpgan (relativistic pairing, R3GAN)
    label_smoothing: float = 0.0  # one-sided: D's real target becomes 1 - label_smoothing
    label_noise: float = 0.0  # probability of flipping each real/fake label in the D loss
    penalty: str = "none"  # none | wgan-gp | r1 | r2 | r1+r2 | dragan; always on the images before augmentation
    penalty_weight: float = 10.0  # lambda of the penalty (R1, R2, R1+R2: gamma, used as gamma / 2)
    penalty_interval: int = 1  # lazy regularization: apply every N D steps, scaled by N
    penalty_target: float = 1.0  # WGAN-GP / DRAGAN: target gradient norm k
    dragan_c: float = 0.5  # DRAGAN: perturbation scale, delta ~ N(0, c * std(x))
    drift_weight: float = 0.0  # ProGAN's epsilon_drift * E[D(x)^2] (0 = off)
    ortho_weight: float = 0.0  # BigGAN's orthogonal regularization on G (paper: 1e-4)
    member_weights: list[float] = field(default_factory=list)  # an ensemble D (model.d_arch native+projected): each member's weight in the D and G losses, in that order (empty = equal); G follows the weighted sum of their gradients, and the projected D's is ~10x the native's (docs/training.md)

    def validate(self, prefix: str = "loss") -> None:
        _one_of(f"{prefix}.kind", self.kind, LOSSES)
        _one_of(f"{prefix}.penalty", self.penalty, PENALTIES)
        _require(0 <= self.label_smoothing < 0.5, f"{prefix}.label_smoothing",
                 self.label_smoothing, "must be in [0, 0.5)")
        _require(0 <= self.label_noise < 0.5, f"{prefix}.label_noise", self.label_noise,
                 "must be in [0, 0.5)")
        if self.label_smoothing or self.label_noise:
            _require(self.kind in ("nonsaturating", "minimax", "lsgan"), f"{prefix}.kind",
                     self.kind, "label smoothing/noise need a probabilistic loss "
                     "(nonsaturating, minimax or lsgan)")
        for name in ("penalty_weight", "penalty_target", "dragan_c", "drift_weight",
                     "ortho_weight"):
            _positive(f"{prefix}.{name}", getattr(self, name), zero_ok=True)
        _positive(f"{prefix}.penalty_interval", self.penalty_interval)
        for i, w in enumerate(self.member_weights):
            _positive(f"{prefix}.member_weights[{i}]", w, zero_ok=True)
        _require(not self.member_weights or sum(self.member_weights) > 0, f"{prefix}.member_weights",
                 self.member_weights, "must not all be 0")


@dataclass
class OptimConfig:
    g_lr: float = 1e-4  # generator Adam learning rate (BigGAN: 1e-4)
    d_lr: float = 4e-4  # discriminator Adam learning rate (BigGAN: 4e-4)
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999])  # Adam betas for G and D
    eps: float = 1e-6  # Adam epsilon (BigGAN-PyTorch uses 1e-6)
    d_steps: int = 2  # D updates per G update (BigGAN: 2)
    grad_clip: float = 0.0  # max grad norm for G and D (0 = no clipping)
    lr_decay: str = "none"  # none | linear | cosine: both lrs fall to 0 at train.steps ...
    lr_decay_start_kimg: float | None = None  # ... from this kimg on, a whole number of steps (null: from half of train.steps; bigan.train.lr_decay)

    def validate(self, prefix: str = "optim") -> None:
        _positive(f"{prefix}.g_lr", self.g_lr)
        _positive(f"{prefix}.d_lr", self.d_lr)
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"{prefix}.betas", self.betas, "must be two numbers in [0, 1)")
        _positive(f"{prefix}.eps", self.eps)
        _positive(f"{prefix}.d_steps", self.d_steps)
        _positive(f"{prefix}.grad_clip", self.grad_clip, zero_ok=True)
        _one_of(f"{prefix}.lr_decay", self.lr_decay, LR_DECAYS)
        _require(self.lr_decay_start_kimg is None or self.lr_decay_start_kimg >= 0,
                 f"{prefix}.lr_decay_start_kimg", self.lr_decay_start_kimg, "must be >= 0 (or null)")

    lr_decay_start_nimg = nimg_property("lr_decay_start_kimg")  # None: from half of train.steps


@dataclass
class EMAConfig:
    decay: float = 0.9999  # weight of the old average per G step (BigGAN: 0.9999)
    start_kimg: float = 0.0  # until D has seen this many kimg the EMA copy just follows G (BigGAN: 20000 steps = 10240 kimg at batch 256 x 2 D steps)
    standing_stats_batches: int = 0  # >0: recompute EMA batch-norm stats before sampling
    # StyleGAN2-ADA's ema_rampup: the half-life is at most rampup x the images since the average
    # began (ProGAN: since the newest block's fade-in began); 0 = off. StyleGAN2-ADA: 0.05.
    rampup: float = 0.0

    def validate(self, prefix: str = "ema") -> None:
        _require(0 <= self.decay < 1, f"{prefix}.decay", self.decay, "must be in [0, 1)")
        _positive(f"{prefix}.start_kimg", self.start_kimg, zero_ok=True)
        _positive(f"{prefix}.standing_stats_batches", self.standing_stats_batches, zero_ok=True)
        _require(0 <= self.rampup <= 1, f"{prefix}.rampup", self.rampup, "must be in [0, 1] (0 = off)")

    start_nimg = nimg_property("start_kimg")


@dataclass
class TrainConfig:
    batch_size: int = 64  # global batch (all workers together) of one D or G step
    steps: int = 1000  # G steps to train
    seed: int = 0  # seeds weights, data order and training noise
    precision: str = "fp32"  # fp32 | bf16 (autocast on CPU and GPU)
    # Cadences in kimg (bigan/config/units.py), each a whole number of steps at batch_size x
    # optim.d_steps images per step; the defaults are 10, 200 and 500 steps at the default 64 x 2.
    log_every_kimg: float = 1.28  # real images (thousands) between scalar logs (TensorBoard, progress bar)
    sample_every_kimg: float = 25.6  # ... between per-class grids from the EMA generator
    ckpt_every_kimg: float = 64.0  # ... between checkpoints (a final one is always written)
    keep_ckpts: int = 3  # newest checkpoints kept (0 = keep all)
    grid_per_class: int = 8  # grid columns: samples per class
    grid_classes: int = 10  # grid rows: first N classes
    grid_seed: int = 1234  # fixed seed of the grid latents, so grids compare across steps
    deterministic: bool = False  # torch deterministic algorithms (bit-exact resume on CPU)
    strategy: str = "ddp"  # data parallelism with several processes: ddp | zero1 | zero2 | zero3
    out_dir: str = "runs/default"  # run directory: checkpoints/, tb/, grids/, config.yaml
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])  # trackers beside metrics.jsonl: tensorboard (RUN/tb) and, through Accelerate, wandb | mlflow | aim | comet_ml | clearml | dvclive | swanlab | trackio (installed ones)

    def validate(self, prefix: str = "train") -> None:
        for name in ("batch_size", "steps", "log_every_kimg", "sample_every_kimg",
                     "ckpt_every_kimg", "grid_per_class", "grid_classes"):
            _positive(f"{prefix}.{name}", getattr(self, name))
        _positive(f"{prefix}.keep_ckpts", self.keep_ckpts, zero_ok=True)
        _one_of(f"{prefix}.precision", self.precision, PRECISIONS)
        _one_of(f"{prefix}.strategy", self.strategy, STRATEGIES)
        for name in self.log_with:
            _one_of(f"{prefix}.log_with", name, TRACKERS)
        _require(len(set(self.log_with)) == len(self.log_with), f"{prefix}.log_with",
                 self.log_with, "names a tracker twice")

    log_every_nimg = nimg_property("log_every_kimg")
    sample_every_nimg = nimg_property("sample_every_kimg")
    ckpt_every_nimg = nimg_property("ckpt_every_kimg")


@dataclass
class SpeedConfig:
    """How the training iteration runs, never what it computes (`bigan/train/speed.py`): weights
    after N steps equal the plain eager NCHW path's within float tolerance (tests/test_speed.py).
    `auto` picks per device and strategy (measurements: docs/benchmarks.md); `bench/train_step.py` times
    the plain path against these defaults."""

    memory_format: str = "auto"  # auto (channels_last on CUDA and CPU, measured 1.16x on CPU; contiguous under DeepSpeed) | channels_last | contiguous: layout of G, D, the EMA G and the batch
    optimizer: str = "auto"  # auto (fused on CUDA; torch's default on CPU and under DeepSpeed) | for-loop | foreach | fused: how each Adam step runs over the parameters
    resample: str = "auto"  # auto (folded where the small side is >= 8 px, layers.fold_pays: measured faster there, slower on 4x4 maps) | folded: 2x nearest upsampling and 2x2 average pooling folded into the adjacent 3x3 conv as one 4x4 stride-2 conv (2.25x fewer FLOPs there; layers.upsample_conv3x3) | separate: resample and convolve as two ops, as BigGAN-PyTorch
    d_call: str = "auto"  # auto (one D call on the real and fake batch concatenated, as BigGAN-PyTorch, so spectral norm's power iteration runs once per D update; two calls where D mixes samples: ProGAN's minibatch std-dev, a batch norm in training mode) | separate: D(real), then D(fake), as before (docs/training.md)

    def validate(self, prefix: str = "speed") -> None:
        _one_of(f"{prefix}.memory_format", self.memory_format, MEMORY_FORMATS)
        _one_of(f"{prefix}.optimizer", self.optimizer, OPTIMIZER_IMPLS)
        _one_of(f"{prefix}.resample", self.resample, RESAMPLING)
        _one_of(f"{prefix}.d_call", self.d_call, D_CALLS)


@dataclass
class AugmentConfig:
    """Augmentation of every image D sees, real and fake, in D and G updates (`bigan/augment.py`),
    and LeCam's regularization of D (Tseng et al. 2021), both for training on little data.

    Beside the fields, `policy_ops` (the DiffAugment ops of `policy`, in order) and `pipeline_ops`
    (the ADA transforms `ada_pipeline` lets fire) hold the two lists parsed: set whenever those
    fields are, so they are parsed at load time, once, not at every training step. They are not
    fields: neither dumped with the config nor compared."""

    kind: str = "none"  # none | diffaugment (Zhao et al. 2020) | ada (adaptive, Karras et al. 2020)
    policy: str = "color,translation,cutout"  # diffaugment: comma list of color | translation | cutout
    # ada: which transforms: bgc (all, the paper's default) | blit | geom | color | bg, or a comma
    # list of xflip, rotate90, xint, scale, rotate, aniso, xfrac, brightness, contrast, lumaflip,
    # hue, saturation. Data whose classes change under flips or rotations (digits: 6 and 9)
    # should leave those out: at p < 1 they cannot leak in theory, but they cost G's learning time.
    ada_pipeline: str = "bgc"
    ada_target: float = 0.6  # ada: target of the overfitting heuristic r_t = E[sign(D(real))]
    ada_interval: int = 4  # ada: D updates between adjustments of p
    ada_kimg: float = 500.0  # ada: thousands of real images over which p can move by 1 (paper: 500); a rate, not checked against the batch
    ada_p_max: float = 0.8  # ada: cap on p, < 1 so the augmentations cannot leak into G (stylegan2-ada-pytorch #175)
    lecam_weight: float = 0.0  # LeCam lambda (0 = off; Tseng et al. use 0.3 with the hinge loss)
    lecam_decay: float = 0.99  # LeCam: decay of the EMAs of D(real) and D(fake) per D update (lecam-gan utils.ema_losses)
    lecam_start_kimg: float = 64.0  # LeCam: until D has been updated on this many kimg the EMAs equal the current means (decay 0); a whole number of D updates (default: 1000 at batch 64)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        text = value if isinstance(value, str) else ""  # a non-string is refused by validate
        if name == "policy":
            super().__setattr__("policy_ops", tuple(comma_list(text)))
        elif name == "ada_pipeline":
            super().__setattr__("pipeline_ops", ada_ops(text))

    def validate(self, prefix: str = "augment") -> None:
        _one_of(f"{prefix}.kind", self.kind, AUGMENTS)
        _distinct_names(f"{prefix}.policy", self.policy, DIFFAUGMENT_OPS)
        _distinct_names(f"{prefix}.ada_pipeline", self.ada_pipeline, ADA_GEOMETRY + ADA_COLOR,
                        tuple(ADA_PIPELINES))
        _require(0 < self.ada_target < 1, f"{prefix}.ada_target", self.ada_target, "must be in (0, 1)")
        _positive(f"{prefix}.ada_interval", self.ada_interval)
        _positive(f"{prefix}.ada_kimg", self.ada_kimg)
        _require(0 < self.ada_p_max < 1, f"{prefix}.ada_p_max", self.ada_p_max,
                 "must be in (0, 1): at p = 1 G learns the augmented distribution")
        _positive(f"{prefix}.lecam_weight", self.lecam_weight, zero_ok=True)
        _require(0 <= self.lecam_decay < 1, f"{prefix}.lecam_decay", self.lecam_decay, "must be in [0, 1)")
        _positive(f"{prefix}.lecam_start_kimg", self.lecam_start_kimg, zero_ok=True)

    lecam_start_nimg = nimg_property("lecam_start_kimg")


@dataclass
class RecoveryConfig:
    """Recovery from divergence (`bigan/train/recovery.py`): when a loss or G's or D's weights
    turn non-finite (or an evaluation's FID rises past `fid_rise_factor` x the best), every rank
    rolls back to the last good checkpoint, applies the remedy below and goes on; after
    `max_times` recoveries the run stops with the divergence message, as it does when this is off."""

    enabled: bool = False  # off: a divergence stops the run (TrainingDiverged)
    max_times: int = 3  # recoveries in the whole run (a resume counts on from the checkpoint's)
    lr_factor: float = 0.5  # both lrs are multiplied by this at every recovery; the product is kept in the manifest, so a resume keeps it
    skip_data: bool = True  # go on reading where the divergence found the data, skipping the batches since the checkpoint; false: read them again
    rekey_noise: bool = True  # key the training noise by the recovery count too: the retried steps draw other latents and classes
    fid_rise_factor: float = 0.0  # also recover when an evaluation's FID exceeds this x the best so far, rolling back to the best checkpoint (e.g. 1.5; 0 = off; needs fid in eval.metrics)

    def validate(self, prefix: str = "recovery") -> None:
        _positive(f"{prefix}.max_times", self.max_times)
        _require(0 < self.lr_factor <= 1, f"{prefix}.lr_factor", self.lr_factor, "must be in (0, 1]")
        _require(self.fid_rise_factor == 0 or self.fid_rise_factor > 1, f"{prefix}.fid_rise_factor",
                 self.fid_rise_factor, "must be > 1 (a rise over the best FID), or 0 = off")


@dataclass
class FinetuneConfig:
    """Starting from another run's weights with another class set (`bigan/train/finetune.py`;
    `bigan train ... --finetune-from SOURCE` sets `source` and the model settings from it)."""

    source: str = ""  # checkpoint or run directory, or consolidated/imported .safetensors, whose weights a fresh run starts from ("" = none); a resume ignores it
    new_classes: str = "mean"  # mean | random: the embedding row of a class the source has no name for (mean of the source's rows, or the model's own initialisation)
    freeze_d_blocks: int = 0  # FreezeD (Mo et al. 2020): D's first N blocks from the image keep their weights
    freeze_g_blocks: int = 0  # G's first N blocks from z (the coarsest) keep their weights

    def validate(self, prefix: str = "finetune") -> None:
        _one_of(f"{prefix}.new_classes", self.new_classes, NEW_CLASS_INITS)
        _positive(f"{prefix}.freeze_d_blocks", self.freeze_d_blocks, zero_ok=True)
        _positive(f"{prefix}.freeze_g_blocks", self.freeze_g_blocks, zero_ok=True)
