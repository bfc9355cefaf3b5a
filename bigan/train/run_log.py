"""What a run shows while it trains: the progress bar, scalars in TensorBoard and
`metrics.jsonl`, the non-finite check, and sample grids of the EMA generator.

Only the main process writes (`RunLog(main=False)` keeps the counters and writes nothing), so
the loop calls the same methods on every rank.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bigan import ema
from bigan.checkpoint.durable import write_atomically
from bigan.config import Config, ConfigError
from bigan.generation import save_samples_png
from bigan.train import parallel, trackers
from bigan.train.batches import step_generator


class TrainingDiverged(RuntimeError):
    """A loss, weight or optimizer state became NaN or infinite; the message names the step and
    the last good checkpoint."""


# What to do after a divergence. The new lrs (and betas, eps) are applied to the restored
# optimizers on resume (`bigan.train.optimizers`); the loss and precision are read every step.
DIVERGENCE_ADVICE = ("Lower optim.d_lr/g_lr, enable a gradient penalty (loss.penalty) or train "
                     "in fp32, then resume with --resume auto: the new settings apply to the "
                     "restored optimizers.")


def accelerate_trackers(log_with: list[str]) -> list[str] | None:
    """The trackers of `train.log_with` that Accelerate runs (all but tensorboard, which the run
    log writes itself to keep RUN/tb and purge the steps a resume repeats); ConfigError naming
    the field for one that is not installed, before anything starts."""
    from accelerate.tracking import get_available_trackers

    others = [t for t in log_with if t != "tensorboard"]
    available = {str(t) for t in get_available_trackers()}
    missing = [t for t in others if t not in available]
    if missing:
        raise ConfigError(f"train.log_with={log_with!r}: {', '.join(missing)} is not installed "
                          f"here; install it (mlflow, wandb: pip install 'bigan[{trackers.EXTRA}]') "
                          "or leave it out of train.log_with")
    return others or None


class RunLog:
    """tqdm bar, trackers (TensorBoard, Accelerate's) and metrics.jsonl of the run directory;
    images/s between logs. `accelerator`: the run's Accelerator when train.log_with names
    trackers beyond tensorboard (see `accelerate_trackers`); `hparams`: the config they record."""

    def __init__(self, run_dir: Path, steps: int, step: int, main: bool,
                 log_with: tuple[str, ...] = ("tensorboard",), accelerator=None,
                 hparams: dict | None = None):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.main = main
        # Purge the steps this run writes again (after `step`), as metrics.jsonl keeps those up
        # to `step`: purging `step` itself would drop its evaluation, logged before the resume.
        self.writer = (SummaryWriter(str(run_dir / "tb"), purge_step=step + 1)
                       if main and "tensorboard" in log_with else None)
        # The trainer built `accelerator` with accelerate_trackers(log_with): checked there once.
        others = any(t != "tensorboard" for t in log_with)
        self.accelerator = accelerator if main and others else None
        if others and accelerator is not None:  # every rank: a failed start stops them all
            trackers.start(accelerator, run_dir, hparams, main)
        if main:
            _drop_lines_after(run_dir / "metrics.jsonl", step)
        self.path = run_dir / "metrics.jsonl"
        self.file = self.path.open("a") if main else None
        # `disable` only where it must be True: passed explicitly it would override TQDM_DISABLE=1.
        self.bar = tqdm(total=steps, initial=step, desc="train", unit="it", dynamic_ncols=True,
                        **({} if main else {"disable": True}))
        self.t0, self.images = time.perf_counter(), 0
        # kimg/h, ETA and device-hours (what `bigan plan` estimates, measured); device-hours go
        # on from the last value metrics.jsonl holds, so a resumed run keeps counting.
        self.steps, self.last_step = steps, step
        self.devices = parallel.process_count()
        self.device_hours = _last_value(self.path, "progress/device_hours") if main else 0.0

    def count(self, images: int) -> None:
        """One step done, having shown D `images` real images."""
        self.images += images
        self.bar.update(1)

    @staticmethod
    def finite(metrics: dict, step: int, last_checkpoint: Path | None) -> dict[str, float]:
        """The metrics as floats; TrainingDiverged when one is NaN or infinite. Converting syncs
        the GPU, so the loop calls it only at log and checkpoint steps, before any checkpoint
        could save diverged weights."""
        metrics = {k: float(v) for k, v in metrics.items()}
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(
                f"{', '.join(bad)} became non-finite by step {step}; the last good checkpoint "
                f"is {last_checkpoint or 'none'}. {DIVERGENCE_ADVICE}")
        return metrics

    def write(self, step: int, metrics: dict[str, float], cur_nimg: int) -> dict[str, float]:
        """Add throughput and progress to `metrics` and write them (main process); return them."""
        sec = time.perf_counter() - self.t0
        metrics["speed/img_per_sec"] = self.images / sec
        metrics["speed/kimg_per_hour"] = self.images / 1000 * 3600 / sec
        metrics["progress/kimg"] = cur_nimg / 1000
        # The ETA assumes the rest of the run goes at this interval's pace per step.
        metrics["progress/eta_hours"] = (self.steps - step) * sec / max(1, step - self.last_step) / 3600
        self.device_hours += self.devices * sec / 3600
        metrics["progress/device_hours"] = self.device_hours
        self.t0, self.images, self.last_step = time.perf_counter(), 0, step
        if self.main:
            self._append(step, metrics)
            postfix = {k.split("/")[-1]: f"{metrics[k]:.3f}" for k in ("loss/D", "loss/G") if k in metrics}
            self.bar.set_postfix(postfix | {"kimg/h": f"{metrics['speed/kimg_per_hour']:.1f}",
                                            "eta_h": f"{metrics['progress/eta_hours']:.1f}"})
        return metrics

    def write_eval(self, step: int, scalars: dict[str, float]) -> None:
        """An evaluation's results at the step of the checkpoint it scored (which is usually
        behind the training step by the time the evaluator is done); main process only."""
        if self.main:
            self._append(step, scalars)
            if self.writer is not None:
                self.writer.flush()

    def eval_steps(self) -> set[int]:
        """Steps with an evaluation (an `eval/*` scalar) in metrics.jsonl; TensorBoard gets the
        same scalars in the same call, so what this file lacks the logs lack."""
        if not self.main:
            return set()
        steps = set()
        text = self.path.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines(keepends=True):
            if (step := _line_step(line)) is not None and any(
                    k.startswith("eval/") for k in json.loads(line)):
                steps.add(step)
        return steps

    def _append(self, step: int, scalars: dict[str, float]) -> None:
        """`scalars` at `step` into TensorBoard, the Accelerate trackers and metrics.jsonl."""
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)
        if self.accelerator is not None:
            trackers.log(self.accelerator, step, scalars)  # W&B by kimg: steps go back
        self.file.write(json.dumps({"step": step, **scalars}) + "\n")
        self.file.flush()

    def rewind(self, step: int) -> None:
        """Training goes back to `step` (a recovery's rollback, `recovery.py`): the steps after it
        leave metrics.jsonl and TensorBoard, as a resume from there would drop them, so the
        retrained steps are logged once."""
        from torch.utils.tensorboard import SummaryWriter

        if self.main:
            self.file.close()
            _drop_lines_after(self.path, step)
            self.file = self.path.open("a")
            if self.writer is not None:
                log_dir = self.writer.log_dir
                self.writer.close()
                self.writer = SummaryWriter(log_dir, purge_step=step + 1)
        self.bar.n = self.last_step = step
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
        if self.main:
            if self.writer is not None:
                self.writer.close()
            if self.accelerator is not None:
                self.accelerator.end_training()
            self.file.close()


def _drop_lines_after(path: Path, step: int) -> None:
    """Keep only the metrics.jsonl lines of steps <= `step` (where this run starts), so a run
    resumed from an earlier checkpoint than the one it was interrupted after (or restarted from
    scratch) holds one line per step. A line cut short by a kill is dropped too. The file is
    rewritten under a temporary name and renamed: a kill now leaves the old or the new file."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept = [line for line in lines if (at := _line_step(line)) is not None and at <= step]
    if kept == lines:
        return
    write_atomically(path, "".join(kept).encode("utf-8"))


def _last_value(path: Path, key: str) -> float:
    """The last value of `key` in metrics.jsonl (0.0 when no complete line holds it)."""
    if not path.is_file():
        return 0.0
    for line in reversed(path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)):
        if _line_step(line) is not None and key in (record := json.loads(line)):
            return float(record[key])
    return 0.0


def _line_step(line: str) -> int | None:
    """The step of a complete metrics.jsonl line, None for a torn or foreign one."""
    if not line.endswith("\n"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


class SampleGrids:
    """Per-class grids of the EMA generator in RUN/grids/ (`latest.png` always the newest), with
    fixed latents so grids compare across steps."""

    def __init__(self, cfg: Config, G_ema: nn.Module, run_dir: Path, device: torch.device,
                 reference: np.ndarray | None = None):
        self.cfg, self.G_ema, self.dir, self.device = cfg, G_ema, run_dir / "grids", device
        self.rows = list(range(min(cfg.train.grid_classes, cfg.model.num_classes)))
        self.reference = reference  # 2-D data sets: the real points under the samples

    def draw(self, step: int, name: str | None = None) -> Path:
        cfg, model = self.cfg, self.G_ema
        if cfg.ema.standing_stats_batches:  # BigGAN's standing statistics, on a copy
            model = copy.deepcopy(self.G_ema)
            n = min(cfg.train.batch_size, 256)
            gen = step_generator(cfg.train.seed, step, 1 << 20)
            ema.standing_stats(model, lambda: (
                torch.randn(n, cfg.model.dim_z, generator=gen).to(self.device),
                torch.randint(0, cfg.model.num_classes, (n,), generator=gen).to(self.device)),
                cfg.ema.standing_stats_batches)
        path = save_samples_png(model, self.dir / (name or f"step-{step:08d}.png"), self.rows,
                                cfg.train.grid_per_class, cfg.train.grid_seed,
                                reference=self.reference)
        (self.dir / "latest.png").write_bytes(path.read_bytes())
        return path
