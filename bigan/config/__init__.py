"""Typed run configuration: dataclasses loaded from YAML with dotted command-line overrides.

One schema serves the YAML file, the CLI (`model.ch=64`) and Python (`ModelConfig(ch=64)`).
Every field is validated when the config is built, so a bad value fails at load time with the
field's dotted name and its allowed range, never mid-run. Unknown keys are errors.
This package imports nothing heavy: the server and the CLI's `--help` use it without torch.

The package, bottom up (each module imports only those above it in this list):
- `vocabulary.py`: every name a setting may take, BigGAN's width tables, `ConfigError` and the
  small checks (`_require`, `_one_of`, `_positive`) the sections validate with;
- `loading.py`: typed YAML, generic: nested dataclasses from a mapping, dotted overrides, the
  deep merge; it knows no GAN;
- `units.py`: the one unit of training time (kimg in the config, exact image counts in the
  code) and the check that every cadence and start is a whole number of steps;
- `schedules.py`: value schedules over kimg (`schedules:`) and `with_scheduled`;
- the sections by concern: `training.py` (loss, optim, ema, train, recovery, finetune, speed, augment), `model.py`
  (model, progressive), `data_eval.py` (data, eval);
- `migration.py`: the fields of older configs (steps, D updates, images) rewritten to kimg;
- here: `Config`, the checks across sections, and loading and dumping a whole config. Every name
  importers use is re-exported here, so `from bigan.config import X` is the one way in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bigan.config.data_eval import DataConfig, EvalConfig
from bigan.config.loading import deep_merge, from_dict, parse_overrides, read_tree
from bigan.config.migration import mark, migrate
from bigan.config.model import ModelConfig, ProgressiveConfig
from bigan.config.schedules import ScheduleConfig, with_scheduled
from bigan.config.training import (
    AugmentConfig,
    EMAConfig,
    FinetuneConfig,
    LossConfig,
    OptimConfig,
    RecoveryConfig,
    SpeedConfig,
    TrainConfig,
)
from bigan.config.units import check_whole_steps, crossed, fit_defaults, nimg
from bigan.config.vocabulary import (
    ADA_COLOR,
    ADA_GEOMETRY,
    ADA_PIPELINES,
    ARCHS,
    AUGMENTS,
    BIGGAN_D_WIDTHS,
    BIGGAN_G_WIDTHS,
    BIGGAN_RESOLUTIONS,
    D_ARCHS,
    DATA_SOURCES,
    DCGAN_RESOLUTIONS,
    DIFFAUGMENT_OPS,
    EVAL_METRICS,
    EVAL_MODES,
    LOSSES,
    LR_DECAYS,
    MEMORY_FORMATS,
    NEW_CLASS_INITS,
    OPTIMIZER_IMPLS,
    PENALTIES,
    PRECISIONS,
    PROGAN_RESOLUTIONS,
    PROJECTED_G_ARCHS,
    RESAMPLING,
    SCHEDULABLE,
    SCHEDULE_KINDS,
    STRATEGIES,
    TRACKERS,
    UNREADABLE_SHARD_ACTIONS,
    ConfigError,
    _require,
    ada_ops,
    biggan_g_blocks,
    comma_list,
)

__all__ = [
    # the whole config and its sections
    "Config", "ModelConfig", "ProgressiveConfig", "DataConfig", "EvalConfig", "LossConfig",
    "OptimConfig", "EMAConfig", "TrainConfig", "RecoveryConfig", "FinetuneConfig", "SpeedConfig", "AugmentConfig", "ScheduleConfig",
    # loading, dumping, scheduling
    "ConfigError", "config_from_dict", "load_config", "dump_config", "parse_overrides",
    "deep_merge", "with_scheduled", "nimg", "crossed",
    # vocabularies and tables
    "ARCHS", "D_ARCHS", "PROJECTED_G_ARCHS", "LOSSES", "PENALTIES", "AUGMENTS", "DIFFAUGMENT_OPS",
    "ADA_GEOMETRY", "ADA_COLOR", "ADA_PIPELINES", "SCHEDULE_KINDS", "SCHEDULABLE", "PRECISIONS",
    "STRATEGIES", "DATA_SOURCES", "UNREADABLE_SHARD_ACTIONS", "PROGAN_RESOLUTIONS",
    "DCGAN_RESOLUTIONS", "BIGGAN_G_WIDTHS", "BIGGAN_D_WIDTHS", "BIGGAN_RESOLUTIONS", "LR_DECAYS",
    "TRACKERS", "EVAL_METRICS", "EVAL_MODES", "MEMORY_FORMATS", "NEW_CLASS_INITS", "RESAMPLING", "OPTIMIZER_IMPLS",
    "biggan_g_blocks", "comma_list", "ada_ops",
]


@dataclass
class Config:
    """A whole run: one section per concern, each a dataclass of its own module in this package.
    `validate` checks every section alone, every value a schedule takes, then what one section
    requires of another."""

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
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)  # off by default (bigan/train/recovery.py)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # start from other weights, other classes (bigan/train/finetune.py)
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
        if self.loss.member_weights:
            members = self.model.d_arch.count("+") + 1
            _require(members > 1 and len(self.loss.member_weights) == members, "loss.member_weights",
                     self.loss.member_weights, f"weighs the members of an ensemble D, but model.d_arch="
                     f"{self.model.d_arch!r} has {members}" + ("" if members > 1 else " (empty = equal)"))
        if self.model.arch == "progan":
            self.progressive.check_against(self.model, self.train)
        self.eval.check_against(self.model, self.data)
        fit_defaults(self)  # defaults are whole steps at the default batch only
        check_whole_steps(self)  # every cadence and start fires at the step its kimg names
        if self.recovery.enabled and self.recovery.fid_rise_factor:  # the FID rule needs FIDs
            _require(bool(self.eval.every_kimg) and "fid" in self.eval.metrics,
                     "recovery.fid_rise_factor", self.recovery.fid_rise_factor,
                     "needs evaluations scoring FID (eval.every_kimg > 0 and fid in eval.metrics), "
                     "or 0 = off")
        if self.data.source == "digits":
            _require(self.model.num_classes in (1, 10), "model.num_classes",
                     self.model.num_classes, "the digits set has 10 classes (or 1: unconditional)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(data: dict[str, Any]) -> Config:
    """A validated Config from a mapping; fields of older configs are migrated, with a warning."""
    cfg = from_dict(Config, migrate(data, Config))
    cfg.validate()
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None), apply overrides, validate. Old
    field names are marked in each layer before the merge, so an override wins by either name."""
    return config_from_dict(deep_merge(mark(read_tree(path)), mark(parse_overrides(overrides or []))))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
