"""The vocabularies of the config (every name a setting may take: losses, penalties, strategies,
data sources, augmentations, metrics...), BigGAN's width tables, `ConfigError` and the small
checks every section's `validate` is written with.

This is the bottom of `bigan.config`: it imports nothing of the package, so the sections, the
schedules and the loader all build on it without a cycle, and the rest of `bigan` imports a
vocabulary from here (through `bigan.config`) instead of writing it a second time.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the dotted field."""


ARCHS = ("biggan", "biggan-deep", "dcgan", "mlp", "progan")
# model.d_arch: D of the arch itself, the projected D (bigan/models/projected.py), which any of
# these image generators can train against, or both side by side (bigan/models/ensemble.py).
D_ARCHS = ("native", "projected", "native+projected")
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
PROGAN_CLASS_CONDS = ("latent", "blocks")  # model.class_cond: where ProGAN's G takes the class
PROGAN_MBSTD_GROUPS = ("batch", "class")  # model.mbstd_groups: which samples ProGAN's minibatch std-dev pools
DCGAN_RESOLUTIONS = (32, 64, 128)
# BigGAN's block tables (BigGAN-PyTorch `G_arch` / `D_arch`), by output resolution. G starts at
# 4x4 with BIGGAN_G_WIDTHS[r][0] * ch channels and block i maps widths [i] -> [i + 1] while
# doubling the side, so G has len(BIGGAN_G_WIDTHS[r]) - 1 blocks; D block i outputs
# BIGGAN_D_WIDTHS[r][i] * d_ch channels.
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
NEW_CLASS_INITS = ("mean", "random")  # finetune.new_classes: a new class's embedding row (bigan/train/finetune.py)
# How the training iteration is executed (bigan/train/speed.py); none changes the math.
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
RESAMPLING = ("auto", "folded", "separate")
OPTIMIZER_IMPLS = ("auto", "for-loop", "foreach", "fused")
D_CALLS = ("auto", "separate")  # how a D update scores real and fake: one call where the math allows | two


def biggan_g_blocks(resolution: int) -> int:
    """G blocks of BigGAN at `resolution` (each doubles the side from 4x4): one fewer than the
    entries of its width table."""
    return len(BIGGAN_G_WIDTHS[resolution]) - 1


def comma_list(text: str) -> list[str]:
    """The names in a comma list ("color, translation"), blanks dropped."""
    return [o.strip() for o in text.split(",") if o.strip()]


def ada_ops(pipeline: str) -> frozenset[str]:
    """The transforms of `augment.ada_pipeline`: a named pipeline or a comma list of transforms."""
    return frozenset(ADA_PIPELINES[pipeline] if pipeline in ADA_PIPELINES else comma_list(pipeline))


# --- the checks `validate` is written with: each raises ConfigError naming the dotted field -----

def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: {allowed}")


def _one_of(name: str, value: Any, choices: tuple) -> None:
    _require(value in choices, name, value, f"must be one of {', '.join(map(str, choices))}")


def _positive(name: str, value: float, zero_ok: bool = False) -> None:
    ok = value >= 0 if zero_ok else value > 0
    _require(ok, name, value, "must be >= 0" if zero_ok else "must be > 0")


def _distinct_names(field: str, text: str, known: tuple[str, ...], named: tuple[str, ...] = ()) -> None:
    """`text` is one of `named` or a comma list of distinct names from `known`."""
    ops = comma_list(text)
    either = f"one of {', '.join(named)} or " if named else ""
    _require(text in named or (bool(ops) and set(ops) <= set(known) and len(set(ops)) == len(ops)),
             field, text, f"must be {either}a comma list of distinct {', '.join(known)}")
