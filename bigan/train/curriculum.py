"""What changes as training goes on, behind one interface the loop calls every step: the batch
size, the learning rates (`optim.lr_decay`), the values under `schedules:` (any float of the
optim, loss, ema and augment sections, by kimg: `ScheduleConfig` in `bigan/config/schedules.py`)
and, for ProGAN, the phase (resolution, fade-in alpha, per-phase batch and lrs; `phases.py`).

`now` is the config in force for the current step, the scheduled values substituted: the loop
reads the loss, EMA and augmentation settings from it, and the lrs and Adam betas are set from it
here (a ProGAN phase's own lrs take the place of optim's; lr decay scales what is in force).

`curriculum(cfg, networks, opt_G, opt_D)` returns a `Fixed` or a `Progressive` one. Everything is
a function of (step, cur_nimg), never of history, so a resume continues the same curve.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from bigan.config import Config, with_scheduled
from bigan.train import lr_decay, phases


class Fixed:
    """One resolution and batch size for the whole run; only the lrs may decay."""

    def __init__(self, cfg: Config, opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer,
                 lr_factor: float = 1.0):
        self.cfg, self.opt_G, self.opt_D = cfg, opt_G, opt_D
        self.now = cfg
        self.lr_factor = lr_factor  # a recovery's cut of both lrs (`recovery.py`), on whatever is in force

    def begin_step(self, step: int, cur_nimg: int) -> int:
        """Set this step's config in force, lrs and betas; return its global batch size."""
        self.now = with_scheduled(self.cfg, cur_nimg / 1000)
        self._decay(step, self.now.optim.g_lr, self.now.optim.d_lr)
        return self.cfg.train.batch_size

    def _decay(self, step: int, g_lr: float, d_lr: float) -> None:
        o = self.now.optim  # a function of (step, cur_nimg): resumes follow the same curve
        scheduled = [k for k in self.cfg.schedules if k.startswith("optim.")]
        if o.lr_decay != "none" or scheduled or self.lr_factor != 1:
            scale = self.lr_factor * lr_decay.lr_scale(step, self.cfg.train.steps, o.lr_decay,
                                                       self._decay_begin())
            lr_decay.set_lrs(self.opt_G, self.opt_D, scale * g_lr, scale * d_lr)
        if any(k.startswith("optim.betas") for k in scheduled):
            for opt in (self.opt_G, self.opt_D):
                for group in opt.param_groups:
                    group["betas"] = tuple(o.betas)

    def _decay_begin(self) -> float:
        """The step after which the lrs decay: the one reaching optim.lr_decay_start_kimg (a
        whole number of steps, `bigan/config/units.py`), or half of train.steps."""
        start = self.cfg.optim.lr_decay_start_nimg
        if start is None:
            return 0.5 * self.cfg.train.steps
        return phases.steps_to(start, self.cfg)

    def prepare_reals(self, real: Tensor) -> Tensor:
        return real

    def grid_name(self, prev_nimg: int, cur_nimg: int, last: bool) -> str | None:
        """The file name of a grid due after this step, or None (only ProGAN draws per phase)."""
        return None

    def end_step(self, prev_nimg: int, cur_nimg: int) -> None:
        """Move on after a step that took cur_nimg from prev_nimg."""

    def manifest(self) -> dict:
        """What a checkpoint records of the curriculum."""
        return {}

    def metrics(self) -> dict[str, float]:
        return {}

    def ema_age_nimg(self, cur_nimg: int) -> int:
        """Images since G's newest weights began (`ema.rampup` caps the half-life by it)."""
        return cur_nimg


class Progressive(Fixed):
    """ProGAN: resolution, alpha, batch and lrs follow cur_nimg (`phases.py`)."""

    def __init__(self, cfg: Config, networks: Iterable[nn.Module], opt_G: torch.optim.Optimizer,
                 opt_D: torch.optim.Optimizer, cur_nimg: int, lr_factor: float = 1.0):
        super().__init__(cfg, opt_G, opt_D, lr_factor)
        self.networks = list(networks)
        self.ph = phases.phase_at(cur_nimg, cfg)

    def begin_step(self, step: int, cur_nimg: int) -> int:
        self.now = with_scheduled(self.cfg, cur_nimg / 1000)
        self.ph = phases.phase_at(cur_nimg, self.now)
        phases.apply_phase(self.ph, self.networks, self.opt_G, self.opt_D)
        self._decay(step, self.ph.g_lr, self.ph.d_lr)
        return self.ph.batch_size

    def prepare_reals(self, real: Tensor) -> Tensor:
        return phases.phase_reals(real, self.ph.resolution, self.ph.alpha)

    def grid_name(self, prev_nimg: int, cur_nimg: int, last: bool) -> str | None:
        """A grid per phase, at its end (and at the end of training), named after the phase."""
        if not (last or phases.entered_new_phase(prev_nimg, cur_nimg, self.cfg)):
            return None
        kind = "fade" if self.ph.phase.fading else "stable"
        return f"phase-{self.ph.index:02d}-{self.ph.resolution}px-{kind}.png"

    def end_step(self, prev_nimg: int, cur_nimg: int) -> None:
        if phases.entered_new_phase(prev_nimg, cur_nimg, self.cfg):
            if self.cfg.progressive.reset_optimizer:
                phases.reset_optimizer_state(self.opt_G, self.opt_D)
            # checkpoints and grids from here on show the phase the next step trains
            self.ph = phases.phase_at(cur_nimg, with_scheduled(self.cfg, cur_nimg / 1000))
            phases.apply_phase(self.ph, self.networks, self.opt_G, self.opt_D)

    def manifest(self) -> dict:
        return {"phase": {"index": self.ph.index, "resolution": self.ph.resolution,
                          "alpha": self.ph.alpha}}

    def metrics(self) -> dict[str, float]:
        return {"progress/resolution": float(self.ph.resolution), "progress/alpha": self.ph.alpha}

    def ema_age_nimg(self, cur_nimg: int) -> int:
        """Images since the newest block's fade-in began (its layers were at their
        initialization before): the start of this phase when fading, of the fade before it
        when stabilising, 0 in the first phase."""
        ph = self.ph.phase
        if ph.index == 0:
            return cur_nimg
        began = ph.start_nimg if ph.fading else ph.start_nimg - self.cfg.progressive.fade_nimg
        return cur_nimg - began


def curriculum(cfg: Config, networks: Iterable[nn.Module], opt_G: torch.optim.Optimizer,
               opt_D: torch.optim.Optimizer, cur_nimg: int, lr_factor: float = 1.0) -> Fixed:
    """The curriculum of `cfg`: Progressive for ProGAN, Fixed otherwise; `lr_factor` scales both
    lrs (a recovery's remedy)."""
    if cfg.model.arch == "progan":
        return Progressive(cfg, networks, opt_G, opt_D, cur_nimg, lr_factor)
    return Fixed(cfg, opt_G, opt_D, lr_factor)
