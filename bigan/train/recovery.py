"""Recovery from divergence (`recovery:` in the config, off by default): roll back, apply a
remedy, go on.

A GAN run that goes non-finite, or whose FID climbs far past its best, late in training needs a
person to notice, pick a checkpoint, lower the learning rates and restart (BigGAN-PyTorch #75,
#91; StudioGAN #175). With `recovery.enabled` the trainer does it itself, in the process:

- *detect*, at log and checkpoint steps: a loss non-finite, G's or D's weights non-finite (read
  through the optimizers' parameter groups, so ZeRO's partitions are covered), or (main process,
  from the evaluator's records) FID above `fid_rise_factor` x the best FID of the run. The ranks
  agree in one all-reduce (`parallel.max_over_ranks`): one rank's NaN rolls every rank back.
- *roll back* to the last checkpoint written (non-finite: the trainer never writes a non-finite
  one) or to the best-FID checkpoint (the FID rule), through the resume path
  (`TrainCheckpoints.restore`: G, D, the EMA G, both optimizers, the step state, the RNG); the run
  log and the evaluation history forget the steps after it, as a resume from it would.
- *remedy*: both lrs times `lr_factor` (compounding), the data stream going on from where the
  divergence found it (`skip_data`: the batches since the checkpoint are not seen again; the
  trainer rebuilds the feed at the checkpoint's position otherwise) and the training noise keyed
  by the recovery count (`rekey_noise`, `batches.step_generator`).

The count and the lr multiplier go into every later checkpoint's manifest (`"recovery"`), so a
resume keeps the lowered lrs and the noise key and counts on toward `max_times`; they are read
back whether recovery is on or not. After `max_times` recoveries a divergence stops the run with
TrainingDiverged, as it does with recovery off.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from bigan.checkpoint.store import step_dir_name
from bigan.config import Config
from bigan.train import parallel
from bigan.train.evaluation import metric_key, read_history
from bigan.train.run_log import DIVERGENCE_ADVICE, TrainingDiverged
from bigan.train.train_state import ResumePoint, TrainCheckpoints

log = logging.getLogger(__name__)

MANIFEST_KEY = "recovery"  # the manifest's {"count": recoveries so far, "lr_factor": product}


class Recovery:
    """The recovery state of one run on one rank; every rank calls the same methods."""

    def __init__(self, cfg: Config, checkpoints: TrainCheckpoints, at: ResumePoint,
                 device: torch.device, main: bool):
        self.rc, self.checkpoints, self.device, self.main = cfg.recovery, checkpoints, device, main
        self.count, self.lr_factor = _recorded(at.checkpoint)
        self.fid_key = metric_key("fid", cfg.eval.psi[0])  # at eval.psi[0], where `best` is chosen too
        self._best: tuple[float, int] | None = None  # (best FID, its step)
        self._risen: tuple[int, float] | None = None  # (step, FID) of a record the rule caught
        self._cause, self._target = "", None
        if main and self.rc.enabled and self.rc.fid_rise_factor:  # a resume keeps the run's best FID
            for r in read_history(checkpoints.root.parent):
                if r["step"] <= at.step:
                    self._watch(r["step"], r.get("metrics", {}))
        if main and self.count:
            log.info("recovered %d time(s) before this start: the lrs stay scaled by %g",
                     self.count, self.lr_factor)

    @property
    def noise_key(self) -> int:
        """The key of the training noise (`batches.draw_batches`): 0 until a recovery re-keys it."""
        return self.count if self.rc.rekey_noise else 0

    def manifest(self) -> dict:
        """What a checkpoint records, once a recovery happened (older manifests stay as they were)."""
        return {MANIFEST_KEY: {"count": self.count, "lr_factor": self.lr_factor}} if self.count else {}

    def metrics(self) -> dict[str, float]:
        return {"recovery/count": float(self.count), "recovery/lr_factor": self.lr_factor} if self.count else {}

    def watching(self, write):
        """`write(step, scalars)` (the run log's evaluation writer) that also feeds the FID rule."""
        def write_and_watch(step: int, scalars: dict[str, float]) -> None:
            write(step, scalars)
            self._watch(step, scalars)
        return write_and_watch

    def _watch(self, step: int, scalars: dict) -> None:
        value = scalars.get(self.fid_key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        if self._best is None or value < self._best[0]:
            self._best = (float(value), step)
        elif (self.rc.enabled and self.rc.fid_rise_factor and self._risen is None
              and value > self.rc.fid_rise_factor * self._best[0]):
            self._risen = (step, float(value))

    def diverged(self, metrics: dict, step: int, p: parallel.Prepared) -> bool:
        """Whether this step's losses or weights (any rank) or a new evaluation (main) call for
        a rollback; collective when recovery is on, False without a collective when it is off.
        TrainingDiverged on every rank when one is called for and `max_times` are spent."""
        if not self.rc.enabled:
            return False
        bad = [k for k, v in metrics.items() if not math.isfinite(float(v))]
        bad += [f"{name}'s weights or Adam state" for name, opt in (("G", p.opt_G), ("D", p.opt_D))
                if not _finite(opt)]
        best_step = self._best[1] if self._risen and self._best else -1
        if self._risen and not (self.checkpoints.root / step_dir_name(best_step)).is_dir():
            log.warning("%s rose at step %d but the best checkpoint (step %d) is gone: no rollback",
                        self.fid_key, self._risen[0], best_step)
            self._risen, best_step = None, -1
        non_finite, risen, best_step = parallel.max_over_ranks(
            [int(bool(bad)), int(self._risen is not None), best_step], self.device)
        if non_finite:
            what = ", ".join(bad) or "another rank's losses or weights"
            self._cause = f"{what} became non-finite by step {step}"
            self._target = self.checkpoints.last
        elif risen:
            self._cause = (f"{self.fid_key} rose to {self._risen[1]:.4g} at step {self._risen[0]}, "
                           f"over {self.rc.fid_rise_factor:g} x the best {self._best[0]:.4g}"
                           if self._risen else f"{self.fid_key} rose (found by the main process)")
            self._target = self.checkpoints.root / step_dir_name(best_step)
        else:
            return False
        if self.count >= self.rc.max_times or self._target is None:
            spent = (f"recovery gave up after {self.count} recoveries (recovery.max_times="
                     f"{self.rc.max_times})" if self._target else "no checkpoint to roll back to")
            raise TrainingDiverged(f"{self._cause}; {spent}; the last good checkpoint is "
                                   f"{self._target or 'none'}. {DIVERGENCE_ADVICE}")
        return True

    def roll_back(self, step: int, run_log, evaluation) -> ResumePoint:
        """Restore the checkpoint `diverged` chose and apply the remedy; the position to go on
        from (its `data_state` is the checkpoint's: the trainer rebuilds its feed from it only
        with recovery.skip_data off)."""
        at = self.checkpoints.restore(str(Path(self._target).resolve()))
        self.count += 1
        self.lr_factor *= self.rc.lr_factor
        self._risen = None
        run_log.rewind(at.step)
        evaluation.rewind(at.step)
        if self.main:
            log.warning("recovery %d/%d: %s; rolled back to %s (step %d), lrs x%g, %s, noise %s",
                        self.count, self.rc.max_times, self._cause, at.checkpoint.name, at.step,
                        self.lr_factor,
                        f"skipping the {step - at.step} steps' batches since" if self.rc.skip_data
                        else "the same batches again",
                        f"re-keyed ({self.noise_key})" if self.rc.rekey_noise else "as before")
        return at


def _finite(opt) -> bool:
    """Whether every parameter an optimizer updates (this rank's) and its state (Adam's moments:
    exp_avg_sq overflows before the weights do) are finite; one device sync. The checkpoint
    would refuse either (`TrainCheckpoints.save`)."""
    tensors = [t for group in opt.param_groups for t in group["params"]]
    tensors += [t for state in getattr(opt, "state", {}).values() for t in state.values()
                if torch.is_tensor(t) and t.is_floating_point()]
    tensors = [t for t in tensors if t.numel()]
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _recorded(checkpoint: Path | None) -> tuple[int, float]:
    """(recoveries, lr multiplier) a checkpoint's manifest recorded; (0, 1.0) when none."""
    if checkpoint is None:
        return 0, 1.0
    try:
        r = json.loads((Path(checkpoint) / "manifest.json").read_text()).get(MANIFEST_KEY) or {}
    except (OSError, ValueError):  # restore has just read and verified it: only a race gets here
        r = {}
    return int(r.get("count", 0)), float(r.get("lr_factor", 1.0))
