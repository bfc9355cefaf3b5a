"""The training state in and out of checkpoints: what `train()` saves at a checkpoint step and
restores on resume, over the checkpoint format of `bigan.checkpoint`.

A checkpoint holds full (consolidated) weights and optimizer states, so it loads onto any world
size and strategy (2 -> 1, 1 -> 2 processes, ddp -> zero2, ...). Saving is collective: every rank
calls `save` and gets the same path back (or the same CheckpointError). When the ranks share the
checkpoint directory each writes its own part (`checkpoint/sharded.py`); otherwise (node-local
run directories) rank 0 gathers the state and writes it alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigan.checkpoint import sharded
from bigan.checkpoint.durable import check_writable
from bigan.checkpoint.resume import describe, load_resume, nonfinite_entries
from bigan.checkpoint.store import step_dir_name
from bigan.config import Config, ConfigError, config_from_dict, dump_config
from bigan.data.feed import merge_states
from bigan.train import parallel, parallel_state
from bigan.train.optimizers import apply_settings, changed_settings
from bigan.train.parallel import Prepared
from bigan.train.step import StepState
from bigan.train.run_log import DIVERGENCE_ADVICE, TrainingDiverged

log = logging.getLogger(__name__)


@dataclass
class ResumePoint:
    """Where `train()` (re)starts: step 0 of a fresh run, or what a checkpoint recorded. The
    data's own place is `data_state`, the feed's `state()` as saved (a streamed feed's holds a
    `bigan.data.position.LoaderPosition`)."""
    step: int = 0  # G steps completed
    cur_nimg: int = 0  # real images shown to D so far
    step_state: StepState = field(default_factory=StepState)  # D updates, ADA's p, LeCam's EMAs
    data_state: Any = None  # the loader's exactly-once position (bigan.data.position)
    checkpoint: Path | None = None  # the checkpoint resumed from


class TrainCheckpoints:
    """Saving and restoring `train()`'s state under `root` for rank `rank` of `world`."""

    def __init__(self, cfg: Config, root: Path, p: Prepared, G_ema: nn.Module, rank: int,
                 world: int, strategy: str):
        self.cfg, self.root, self.p, self.G_ema = cfg, root, p, G_ema
        self.rank, self.world, self.strategy = rank, world, strategy
        self.sharded = world > 1 and sharded.shares_directory(root)  # collective
        self.last: Path | None = None  # the newest checkpoint restored or written
        if world > 1 and not self.sharded and rank == 0:
            log.warning("the ranks do not share %s: rank 0 gathers the state and writes each "
                        "checkpoint alone (put train.out_dir on a shared file system to write in "
                        "parallel)", root)

    def restore(self, resume: str | None) -> ResumePoint:
        """Load the checkpoint `resume` names ("auto": the newest valid one; a fresh start when
        there is none, a CheckpointError when all are damaged unless "auto-or-fresh") into the
        models, optimizers and torch RNG; return the position it recorded."""
        c = load_resume(self.root, resume)  # verified, loaded weights_only, finite; or None
        if c is None:
            return ResumePoint()
        path = c.path
        _check_resumable(self.cfg, c.manifest["config"])
        parallel_state.load_full_state(self.p, {"G": c.models["G"], "D": c.models["D"],
                                                "opt_G": c.objects["opt_G"],
                                                "opt_D": c.objects["opt_D"]})
        # The config's lrs, betas and eps win over the checkpoint's (optimizers.py says why).
        apply_settings(self.p.opt_G, self.p.opt_D, self.cfg.optim)
        changed = changed_settings(config_from_dict(c.manifest["config"]).optim, self.cfg.optim)
        if changed and self.rank == 0:
            log.info("resuming with new optimizer settings (%s), applied to the restored "
                     "optimizers; Adam's moments and step counts are kept", ", ".join(changed))
        self.G_ema.load_state_dict(c.models["G_ema"])
        torch.set_rng_state(c.objects["rng"]["torch"])
        m = c.manifest
        if self.rank == 0:
            log.info("resumed from %s at step %d (%d images; written by %d %s workers, now %d %s)",
                     path, m["step"], m["cur_nimg"], m.get("world_size", 1),
                     m.get("strategy", "ddp"), self.world, self.strategy)
        self.last = path
        # Checkpoints from before `step_state` recorded only the D-update count, and those from
        # before `d_nimg` lack it: it equals cur_nimg, as D updates on every real image shown.
        step_state = StepState.from_dict({"d_updates": m["d_updates"], "d_nimg": m["cur_nimg"],
                                          **m.get("step_state", {})})
        return ResumePoint(m["step"], m["cur_nimg"], step_state, m["data_position"], path)

    def save(self, step: int, cur_nimg: int, step_state: StepState, feed, manifest: dict) -> Path:
        """Write checkpoint `step` (collective); the path on every rank. `manifest`: further
        fields for the manifest (the curriculum's phase). TrainingDiverged on every rank, with
        nothing written, when a weight or optimizer state is NaN or infinite."""
        data_position = feed.state()
        if self.world > 1:  # each rank knows only its own streams' progress
            states = [None] * self.world
            torch.distributed.all_gather_object(states, data_position)
            data_position = merge_states(states)
        extra = {"cur_nimg": cur_nimg, "data_position": data_position,
                 "d_updates": step_state.d_updates, "step_state": step_state.to_dict(),
                 **manifest, "world_size": self.world, "strategy": self.strategy,
                 "class_names": feed.class_names, "config": self.cfg.to_dict()}
        rng = {"torch": torch.get_rng_state()}
        common = {"config_text": dump_config(self.cfg), "extra": extra,
                  "keep": self.cfg.train.keep_ckpts}
        if self.sharded:  # each rank's part is about 1/world of the bytes
            shard = (self.rank, self.world)
            part = parallel_state.state_dicts(self.p, shard)
            models = {"G": part["G"], "D": part["D"],
                      "G_ema": parallel_state.part_of(self.G_ema.state_dict(), shard)}
            objects = {"opt_G": part["opt_G"], "opt_D": part["opt_D"]}
            self._refuse_non_finite(step, models, objects)
            self.last = sharded.save_sharded(self.root, step, models=models, objects=objects,
                                             whole_models={}, whole_objects={"rng": rng}, **common)
            return self.last
        full = parallel_state.full_state_dicts(self.p)  # collective: ZeRO partitions are gathered
        main = self.rank == 0
        models = {"G": full["G"], "G_ema": self.G_ema.state_dict(), "D": full["D"]} if main else None
        objects = {"opt_G": full["opt_G"], "opt_D": full["opt_D"], "rng": rng} if main else None
        self._refuse_non_finite(step, models or {}, objects or {})
        self.last = sharded.save_gathered(self.root, step, models, objects, **common)
        return self.last

    def _refuse_non_finite(self, step: int, models: dict, objects: dict) -> None:
        """Raise TrainingDiverged on every rank when any rank's state to save is not finite.

        The loss check (`RunLog.finite`) sees the losses computed before this step's update;
        the update itself can put inf/NaN into the weights, so the state is checked as it is
        about to be written (collective, one all-reduce)."""
        bad = nonfinite_entries({**models, **objects})
        device = next(self.G_ema.parameters()).device
        if parallel.any_rank(bool(bad), device):
            where = describe(bad) if bad else "found by another rank"
            raise TrainingDiverged(
                f"the weights or optimizer state became non-finite by step {step} ({where}); "
                f"checkpoint {step_dir_name(step)} was not written and the last good checkpoint "
                f"is {self.last or 'none'}. {DIVERGENCE_ADVICE}")


def check_run_writable(run_dir: Path, main: bool, device: torch.device) -> None:
    """ConfigError on every rank (collective) when the main process cannot write into the run
    directory or its checkpoints/: found at the start, in one line naming the directory, not
    as a traceback at the first log line or checkpoint."""
    problem = None
    if main:
        for where in (run_dir, run_dir / "checkpoints"):
            try:
                check_writable(where)
            except OSError as e:
                problem = f"cannot write into {e.filename or where} ({e.strerror})"
                break
    if parallel.any_rank(problem is not None, device):
        problem = problem or "the main process cannot write the run directory"
        raise ConfigError(f"train.out_dir: {problem}; make it writable, or train into another "
                          "--out")


def _check_resumable(cfg: Config, manifest_config: dict) -> None:
    old = config_from_dict(manifest_config)
    if old.model != cfg.model:
        diff = [k for k, v in cfg.model.__dict__.items() if old.model.__dict__[k] != v]
        raise ConfigError(f"cannot resume: the checkpoint's model differs in model.{', model.'.join(diff)}; "
                          "resume with the checkpoint's model settings or start a new run directory")
