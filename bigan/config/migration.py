"""Configs written before training time had one unit (`bigan/config/units.py`): their fields are
rewritten to the kimg fields, each with a FutureWarning naming the old field, the new one and
the value it became, so `bigan train OLD.yaml`, an override `train.log_every=10` and the config.yaml of
an old run directory or checkpoint manifest (resume, export, serving) keep working.

Rewriting rather than refusing, as Lightning upgrades old checkpoints on load
(`lightning.pytorch.utilities.migration`): a run directory cannot be edited by its user the way a
YAML file can, and a resume that refuses its own checkpoint's config loses the run. Where no exact
rewrite exists (a fraction of train.steps for ProGAN, whose steps change size by phase) the
config is refused with one line saying what to write instead. FutureWarning, not
DeprecationWarning, because Python shows it to the users who run the command (the warnings docs:
"deprecated features when those warnings are intended for end users").

A step count becomes images at the run's batch: steps x train.batch_size x optim.d_steps (G
steps), or x train.batch_size (D updates), so a config whose values are whole steps trains
exactly as before (tests/test_config_units.py). ProGAN's step-counted cadences, whose steps
differ by phase, are rounded up to a whole number of steps of every phase, and the warning says so.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from bigan.config.loading import from_dict
from bigan.config.units import batch_sizes
from bigan.config.vocabulary import ConfigError

# old dotted field -> (new dotted field, what the old value counted)
RENAMED = {
    "train.log_every": ("train.log_every_kimg", "steps"),
    "train.sample_every": ("train.sample_every_kimg", "steps"),
    "train.ckpt_every": ("train.ckpt_every_kimg", "steps"),
    "ema.start_step": ("ema.start_kimg", "steps"),
    "augment.lecam_start": ("augment.lecam_start_kimg", "d_updates"),
    "optim.lr_decay_start": ("optim.lr_decay_start_kimg", "fraction"),
    "progressive.fade_nimg": ("progressive.fade_kimg", "nimg"),
    "progressive.stab_nimg": ("progressive.stab_kimg", "nimg"),
}


@dataclass(frozen=True)
class Old:
    """An old field's value, standing under its new name until the batch it converts at is known."""

    field: str  # the old dotted name
    value: Any


def mark(tree: dict[str, Any]) -> dict[str, Any]:
    """`tree` with every old field moved under its new name as an `Old`, so that when a file and
    its overrides are merged the later one wins whichever name each used (`train.ckpt_every=250`
    over a preset's `ckpt_every_kimg`); ConfigError when one mapping sets both names."""
    out = tree
    for old, (new, _) in RENAMED.items():
        section, name = old.split(".")
        if not (isinstance(tree.get(section), dict) and name in tree[section]):
            continue
        new_name = new.split(".")[1]
        if new_name in tree[section]:
            raise ConfigError(f"{old} and {new} are both set: keep only {new} ({old} is its old name)")
        if out is tree:
            out = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
        out[section][new_name] = Old(old, out[section].pop(name))
    return out


def migrate(tree: dict[str, Any], config_cls: type) -> dict[str, Any]:
    """`tree` (a config mapping) with every old field of RENAMED, by name or `mark`ed, replaced by
    its kimg value, one FutureWarning each; the tree itself when it has none. `config_cls`
    (Config) reads the batch sizes the conversion needs, the old fields left out."""
    tree = mark(tree)
    found = {new: tree[new.split(".")[0]][new.split(".")[1]] for new, _ in RENAMED.values()
             if isinstance(tree.get(new.split(".")[0]), dict)
             and isinstance(tree[new.split(".")[0]].get(new.split(".")[1]), Old)}
    if not found:
        return tree
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for new in found:
        section, name = new.split(".")
        del out[section][name]
    cfg = from_dict(config_cls, out)  # the batches the old counts are converted at
    for new, old in found.items():
        section, name = new.split(".")
        kimg, note = _convert(old.field, old.value, RENAMED[old.field][1], cfg)
        out[section][name] = kimg
        warnings.warn(f"{old.field} is deprecated: it became {new}: {kimg:g} "
                      f"({_describe(old.value, RENAMED[old.field][1])}{note}); write {new} instead",
                      FutureWarning, stacklevel=3)
    return out


def _describe(value: Any, unit: str) -> str:
    return {"steps": f"{value} G steps", "d_updates": f"{value} D updates",
            "fraction": f"{value} of train.steps", "nimg": f"{value} images"}[unit]


def _number(old: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        what = "a number" if kind is float else "an integer"
        raise ConfigError(f"{old}={value!r} is invalid: must be {what}")
    return value


def _convert(old: str, value: Any, unit: str, cfg: Any) -> tuple[float, str]:
    """(the kimg an old value means at `cfg`'s batch sizes, a note on any rounding)."""
    sizes, d = batch_sizes(cfg), cfg.optim.d_steps
    if unit == "nimg":
        return _number(old, value, int) / 1000, ""
    if unit == "fraction":
        fraction = _number(old, value, float)
        if len(sizes) > 1:
            raise ConfigError(f"{old} (a fraction of train.steps) was replaced by "
                              f"optim.lr_decay_start_kimg, and ProGAN's steps change size by "
                              f"phase: write optim.lr_decay_start_kimg: the kimg where the decay begins")
        step = round(fraction * cfg.train.steps)
        note = "" if step == fraction * cfg.train.steps else f", rounded to step {step}"
        return step * sizes[0] * d / 1000, note
    images, note = count_images(_number(old, value, int), unit, cfg)
    return images / 1000, note


def count_images(count: int, unit: str, cfg: Any) -> tuple[int, str]:
    """(the images `count` G steps (unit "steps") or D updates ("d_updates") show at `cfg`'s
    batch sizes, a note on any rounding): count x train.batch_size (x optim.d_steps for G steps),
    for ProGAN rounded up to a whole number of every phase's steps. The one rule by which a step
    count becomes kimg, for old configs here and for benches that think in steps."""
    sizes, d = batch_sizes(cfg), cfg.optim.d_steps
    per = cfg.train.batch_size * (d if unit == "steps" else 1)
    # max: a batch of 0 is refused naming its field once the config is validated, not here
    grain = max(1, math.lcm(*sizes) * (d if unit == "steps" else 1))
    images = -(-count * per // grain) * grain  # up to a whole number of every phase's steps
    note = "" if images == count * per else \
        f", rounded up to {grain} images, a whole number of every phase's steps"
    return images, note
