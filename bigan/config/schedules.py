"""Value schedules (`schedules:` in a config): a float of the optim, loss, ema or augment section
moved over training by images shown, and `with_scheduled`, the config as it stands at a kimg.

`bigan/train/curriculum.py` applies them every step; `Config.validate` checks that every value a
schedule takes is a valid setting of its section. (ProGAN's phases are another thing:
`progressive:` in `bigan/config/model.py`, turned into phases by `bigan/train/phases.py`.)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bigan.config.vocabulary import SCHEDULABLE, SCHEDULE_KINDS, ConfigError, _one_of, _positive, _require

if TYPE_CHECKING:
    from bigan.config import Config


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
