"""Typed run configuration: dataclasses loaded from YAML with dotted command-line overrides.

One schema serves the YAML file, the CLI (`model.ch=64`) and Python (`ModelConfig(ch=64)`).
Every field is validated when the config is built, so a bad value fails at load time with the
field's dotted name and its allowed range, never mid-run. Unknown keys are errors.
This module imports nothing heavy: the server and the CLI's `--help` use it without torch.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the dotted field."""


ARCHS = ("biggan", "biggan-deep", "dcgan", "mlp", "progan")
# model.d_arch: D of the arch itself, or the projected D (bigan/models/projected.py), which any
# of these image generators can train against.
D_ARCHS = ("native", "projected")
PROJECTED_G_ARCHS = ("biggan", "biggan-deep", "dcgan")
LOSSES = ("hinge", "nonsaturating", "minimax", "wasserstein", "lsgan", "rpgan")
PENALTIES = ("none", "wgan-gp", "r1", "r2", "r1+r2", "dragan")
AUGMENTS = ("none", "diffaugment", "ada")  # see bigan/augment.py
DIFFAUGMENT_OPS = ("color", "translation", "cutout")
# ADA's transforms (Karras et al. 2020, App. B.1) in the order they are applied, and the named
# pipelines of stylegan2-ada-pytorch's --augpipe that they cover (see bigan/augment.py).
ADA_GEOMETRY = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
ADA_COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
ADA_PIPELINES = {"blit": ADA_GEOMETRY[:3], "geom": ADA_GEOMETRY[3:], "color": ADA_COLOR,
                 "bg": ADA_GEOMETRY, "bgc": ADA_GEOMETRY + ADA_COLOR}
SCHEDULE_KINDS = ("linear", "cosine")
# Sections whose values the training loop reads every step, hence the ones `schedules` may move.
SCHEDULABLE = ("optim", "loss", "ema", "augment")
PRECISIONS = ("fp32", "bf16")
STRATEGIES = ("ddp", "zero1", "zero2", "zero3")  # see bigan/train/parallel.py
DATA_SOURCES = ("shards", "digits", "synthetic", "gaussian-ring", "gaussian-grid")
UNREADABLE_SHARD_ACTIONS = ("skip", "stop")  # data.on_unreadable_shard (bigan/data/loader.py)
PROGAN_RESOLUTIONS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
DCGAN_RESOLUTIONS = (32, 64, 128)
# BigGAN's block tables (BigGAN-PyTorch `G_arch` / `D_arch`), by output resolution. G starts at
# 4x4 with BIGGAN_G_WIDTHS[r][0] * ch channels and block i maps widths [i] -> [i + 1] while
# doubling the side; D block i outputs BIGGAN_D_WIDTHS[r][i] * d_ch channels.
BIGGAN_G_WIDTHS = {
    32: (4, 4, 4, 4),
    64: (16, 16, 8, 4, 2),
    128: (16, 16, 8, 4, 2, 1),
    256: (16, 16, 8, 8, 4, 2, 1),
    512: (16, 16, 8, 8, 4, 2, 1, 1),
}
BIGGAN_D_WIDTHS = {
    32: (4, 4, 4, 4),
    64: (1, 2, 4, 8, 16),
    128: (1, 2, 4, 8, 16, 16),
    256: (1, 2, 4, 8, 8, 16, 16),
    512: (1, 1, 2, 4, 8, 8, 16, 16),
}
BIGGAN_RESOLUTIONS = tuple(BIGGAN_G_WIDTHS)


LR_DECAYS = ("none", "linear", "cosine")
# Experiment trackers, by Accelerate's names (accelerate.tracking.LOGGER_TYPE_TO_CLASS).
TRACKERS = ("tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive", "swanlab",
            "trackio")
# Metrics of the evaluation beside training (bigan/eval/run_evaluator.py) and which way is better.
EVAL_METRICS = {"fid": "min", "kid": "min", "intra_fid": "min", "precision": "max",
                "recall": "max", "class_accuracy": "max", "is": "max"}
EVAL_MODES = ("process", "blocking")  # beside training in its own process | inside the loop
# How the training iteration is executed (bigan/train/speed.py); none changes the math.
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
RESAMPLING = ("auto", "folded", "separate")
OPTIMIZER_IMPLS = ("auto", "for-loop", "foreach", "fused")


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: {allowed}")


def _one_of(name: str, value: Any, choices: tuple) -> None:
    _require(value in choices, name, value, f"must be one of {', '.join(map(str, choices))}")


def _positive(name: str, value: float, zero_ok: bool = False) -> None:
    ok = value >= 0 if zero_ok else value > 0
    _require(ok, name, value, "must be >= 0" if zero_ok else "must be > 0")


@dataclass
class ModelConfig:
    arch: str = "biggan"  # biggan | biggan-deep | dcgan | mlp | progan
    resolution: int = 32  # output side in pixels (biggan, biggan-deep: 32, 64, 128, 256, 512; progan: final phase, 4..1024)
    img_channels: int = 3  # image channels; the mlp pair uses data_dim instead
    num_classes: int = 10  # class-conditional on this many classes (1 = unconditional)
    dim_z: int = 120  # latent size; biggan splits it across the G blocks (hierarchical z), biggan-deep feeds it whole to every block (paper: 128)
    shared_dim: int = 128  # biggan, biggan-deep: shared class-embedding size (0 = one-hot class vector, one embedding per block); progan: embedding joined to z (0 = one-hot)
    ch: int = 96  # G base width (BigGAN's ch); widths per block are multiples of it
    d_ch: int = 96  # D base width
    attention: list[int] = field(default_factory=lambda: [64])  # resolutions with self-attention
    d_arch: str = "native"  # native (the arch's own D) | projected (frozen EfficientNet-Lite0 features, Sauer et al. 2021; the `projected` extra)
    projected_res: int = 224  # projected D: side the images are resized to for the pretrained network (paper: 224; a power of two >= 32 or 224)
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

    def validate(self, prefix: str = "model") -> None:
        _one_of(f"{prefix}.arch", self.arch, ARCHS)
        _one_of(f"{prefix}.d_arch", self.d_arch, D_ARCHS)
        if self.d_arch == "projected":
            _one_of(f"{prefix}.arch", self.arch, PROJECTED_G_ARCHS)
            # Four levels at strides 2..16 of it, each an even side down to the heads' 4x4.
            _require(self.projected_res >= 64 and self.projected_res % 32 == 0,
                     f"{prefix}.projected_res", self.projected_res,
                     "must be a multiple of 32 and >= 64 (the projected D's coarsest level is res / 16)")
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
            n_blocks = {32: 3, 64: 4, 128: 5, 256: 6, 512: 7}[self.resolution]
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
class DataConfig:
    source: str = "digits"  # shards (WebDataset, see `path`) | in-memory: digits | synthetic | gaussian-ring | gaussian-grid
    path: str = ""  # shards: directory holding dataset.json and shard-*.tar, or a URL (s3://, gs://, https://, file://), brace pattern (.../shard-{000000..000009}.tar) or pipe:CMD; docs/training.md
    num_workers: int = 2  # shards: DataLoader worker processes per training process
    shuffle_buffer: int = 1000  # shards: samples in each shard's shuffle buffer (0 = tar order)
    verify: bool = False  # shards: check every shard's sha256 before training
    read_retries: int = 5  # shards at a URL: failed reads in a row retried (and counted) before a shard is given up
    retry_backoff_sec: float = 1.0  # ... the first wait between retries; doubles per retry (jittered), at most 30 s
    on_unreadable_shard: str = "skip"  # a shard given up: skip (count its samples, name it in the log) | stop (fail the run)
    num_samples: int = 10_000  # synthetic / gaussian sets: how many samples to make
    flip: bool = False  # random horizontal flip
    seed: int = 0  # seed of the generated sets (not of the data order, see train.seed)

    def validate(self, prefix: str = "data") -> None:
        _one_of(f"{prefix}.source", self.source, DATA_SOURCES)
        _positive(f"{prefix}.num_samples", self.num_samples)
        _positive(f"{prefix}.num_workers", self.num_workers, zero_ok=True)
        _positive(f"{prefix}.shuffle_buffer", self.shuffle_buffer, zero_ok=True)
        _positive(f"{prefix}.read_retries", self.read_retries, zero_ok=True)
        _require(self.retry_backoff_sec >= 0, f"{prefix}.retry_backoff_sec",
                 self.retry_backoff_sec, "must be >= 0")
        _one_of(f"{prefix}.on_unreadable_shard", self.on_unreadable_shard,
                UNREADABLE_SHARD_ACTIONS)
        _require(self.source != "shards" or bool(self.path), f"{prefix}.path", self.path,
                 "data.source=shards needs the shard directory (see `bigan data pack`)")


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


@dataclass
class OptimConfig:
    g_lr: float = 1e-4  # generator Adam learning rate (BigGAN: 1e-4)
    d_lr: float = 4e-4  # discriminator Adam learning rate (BigGAN: 4e-4)
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999])  # Adam betas for G and D
    eps: float = 1e-6  # Adam epsilon (BigGAN-PyTorch uses 1e-6)
    d_steps: int = 2  # D updates per G update (BigGAN: 2)
    grad_clip: float = 0.0  # max grad norm for G and D (0 = no clipping)
    lr_decay: str = "none"  # none | linear | cosine: both lrs fall to 0 at train.steps ...
    lr_decay_start: float = 0.5  # ... from this fraction of train.steps on (bigan.train.lr_decay)

    def validate(self, prefix: str = "optim") -> None:
        _positive(f"{prefix}.g_lr", self.g_lr)
        _positive(f"{prefix}.d_lr", self.d_lr)
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"{prefix}.betas", self.betas, "must be two numbers in [0, 1)")
        _positive(f"{prefix}.eps", self.eps)
        _positive(f"{prefix}.d_steps", self.d_steps)
        _positive(f"{prefix}.grad_clip", self.grad_clip, zero_ok=True)
        _one_of(f"{prefix}.lr_decay", self.lr_decay, LR_DECAYS)
        _require(0 <= self.lr_decay_start < 1, f"{prefix}.lr_decay_start", self.lr_decay_start,
                 "must be in [0, 1)")


@dataclass
class EMAConfig:
    decay: float = 0.9999  # weight of the old average per G step (BigGAN: 0.9999)
    start_step: int = 0  # before this G step the EMA copy just follows G (BigGAN: 20000)
    standing_stats_batches: int = 0  # >0: recompute EMA batch-norm stats before sampling

    def validate(self, prefix: str = "ema") -> None:
        _require(0 <= self.decay < 1, f"{prefix}.decay", self.decay, "must be in [0, 1)")
        _positive(f"{prefix}.start_step", self.start_step, zero_ok=True)
        _positive(f"{prefix}.standing_stats_batches", self.standing_stats_batches, zero_ok=True)


@dataclass
class TrainConfig:
    batch_size: int = 64  # global batch (all workers together) of one D or G step
    steps: int = 1000  # G steps to train
    seed: int = 0  # seeds weights, data order and training noise
    precision: str = "fp32"  # fp32 | bf16 (autocast on CPU and GPU)
    log_every: int = 10  # steps between scalar logs (TensorBoard, progress bar)
    sample_every: int = 200  # steps between per-class grids from the EMA generator
    ckpt_every: int = 500  # steps between checkpoints (a final one is always written)
    keep_ckpts: int = 3  # newest checkpoints kept (0 = keep all)
    grid_per_class: int = 8  # grid columns: samples per class
    grid_classes: int = 10  # grid rows: first N classes
    grid_seed: int = 1234  # fixed seed of the grid latents, so grids compare across steps
    deterministic: bool = False  # torch deterministic algorithms (bit-exact resume on CPU)
    strategy: str = "ddp"  # data parallelism with several processes: ddp | zero1 | zero2 | zero3
    out_dir: str = "runs/default"  # run directory: checkpoints/, tb/, grids/, config.yaml
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])  # trackers beside metrics.jsonl: tensorboard (RUN/tb) and, through Accelerate, wandb | mlflow | aim | comet_ml | clearml | dvclive | swanlab | trackio (installed ones)

    def validate(self, prefix: str = "train") -> None:
        for name in ("batch_size", "steps", "log_every", "sample_every", "ckpt_every",
                     "grid_per_class", "grid_classes"):
            _positive(f"{prefix}.{name}", getattr(self, name))
        _positive(f"{prefix}.keep_ckpts", self.keep_ckpts, zero_ok=True)
        _one_of(f"{prefix}.precision", self.precision, PRECISIONS)
        _one_of(f"{prefix}.strategy", self.strategy, STRATEGIES)
        for name in self.log_with:
            _one_of(f"{prefix}.log_with", name, TRACKERS)
        _require(len(set(self.log_with)) == len(self.log_with), f"{prefix}.log_with",
                 self.log_with, "names a tracker twice")


@dataclass
class SpeedConfig:
    """How the training iteration runs, never what it computes (`bigan/train/speed.py`): weights
    after N steps equal the plain eager NCHW path's within float tolerance (tests/test_speed.py).
    `auto` picks per device and strategy (measurements: docs/benchmarks.md); `bench/train_step.py` times
    the plain path against these defaults."""

    memory_format: str = "auto"  # auto (channels_last on CUDA; contiguous on CPU, where it measured no gain, and under DeepSpeed) | channels_last | contiguous: layout of G, D, the EMA G and the batch
    optimizer: str = "auto"  # auto (fused on CUDA; torch's default on CPU and under DeepSpeed) | for-loop | foreach | fused: how each Adam step runs over the parameters
    resample: str = "auto"  # auto (folded everywhere) | folded: 2x nearest upsampling and 2x2 average pooling folded into the adjacent 3x3 conv as one 4x4 stride-2 conv (2.25x fewer FLOPs there; layers.upsample_conv3x3) | separate: resample and convolve as two ops, as BigGAN-PyTorch

    def validate(self, prefix: str = "speed") -> None:
        _one_of(f"{prefix}.memory_format", self.memory_format, MEMORY_FORMATS)
        _one_of(f"{prefix}.optimizer", self.optimizer, OPTIMIZER_IMPLS)
        _one_of(f"{prefix}.resample", self.resample, RESAMPLING)


@dataclass
class EvalConfig:
    """Evaluation while training (`bigan/train/evaluation.py` + `bigan/eval/run_evaluator.py`):
    at every `every_kimg` the trainer writes a checkpoint and hands it to an evaluator, which
    scores its EMA generator and writes the results back at that step; `checkpoints/best` names
    the best one by `best_metric`."""

    every_kimg: float = 0.0  # thousands of real images between evaluations (0 = off); always also at the end
    n: int = 1000  # generated (and real) images per evaluation; FID is biased upwards at small N
    metrics: list[str] = field(default_factory=lambda: ["fid"])  # fid | kid | precision | recall | class_accuracy | is | intra_fid
    extractor: str = "inception"  # inception (the FID network) | path to a domain classifier .safetensors | a TorchScript Inception .pt
    data: str = ""  # real shards to compare with ("" = data.path when data.source=shards)
    psi: list[float | None] = field(default_factory=lambda: [None])  # truncation values to score at (null = none); best_metric is read at the first
    best_metric: str = "fid"  # the metric that picks checkpoints/best (one of `metrics`)
    best_direction: str = ""  # min | max ("" = the metric's own: min for fid, kid, intra_fid; max for the rest)
    mode: str = "process"  # process: beside training in its own process (`bigan launch`: a Ray actor) | blocking: inside the loop (single-core machines)
    threads: int = 1  # torch threads of the evaluator process
    seed: int = 0  # seed of the first generated sample (sample i: class i mod K, seed + i)
    cache_dir: str = ""  # real-feature cache ("" = $BIGAN_CACHE_DIR/real-features or ~/.cache/bigan/real-features)

    def validate(self, prefix: str = "eval") -> None:
        _positive(f"{prefix}.every_kimg", self.every_kimg, zero_ok=True)
        _require(self.n >= 4, f"{prefix}.n", self.n, "must be >= 4 (precision/recall use k=3 neighbours)")
        _require(bool(self.metrics), f"{prefix}.metrics", self.metrics, "name at least one metric")
        for m in self.metrics:
            _one_of(f"{prefix}.metrics", m, tuple(EVAL_METRICS))
        _require(len(set(self.metrics)) == len(self.metrics), f"{prefix}.metrics", self.metrics,
                 "lists a metric twice")
        classifier = self.extractor.endswith(".safetensors")
        _require(self.extractor == "inception" or classifier or self.extractor.endswith(".pt"),
                 f"{prefix}.extractor", self.extractor, "must be 'inception', a domain classifier "
                 "file (.safetensors, `bigan eval train-classifier`) or a TorchScript Inception (.pt)")
        _require(classifier or "class_accuracy" not in self.metrics, f"{prefix}.metrics",
                 self.metrics, "class_accuracy needs a domain classifier as eval.extractor")
        _require(self.extractor != "inception" or "is" not in self.metrics, f"{prefix}.metrics",
                 self.metrics, "is (Inception Score) needs logits; the default Inception FID "
                 "network has none: use a classifier or an Inception .pt with a logits output")
        _require(bool(self.psi), f"{prefix}.psi", self.psi, "name at least one value (null = none)")
        for v in self.psi:
            _require(v is None or v > 0, f"{prefix}.psi", self.psi, "each value must be > 0 or null")
        _require(len(set(self.psi)) == len(self.psi), f"{prefix}.psi", self.psi, "lists a value twice")
        _require(self.best_metric in self.metrics, f"{prefix}.best_metric", self.best_metric,
                 f"must be one of eval.metrics ({', '.join(self.metrics)})")
        _one_of(f"{prefix}.best_direction", self.best_direction, ("", "min", "max"))
        natural = EVAL_METRICS.get(self.best_metric)
        _require(self.best_direction in ("", natural), f"{prefix}.best_direction",
                 self.best_direction, f"{self.best_metric} is better when "
                 f"{'lower' if natural == 'min' else 'higher'}: use {natural} (or leave it empty)")
        _one_of(f"{prefix}.mode", self.mode, EVAL_MODES)
        _positive(f"{prefix}.threads", self.threads)

    @property
    def direction(self) -> str:
        """min or max: which way `best_metric` improves."""
        return self.best_direction or EVAL_METRICS[self.best_metric]

    def check_against(self, model: ModelConfig, data: DataConfig, prefix: str = "eval") -> None:
        """Cross-section checks, only when evaluation is on: real shards to compare with, an
        image model, classes for the per-class metrics."""
        if not self.every_kimg:
            return
        _require(bool(self.data) or data.source == "shards", f"{prefix}.data", self.data,
                 f"evaluation compares with real shards: set eval.data (`bigan data pack`), or "
                 f"train on shards (data.source={data.source!r} is in memory)")
        _require(model.arch != "mlp", f"{prefix}.every_kimg", self.every_kimg,
                 "image metrics need an image model; the 2-D mlp is scored by bench/quality.py")
        for m in ("class_accuracy", "intra_fid"):
            _require(m not in self.metrics or model.num_classes > 1, f"{prefix}.metrics",
                     self.metrics, f"{m} needs a class-conditional model (model.num_classes > 1)")

    def real_shards(self, data: DataConfig) -> str:
        """The shard directory the evaluation compares with."""
        return self.data or data.path


@dataclass
class ProgressiveConfig:
    """ProGAN's phase schedule (Karras et al. 2018, Sec. 2 and App. A.1), used when model.arch is
    progan. Phases, in images shown to D: stabilise at model.start_resolution for `stab_nimg`,
    then for every doubling up to model.resolution fade the new block in over `fade_nimg` and
    stabilise for `stab_nimg`; the last phase runs until train.steps ends. The resolutions live in
    `model` (they decide which layers exist). `bigan.train.schedule` turns this into phases."""

    fade_nimg: int = 600_000  # real images per fade-in phase (alpha 0 -> 1; 0 = no fade-in)
    stab_nimg: int = 600_000  # real images per stabilisation phase (alpha = 1)
    batch_size: dict[int, int] = field(default_factory=dict)  # resolution -> global batch (missing: train.batch_size)
    g_lr: dict[int, float] = field(default_factory=dict)  # resolution -> G learning rate (missing: optim.g_lr)
    d_lr: dict[int, float] = field(default_factory=dict)  # resolution -> D learning rate (missing: optim.d_lr)
    reset_optimizer: bool = True  # clear Adam moments at every phase boundary (official reset_opt_for_new_lod)

    def validate(self, prefix: str = "progressive") -> None:
        _positive(f"{prefix}.fade_nimg", self.fade_nimg, zero_ok=True)
        _positive(f"{prefix}.stab_nimg", self.stab_nimg)
        for name in ("batch_size", "g_lr", "d_lr"):
            for res, value in getattr(self, name).items():
                _one_of(f"{prefix}.{name}.{res} (resolution)", res, PROGAN_RESOLUTIONS)
                _positive(f"{prefix}.{name}.{res}", value)

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


def comma_list(text: str) -> list[str]:
    """The names in a comma list ("color, translation"), blanks dropped."""
    return [o.strip() for o in text.split(",") if o.strip()]


@functools.lru_cache(maxsize=64)  # called twice per training step with the same string
def ada_ops(pipeline: str) -> frozenset[str]:
    """The transforms of `augment.ada_pipeline`: a named pipeline or a comma list of transforms."""
    return frozenset(ADA_PIPELINES[pipeline] if pipeline in ADA_PIPELINES else comma_list(pipeline))


def _distinct_names(field: str, text: str, known: tuple[str, ...], named: tuple[str, ...] = ()) -> None:
    """`text` is one of `named` or a comma list of distinct names from `known`."""
    ops = comma_list(text)
    either = f"one of {', '.join(named)} or " if named else ""
    _require(text in named or (bool(ops) and set(ops) <= set(known) and len(set(ops)) == len(ops)),
             field, text, f"must be {either}a comma list of distinct {', '.join(known)}")


@dataclass
class AugmentConfig:
    """Augmentation of every image D sees, real and fake, in D and G updates (`bigan/augment.py`),
    and LeCam's regularization of D (Tseng et al. 2021), both for training on little data."""

    kind: str = "none"  # none | diffaugment (Zhao et al. 2020) | ada (adaptive, Karras et al. 2020)
    policy: str = "color,translation,cutout"  # diffaugment: comma list of color | translation | cutout
    # ada: which transforms: bgc (all, the paper's default) | blit | geom | color | bg, or a comma
    # list of xflip, rotate90, xint, scale, rotate, aniso, xfrac, brightness, contrast, lumaflip,
    # hue, saturation. Data whose classes change under flips or rotations (digits: 6 and 9)
    # should leave those out: at p < 1 they cannot leak in theory, but they cost G's learning time.
    ada_pipeline: str = "bgc"
    ada_target: float = 0.6  # ada: target of the overfitting heuristic r_t = E[sign(D(real))]
    ada_interval: int = 4  # ada: D updates between adjustments of p
    ada_kimg: float = 500.0  # ada: thousands of real images over which p can move by 1 (paper: 500)
    ada_p_max: float = 0.8  # ada: cap on p, < 1 so the augmentations cannot leak into G (stylegan2-ada-pytorch #175)
    lecam_weight: float = 0.0  # LeCam lambda (0 = off; Tseng et al. use 0.3 with the hinge loss)
    lecam_decay: float = 0.99  # LeCam: decay of the EMAs of D(real) and D(fake) per D update (lecam-gan utils.ema_losses)
    lecam_start: int = 1000  # LeCam: before this many D updates the EMAs equal the current means (decay 0)

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
        _positive(f"{prefix}.lecam_start", self.lecam_start, zero_ok=True)


@dataclass
class ScheduleConfig:
    """A config value moved over training by images shown (kimg): `start` until `start_kimg`,
    then along a line or a half cosine to `end` at `end_kimg`, then `end` (R3GAN ramps its lr,
    beta2, gamma and EMA this way). Applied every step by `bigan/train/curriculum.py`."""

    start: float = 0.0  # value up to start_kimg
    end: float = 0.0  # value from end_kimg on
    kind: str = "cosine"  # linear | cosine
    start_kimg: float = 0.0  # thousands of real images where the ramp begins
    end_kimg: float = 1.0  # ... and where it ends

    def validate(self, prefix: str) -> None:
        _one_of(f"{prefix}.kind", self.kind, SCHEDULE_KINDS)
        _positive(f"{prefix}.start_kimg", self.start_kimg, zero_ok=True)
        _require(self.end_kimg > self.start_kimg, f"{prefix}.end_kimg", self.end_kimg,
                 f"must be > start_kimg ({self.start_kimg})")

    def value(self, kimg: float) -> float:
        """The value at `kimg`: start + (end - start) * w(t), t = (kimg - start_kimg) /
        (end_kimg - start_kimg) clamped to [0, 1], w(t) = t (linear) or (1 - cos(pi t)) / 2."""
        t = min(1.0, max(0.0, (kimg - self.start_kimg) / (self.end_kimg - self.start_kimg)))
        w = t if self.kind == "linear" else 0.5 * (1.0 - math.cos(math.pi * t))
        return self.start + (self.end - self.start) * w


def _dotted_target(cfg: Any, dotted: str) -> tuple[Any, str, int | None]:
    """(section object, field, list index or None) named by `optim.g_lr` or `optim.betas.1`;
    ConfigError unless it names a float of a section in SCHEDULABLE."""
    parts = dotted.split(".")
    where = f"schedules key {dotted!r}"
    if len(parts) not in (2, 3) or parts[0] not in SCHEDULABLE:
        raise ConfigError(f"{where} is invalid: name a number of the {', '.join(SCHEDULABLE)} "
                          "sections, as section.field (or section.field.index for a list)")
    section = getattr(cfg, parts[0])
    hints = typing.get_type_hints(type(section))
    if parts[1] not in hints:
        close = difflib.get_close_matches(parts[1], list(hints), n=1)
        raise ConfigError(f"{where}: {parts[0]} has no field {parts[1]!r}"
                          + (f" (did you mean {close[0]!r}?)" if close else ""))
    typ = hints[parts[1]]
    if len(parts) == 3:
        ok = typing.get_origin(typ) is list and typing.get_args(typ)[0] is float \
            and parts[2].isdigit() and int(parts[2]) < len(getattr(section, parts[1]))
        _require(ok, "schedules", dotted, f"{parts[0]}.{parts[1]} has no float entry {parts[2]}")
        return section, parts[1], int(parts[2])
    _require(typ is float, "schedules", dotted, f"{dotted} is not a float field")
    return section, parts[1], None


def with_scheduled(cfg: "Config", kimg: float) -> "Config":
    """A copy of `cfg` whose scheduled values are those at `kimg` (cfg itself when none are)."""
    if not cfg.schedules:
        return cfg
    out = dataclasses.replace(cfg, **{name: copy.deepcopy(getattr(cfg, name)) for name in SCHEDULABLE})
    for dotted, sched in cfg.schedules.items():
        section, name, index = _dotted_target(out, dotted)
        if index is None:
            setattr(section, name, sched.value(kimg))
        else:
            getattr(section, name)[index] = sched.value(kimg)
    return out


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    schedules: dict[str, ScheduleConfig] = field(default_factory=dict)  # dotted float (optim.g_lr, optim.betas.1, loss.penalty_weight, ema.decay, augment.lecam_weight) -> its schedule over kimg

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "schedules":
                getattr(self, f.name).validate(f.name)
        for dotted, sched in self.schedules.items():
            sched.validate(f"schedules.{dotted}")
            for end in ("start", "end"):  # every value a schedule takes must be a valid setting
                probe = with_scheduled(dataclasses.replace(self, schedules={dotted: sched}),
                                       sched.start_kimg if end == "start" else sched.end_kimg)
                try:
                    getattr(probe, dotted.split(".")[0]).validate(dotted.split(".")[0])
                except ConfigError as exc:
                    raise ConfigError(f"schedules.{dotted}.{end}: {exc}") from None
        gaussian = self.data.source.startswith("gaussian")
        _require(gaussian == (self.model.arch == "mlp"), "model.arch", self.model.arch,
                 f"data.source={self.data.source!r} needs "
                 + ("arch 'mlp'" if gaussian
                    else "an image arch (biggan, biggan-deep, dcgan or progan)"))
        if self.model.arch == "progan":
            self.progressive.check_against(self.model, self.train)
        self.eval.check_against(self.model, self.data)
        if self.data.source == "digits":
            _require(self.model.num_classes in (1, 10), "model.num_classes",
                     self.model.num_classes, "the digits set has 10 classes (or 1: unconditional)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- loading ------------------------------------------------------------------------------------

# Training runs in float32: a float field outside its range would become inf (or 0) in a tensor
# and fail mid-run, far from the setting that caused it.
_FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(float32).max
_FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32; below it precision is lost
_INT64 = 1 << 63


def _float32(name: str, value: float) -> float:
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX or 0 < abs(value) < _FLOAT32_TINY:
        raise ConfigError(f"{name}={value!r} is invalid: must be a finite number that float32 "
                          f"holds (0, or 1.2e-38 <= |value| <= 3.4e38), as training computes "
                          f"in float32")
    return value


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Check a YAML value against a dataclass field type; ints are accepted for floats."""
    origin = typing.get_origin(typ)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r} is invalid: must be a mapping")
        key_type, value_type = typing.get_args(typ)
        out = {}
        for key, item in value.items():
            if key_type is int and isinstance(key, str) and key.strip().isdigit():
                key = int(key)  # a dotted override (`progressive.batch_size.64=32`) gives "64"
            out[_coerce(f"{name} key {key!r}", key, key_type)] = _coerce(f"{name}.{key}", item,
                                                                        value_type)
        return out
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return _from_dict(typ, value, name)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} is invalid: must be a list")
        (item,) = typing.get_args(typ)[:1]
        return [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(typ):
            if option is type(None) and value is None:
                return None
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return _float32(name, float(value))
    if typ is float and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-3` (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if typ is float and isinstance(value, float):
        return _float32(name, value)
    if typ is int and isinstance(value, int) and not isinstance(value, bool) \
            and not -_INT64 <= value < _INT64:
        raise ConfigError(f"{name}={value!r} is invalid: must fit in a 64-bit integer")
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is invalid: must be true or false")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name}={value!r} is invalid: must be an integer")
    if typ in (float, str) and not isinstance(value, typ):
        raise ConfigError(f"{name}={value!r} is invalid: must be a {typ.__name__}")
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}{hint}; known: {', '.join(names)}")
        kwargs[key] = _coerce(dotted, value, hints[key])
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["model.ch=64", "train.precision=bf16"]` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = _from_dict(Config, data)
    cfg.validate()
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    data = _merge(data, parse_overrides(overrides or []))
    return config_from_dict(data)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
