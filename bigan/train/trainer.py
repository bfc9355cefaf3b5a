"""The training loop: `train(cfg, hooks)`, read top to bottom.

Setup (Accelerate, models, optimizers, data parallelism, resume), then per G step: the
curriculum sets the batch size and lrs (ProGAN phases, lr decay; `curriculum.py`), the batches
are drawn keyed by global position (`batches.py`), `gan_iteration` updates D and G (`step.py`),
the EMA generator follows, and the run logs (`run_log.py`), draws grids, checkpoints
(`train_state.py`), hands evaluation checkpoints to the evaluator beside it (`evaluation.py`) and
asks the hooks whether to stop. With `recovery:` on, a divergence rolls the loop back to the
last good checkpoint in place (`recovery.py`); `finetune:` starts a fresh run from another's
weights (`finetune.py`). The same function runs single-process (the
embedded default), under `accelerate launch` and inside each Ray worker; only the launcher differs.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from bigan import ema, models
from bigan.config import Config, ConfigError, crossed, dump_config
from bigan.data.feed import make_feed
from bigan.train import finetune, parallel, process_lifetime, run_lock
from bigan.train.batches import check_global_batches, draw_batches
from bigan.train.curriculum import curriculum
from bigan.train.evaluation import Evaluator, TrainEvaluation
from bigan.train.hooks import TrainHooks
from bigan.train.optimizers import build_optimizers
from bigan.train.recovery import Recovery
from bigan.train.run_log import RunLog, SampleGrids, TrainingDiverged, accelerate_trackers
from bigan.train.speed import FastPath
from bigan.train.step import gan_iteration
from bigan.train.train_state import TrainCheckpoints, check_run_writable

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "TrainingDiverged", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # G steps completed
    cur_nimg: int  # real images shown to D so far
    last_checkpoint: Path | None
    metrics: dict[str, float]


def train(cfg: Config, hooks: TrainHooks | None = None, resume: str | None = None,
          evaluator: Evaluator | None = None) -> TrainResult:
    """Train `cfg` to `cfg.train.steps` G steps, resuming from `resume` ("auto" or a path);
    `evaluator` scores the checkpoints of the eval.every_kimg cadence (bigan.eval.run_evaluator)."""
    from accelerate import Accelerator

    process_lifetime.die_with_launcher()  # a killed `accelerate launch` takes its workers along
    torch.use_deterministic_algorithms(cfg.train.deterministic)  # before the group: see process_lifetime
    had_group = parallel.has_group()
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), project_dir=cfg.train.out_dir,
                              log_with=accelerate_trackers(cfg.train.log_with))
    if parallel.has_group() and not had_group:
        process_lifetime.end_group_at_exit()  # it built the group: gloo's threads end before exit
    strategy = _strategy(cfg, accelerator.num_processes)
    # One job per run directory, from before the first checkpoint is read to the return.
    with run_lock.held(cfg.train.out_dir, accelerator.is_main_process, accelerator.device):
        return _train(cfg, hooks or TrainHooks(), resume, evaluator, accelerator, strategy)


def _train(cfg: Config, hooks: TrainHooks, resume: str | None, evaluator: Evaluator | None,
           accelerator, strategy: str) -> TrainResult:
    tc, run_dir = cfg.train, Path(cfg.train.out_dir)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    check_run_writable(run_dir, main, device)  # a read-only run directory: one line, now

    # --- models, optimizers, data parallelism, resume, data ---------------------------------------
    fast, p, G_ema = _build(cfg, resume, device, strategy, rank, world)
    checkpoints = TrainCheckpoints(cfg, run_dir / "checkpoints", p, G_ema, rank, world, strategy)
    at = checkpoints.restore(resume)
    step, cur_nimg, state = at.step, at.cur_nimg, at.step_state
    feed = make_feed(cfg, rank, world, at.data_state)
    recovery = Recovery(cfg, checkpoints, at, device, main)  # `recovery:`; its lr cut outlives resumes
    course = curriculum(cfg, [p.G, p.D, G_ema], p.opt_G, p.opt_D, cur_nimg, recovery.lr_factor)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    run_log = RunLog(run_dir, tc.steps, step, main, tc.log_with, accelerator, cfg.to_dict())
    grids = SampleGrids(cfg, G_ema, run_dir, device, feed.reference)
    evaluation = TrainEvaluation(cfg, evaluator, checkpoints.root,
                                 recovery.watching(run_log.write_eval),  # the FID rule reads them
                                 main, logged=run_log.eval_steps())
    evaluation.resume(at.step)  # history and `best` agree with this start; crash leftovers logged

    # --- the loop -------------------------------------------------------------------------------
    last_ckpt, metrics = at.checkpoint, {}
    while step < tc.steps:
        batch_size = course.begin_step(step, cur_nimg)
        d_batches, g_batch = draw_batches(cfg, feed, course.prepare_reals, step, batch_size,
                                          rank, world, device, recovery.noise_key)
        d_batches = [fast.batch(b) for b in d_batches]
        now = course.now  # the config in force at this step (`schedules:` applied)
        metrics = gan_iteration(p.G, p.D, p.opt_G, p.opt_D, d_batches, g_batch, now.loss, state,
                                p.d_runtime, g_runtime=p.g_runtime, aug=now.augment, d_call=fast.d_call)
        with p.gathered("G"):  # ZeRO-3: whole weights for the average
            ema.update_ema(G_ema, p.G, _ema_decay(now, cur_nimg, batch_size, course.ema_age_nimg(cur_nimg)))
        step += 1
        prev_nimg, cur_nimg = cur_nimg, cur_nimg + batch_size * cfg.optim.d_steps
        run_log.count(batch_size * cfg.optim.d_steps)
        phase_grid = course.grid_name(prev_nimg, cur_nimg, last=step == tc.steps)
        if main and phase_grid:  # before the next phase is applied: the grid shows this one
            grids.draw(step, phase_grid)
        course.end_step(prev_nimg, cur_nimg)

        stop = parallel.any_rank(hooks.should_stop(step), device)  # every rank stops together
        is_eval_step = evaluation.due(prev_nimg, cur_nimg, last=step == tc.steps)
        is_ckpt_step = (crossed(prev_nimg, cur_nimg, tc.ckpt_every_nimg) or step == tc.steps or stop
                        or is_eval_step)
        is_log_step = crossed(prev_nimg, cur_nimg, tc.log_every_nimg) or step == tc.steps
        if is_log_step or is_ckpt_step:
            if recovery.diverged(metrics, step, p):  # agreed by every rank; never when it is off
                at = recovery.roll_back(step, run_log, evaluation)  # the last good checkpoint
                step, cur_nimg, state, last_ckpt = at.step, at.cur_nimg, at.step_state, at.checkpoint
                if not cfg.recovery.skip_data:  # else the data goes on past the batches since
                    feed = make_feed(cfg, rank, world, at.data_state)
                course = curriculum(cfg, [p.G, p.D, G_ema], p.opt_G, p.opt_D, cur_nimg, recovery.lr_factor)
                if stop:  # restored to a checkpoint: stopping now loses nothing
                    break
                continue
            metrics = run_log.finite(metrics, step, last_ckpt)
        if is_log_step:
            metrics.update(course.metrics() | recovery.metrics())
            metrics.update({f"data/skipped_{k}": float(v) for k, v in feed.skipped().items()})
            metrics.update({f"data/{k}": float(v) for k, v in feed.io_counts().items()})
            hooks.on_metrics(step, run_log.write(step, metrics, cur_nimg))
            evaluation.collect()
        if main and (crossed(prev_nimg, cur_nimg, tc.sample_every_nimg) or step == tc.steps):
            grids.draw(step)
        if is_ckpt_step:
            last_ckpt = checkpoints.save(step, cur_nimg, state, feed, course.manifest() | recovery.manifest())
            hooks.on_checkpoint(last_ckpt, step)
            if is_eval_step:  # the EMA weights are on disk: the evaluator reads them from there
                evaluation.hand_over(last_ckpt, step, cur_nimg)
        if stop:
            break
    evaluation.finish()  # the last evaluation is waited for and recorded
    run_log.close()
    return TrainResult(run_dir, step, cur_nimg, last_ckpt, {k: float(v) for k, v in metrics.items()})


def _build(cfg: Config, resume: str | None, device: torch.device, strategy: str, rank: int,
           world: int) -> tuple[FastPath, "parallel.Prepared", torch.nn.Module]:
    """(the fast path, G and D with their optimizers prepared for the strategy, the EMA copy):
    seeded, laid out for the device, started from a `finetune:` source where one is set."""
    torch.manual_seed(cfg.train.seed)
    G, D = models.build(cfg.model)
    fast = FastPath.resolve(cfg.speed, device, strategy)  # layout and Adam implementation
    fast.models(G, D)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # `finetune:`: a fresh run starts from another's weights (classes matched by name); frozen blocks
    finetune.start(cfg, resume, Path(cfg.train.out_dir) / "checkpoints", G, D, G_ema,
                   lambda: make_feed(cfg, rank, world).class_names)
    opt_G, opt_D = build_optimizers(G, D, cfg.optim, fast.optimizer)
    # Gradients all-reduced by hand (ddp) or one DeepSpeed engine per model (zero1-3); G's batch
    # norms become cross-replica (parallel.py). One process: plain modules.
    bf16 = cfg.train.precision == "bf16"
    p = parallel.prepare(strategy, G.to(device), D.to(device), opt_G, opt_D, cfg.optim.grad_clip, device,
                         autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
                         batch_per_worker=cfg.train.batch_size // world)
    return fast, p, G_ema.to(device)


def _ema_decay(now: Config, cur_nimg: int, batch_size: int, age_nimg: int) -> float:
    """This G step's EMA decay (`cur_nimg`: images before it): BigGAN's warm-up copy, then
    `ema.decay` with its ramp-up."""
    decay = ema.ema_decay(cur_nimg, now.ema.decay, now.ema.start_nimg)
    return ema.ramped_decay(decay, batch_size * now.optim.d_steps, age_nimg, now.ema.rampup)


def _strategy(cfg: Config, world: int) -> str:
    """The data-parallel strategy this run uses; ConfigError for settings it cannot honour."""
    progressive = cfg.model.arch == "progan"
    check_global_batches(cfg, world, f"the {world} workers")
    strategy = cfg.train.strategy if world > 1 else "ddp"
    if progressive and strategy != "ddp" and cfg.progressive.reset_optimizer:
        raise ConfigError(f"train.strategy={strategy} cannot reset optimizer state at ProGAN phase "
                          "changes (DeepSpeed partitions it): use train.strategy=ddp or "
                          "progressive.reset_optimizer=false")
    return strategy
