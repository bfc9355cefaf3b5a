"""ProGAN's phases: which resolution, fade-in alpha, batch size and learning rates apply after
`cur_nimg` real images, as pure functions of (cur_nimg, config); plus the two things a trainer
does with a phase (`apply_phase`, `reset_optimizer_state`) and the real-image cross-fade
(`phase_reals`). (The value ramps of the config's `schedules:` are another thing:
`with_scheduled` in bigan.config, applied by `curriculum.py`.) Follows `TrainingSchedule` and `process_reals` of the official code
(tkarras/progressive_growing_of_gans, `train.py`); Karras et al. 2018, Sec. 2 and App. A.1.

Phases, counted in images shown to D (the trainer's cur_nimg):

    0: stabilise at start_resolution          [0, stab)
    1: fade in 2 * start_resolution           [stab, stab + fade)          alpha 0 -> 1
    2: stabilise at 2 * start_resolution      [stab + fade, 2 stab + fade)
    ...
    last: stabilise at model.resolution       until training ends

Batch size and learning rates are those of the phase's resolution (`progressive.batch_size`,
`.g_lr`, `.d_lr`, falling back to train.batch_size, optim.g_lr, optim.d_lr); a fade-in phase
already uses the new resolution's values, as the official schedule does.

The trainer, once per iteration (G, D unwrapped from DDP; G_ema is the EMA copy):

    ph = phase_at(cur_nimg, cfg)
    apply_phase(ph, [G, D, G_ema], opt_G, opt_D)       # phase + alpha on all three, lrs
    reals = phase_reals(reals, ph.resolution, ph.alpha) # [N, C, R, R] -> [N, C, r, r], faded
    ... D and G updates on batches of ph.batch_size (global) ...
    prev, cur_nimg = cur_nimg, cur_nimg + ph.batch_size * d_steps
    if cfg.progressive.reset_optimizer and entered_new_phase(prev, cur_nimg, cfg):
        reset_optimizer_state(opt_G, opt_D)             # before any checkpoint of this step

Deciding the reset from (prev, cur_nimg) rather than from remembered state keeps a resumed run
identical to an uninterrupted one: the checkpoint written after the boundary step already holds
the cleared moments. Checkpoints need no phase of their own (it is `phase_at(cur_nimg)`, and the
networks' state dicts carry it too), but writing `ph.index` and `ph.alpha` into the manifest
makes runs easy to inspect. A grid per phase: sample when `entered_new_phase` is true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigan.config import PROGAN_RESOLUTIONS, Config
from bigan.train.lr_decay import set_lrs


@dataclass(frozen=True)
class Phase:
    index: int            # position in the schedule, 0 = stabilising at start_resolution
    resolution: int       # G's output and D's input side during the phase
    fading: bool          # True: the newest block fades in (alpha 0 -> 1); False: alpha = 1
    start_nimg: int       # cur_nimg at which the phase begins
    end_nimg: int | None  # cur_nimg at which the next one begins (None: the last phase)


@dataclass(frozen=True)
class PhaseState:
    """Everything the trainer needs at one cur_nimg."""

    phase: Phase
    alpha: float     # fade-in weight in [0, 1]: (cur_nimg - start) / fade_nimg, 1 when stabilising
    batch_size: int  # global batch of every D and G step
    g_lr: float      # generator learning rate
    d_lr: float      # discriminator learning rate

    @property
    def index(self) -> int:
        return self.phase.index

    @property
    def resolution(self) -> int:
        return self.phase.resolution


def all_phases(cfg: Config) -> list[Phase]:
    """The schedule's phases in order (fade-ins are left out when progressive.fade_kimg == 0)."""
    m, p = cfg.model, cfg.progressive
    resolutions = [r for r in PROGAN_RESOLUTIONS if m.start_resolution <= r <= m.resolution]
    out, nimg = [], 0
    for i, res in enumerate(resolutions):
        steps = [(False, p.stab_nimg)] if i == 0 else [(True, p.fade_nimg), (False, p.stab_nimg)]
        for fading, length in steps:
            if length == 0:
                continue
            last = res == resolutions[-1] and not fading
            out.append(Phase(len(out), res, fading, nimg, None if last else nimg + length))
            nimg += length
    return out


def phase_boundaries(cfg: Config) -> list[int]:
    """cur_nimg at which each phase after the first begins."""
    return [ph.start_nimg for ph in all_phases(cfg)[1:]]


def phase_at(cur_nimg: int, cfg: Config) -> PhaseState:
    """The phase, alpha, batch size and learning rates after `cur_nimg` real images."""
    if cur_nimg < 0:
        raise ValueError(f"cur_nimg={cur_nimg} must be >= 0")
    phase = next(ph for ph in all_phases(cfg) if ph.end_nimg is None or cur_nimg < ph.end_nimg)
    alpha = 1.0
    if phase.fading:
        alpha = (cur_nimg - phase.start_nimg) / cfg.progressive.fade_nimg
    p, res = cfg.progressive, phase.resolution
    return PhaseState(phase=phase, alpha=alpha,
                      batch_size=p.batch_size.get(res, cfg.train.batch_size),
                      g_lr=p.g_lr.get(res, cfg.optim.g_lr), d_lr=p.d_lr.get(res, cfg.optim.d_lr))


def steps_to(nimg: int, cfg: Config) -> int:
    """G steps until cur_nimg reaches `nimg`: nimg / (batch x D steps) at one batch size; for
    ProGAN, summed over the phases, each at its own batch (a step crossing into a phase is the
    last of the one it began in)."""
    if cfg.model.arch != "progan":
        return -(-nimg // (cfg.train.batch_size * cfg.optim.d_steps))
    steps, cur = 0, 0
    while cur < nimg:
        ph = phase_at(cur, cfg)
        per = ph.batch_size * cfg.optim.d_steps
        end = nimg if ph.phase.end_nimg is None else min(nimg, ph.phase.end_nimg)
        n = -(-(end - cur) // per)
        steps, cur = steps + n, cur + n * per
    return steps


def entered_new_phase(prev_nimg: int, cur_nimg: int, cfg: Config) -> bool:
    """True when the images of one step, prev_nimg -> cur_nimg, crossed a phase boundary."""
    return phase_at(prev_nimg, cfg).index != phase_at(cur_nimg, cfg).index


# --- applying a phase (side effects on networks and optimizers) -----------------------------------

def apply_phase(state: PhaseState, networks: Iterable[nn.Module],
                opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer) -> None:
    """Move every network (G, D and the EMA copy, unwrapped) to the state's resolution and alpha,
    and set the phase's learning rates on every parameter group. Idempotent: call every step."""
    for net in networks:
        net.set_phase(state.resolution, state.alpha)
    set_lrs(opt_G, opt_D, state.g_lr, state.d_lr)


def reset_optimizer_state(*optimizers: torch.optim.Optimizer) -> None:
    """Forget Adam's moments and step counts (the official `reset_opt_for_new_lod`): the next
    step of each parameter starts from fresh, bias-corrected moments. Works through Accelerate's
    optimizer wrapper; DeepSpeed ZeRO keeps its own partitioned state and is not covered."""
    for opt in optimizers:
        opt.state.clear()


# --- reals ----------------------------------------------------------------------------------------

def phase_reals(x: Tensor, resolution: int, alpha: float) -> Tensor:
    """Real images as D sees them in a phase (official `process_reals`): box-downscale x
    [N, C, S, S] (S a power-of-two multiple of `resolution`) to [N, C, r, r], then during a
    fade-in cross-fade with their own 2x-coarser version,

        x_r <- lerp(up2(avgpool2(x_r)), x_r, alpha),

    which is what G's output is at that alpha: the new detail appears at the same pace in both.
    """
    side = x.shape[-1]
    if x.shape[-2] != side or side % resolution or (side // resolution) & (side // resolution - 1):
        raise ValueError(f"reals of shape {list(x.shape)} cannot be box-downscaled to "
                         f"{resolution}x{resolution}: the side must be a power-of-two multiple")
    if side != resolution:
        x = F.avg_pool2d(x, side // resolution)
    if alpha < 1.0:
        coarse = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest")
        x = torch.lerp(coarse, x, float(alpha))
    return x
