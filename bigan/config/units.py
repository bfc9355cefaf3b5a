"""Training time has one unit: real images shown to D, written in thousands (kimg) in the config
and held as an exact integer count of images (nimg) by the code, as StyleGAN and edm2 count it.

Every cadence and every start of the config is a `*_kimg` field: `train.log_every_kimg`,
`sample_every_kimg`, `ckpt_every_kimg`, `eval.every_kimg`, `ema.start_kimg`,
`optim.lr_decay_start_kimg`, `augment.lecam_start_kimg`; so are the lengths and ramps that were
already counted in images (`progressive.fade_kimg`, `stab_kimg`, `schedules:`' `start_kimg`,
`end_kimg`, `augment.ada_kimg`). Images stay meaningful when the batch or the number of workers
changes; a step count does not. Only `train.steps`, the length of the run, stays in G steps (a
resume extends it; `bigan.train` ends there), and so do the intervals of the update rule itself
(`loss.penalty_interval`, `augment.ada_interval`: every N D updates, as in StyleGAN2-ADA).

`nimg` turns kimg into images exactly (2.01 kimg is 2010 images, never 2009.9999999999998);
`check_whole_steps` refuses, at load time, a cadence or start that is not a whole number of
steps at the run's batch size (edm2 asserts the same of its nimg settings), so an event fires
at the step its kimg names, after `fit_defaults` has rounded the defaults (whole steps at the
default batch only) to the run's batch; `crossed` is the one test the trainer asks of a cadence. Older names
are rewritten by `bigan/config/migration.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING

from bigan.config.vocabulary import PROGAN_RESOLUTIONS, ConfigError

if TYPE_CHECKING:
    from bigan.config import Config

log = logging.getLogger(__name__)


def nimg(kimg: float, name: str = "kimg") -> int:
    """`kimg` thousand images as an exact image count; ConfigError naming `name` if it holds a
    fraction of an image. (kimg * 1000 in floating point is off by an ulp for most decimals:
    2.01 * 1000 = 2009.9999999999998, 4.03 * 1000 = 4030.0000000000005.)"""
    count = round(kimg * 1000)
    if abs(kimg * 1000 - count) > 1e-3:  # a float32 round trip moves 2.01 kimg by 1e-5 images
        raise ConfigError(f"{name}={kimg!r} is invalid: must be a whole number of images "
                          f"(kimg with at most 3 decimals)")
    return count


def nimg_property(kimg_field: str) -> property:
    """A read-only property of a config section: its `kimg_field` as an exact image count
    (`nimg`), None where the field is None (an optional start left unset), so the code reads
    `cfg.train.ckpt_every_nimg` where the YAML writes `ckpt_every_kimg`."""
    def exact(section) -> int | None:
        kimg = getattr(section, kimg_field)
        return None if kimg is None else nimg(kimg)
    return property(exact, doc=f"{kimg_field} as an exact number of images")


def crossed(prev_nimg: int, cur_nimg: int, every_nimg: int) -> bool:
    """Whether the step that took the image count from prev_nimg to cur_nimg reached a multiple
    of `every_nimg` (0 = never). With a cadence of whole steps this is the step whose count is
    that multiple; for ProGAN, whose steps change size by phase, the first step at or past it."""
    return bool(every_nimg) and prev_nimg // every_nimg < cur_nimg // every_nimg


def batch_sizes(cfg: Config) -> list[int]:
    """The global batch sizes of the run's steps: train.batch_size, or for ProGAN every phase's."""
    if cfg.model.arch != "progan":
        return [cfg.train.batch_size]
    m, p = cfg.model, cfg.progressive
    return sorted({p.batch_size.get(r, cfg.train.batch_size) for r in PROGAN_RESOLUTIONS
                   if m.start_resolution <= r <= m.resolution})


# The fields checked, with the images of the thing they count in whole numbers of: a G step
# (batch x D steps) or, for LeCam's start, a D update (batch). Schedules and ProGAN's phases are
# not: a ramp is a continuous function of images and a phase is cut by images, as the official
# ProGAN code cuts it, wherever a step lands.
_PER_STEP = ("train.log_every_kimg", "train.sample_every_kimg", "train.ckpt_every_kimg",
             "eval.every_kimg", "ema.start_kimg", "optim.lr_decay_start_kimg")
_PER_D_UPDATE = ("augment.lecam_start_kimg",)


def step_images(cfg: Config) -> tuple[int, str]:
    """(images every step of the run is a divisor of, how that number arises), for messages."""
    d = cfg.optim.d_steps
    sizes = batch_sizes(cfg)
    if len(sizes) == 1:
        return sizes[0] * d, f"train.batch_size {sizes[0]} x optim.d_steps {d}"
    return math.lcm(*sizes) * d, (f"the least common multiple of the phases' batches "
                                  f"{', '.join(map(str, sizes))}, x optim.d_steps {d}")


def _in_effect(cfg: Config, dotted: str) -> bool:
    """False for a start whose feature is off (LeCam without weight, no lr decay): its default
    need not fit a batch it never acts at."""
    if dotted == "augment.lecam_start_kimg":
        return bool(cfg.augment.lecam_weight) or "augment.lecam_weight" in cfg.schedules
    if dotted == "optim.lr_decay_start_kimg":
        return cfg.optim.lr_decay != "none"
    return True


def _fields(cfg: Config):
    """(dotted name, its section object, field name, images it must be a multiple of, how that
    number arises) for every field `check_whole_steps` checks."""
    per_step, why = step_images(cfg)
    sizes = batch_sizes(cfg)
    per_update = math.lcm(*sizes)
    update_why = f"train.batch_size {sizes[0]}" if len(sizes) == 1 else \
        f"the least common multiple of the phases' batches {', '.join(map(str, sizes))}"
    for fields, size, how in ((_PER_STEP, per_step, why), (_PER_D_UPDATE, per_update, update_why)):
        for dotted in fields:
            section, name = dotted.split(".")
            yield dotted, getattr(cfg, section), name, size, how


def fit_defaults(cfg: Config) -> None:
    """Round each cadence left at its default to the nearest whole number of steps (at least
    one), in place, logged: the defaults are whole steps at the default batch only, and a run at
    another batch should not be refused for values its author never wrote. A written value is
    checked as written, except one equal to its default, which is rounded like an unwritten one
    (the loaded config does not carry which keys its YAML set)."""
    for dotted, section, name, size, _ in _fields(cfg):
        kimg = getattr(section, name)
        default = {f.name: f.default for f in dataclasses.fields(section)}.get(name)
        if kimg is None or kimg != default or not _in_effect(cfg, dotted):
            continue
        count = nimg(kimg, dotted)
        if count % size:
            fitted = max(1, round(count / size)) * size / 1000
            setattr(section, name, fitted)
            log.info("%s: the default %g kimg is not a whole number of steps at this batch; "
                     "using %g kimg", dotted, kimg, fitted)


def check_whole_steps(cfg: Config) -> None:
    """ConfigError naming the first cadence or start that is not a whole number of steps (or,
    for LeCam's start, of D updates) at the run's batch size, with the nearest values that are."""
    for dotted, section, name, size, how in _fields(cfg):
        kimg = getattr(section, name)
        if kimg is None or not _in_effect(cfg, dotted):
            continue
        count = nimg(kimg, dotted)
        if count % size:
            unit = "D updates" if dotted in _PER_D_UPDATE else "steps"
            below, above = count // size * size, (count // size + 1) * size
            raise ConfigError(
                f"{dotted}={kimg!r} is invalid: must be a whole number of {unit}, a multiple "
                f"of {size / 1000:g} kimg ({size} images: {how}); nearest: "
                f"{below / 1000:g} or {above / 1000:g}")
    per_step, sizes = step_images(cfg)[0], batch_sizes(cfg)
    start, total = cfg.optim.lr_decay_start_kimg, cfg.train.steps * per_step
    if start is not None and _in_effect(cfg, "optim.lr_decay_start_kimg") and len(sizes) == 1 \
            and nimg(start) >= total:
        raise ConfigError(f"optim.lr_decay_start_kimg={start!r} is invalid: must be < the run's "
                          f"{total / 1000:g} kimg (train.steps x {per_step} images), or null")
