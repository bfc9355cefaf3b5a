"""The training loop: `train(cfg, hooks)`, read top to bottom.

Setup (run directory, Accelerate, models, optimizers, resume), then per G step: draw the batches
keyed by global position, run `gan_iteration`, update the EMA generator, log, draw a grid,
checkpoint, ask the hooks whether to stop. The same function runs single-process (the embedded
default), under `accelerate launch` and inside each Ray worker; only the launcher differs.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bigan import ema, models
from bigan.config import Config, ConfigError, config_from_dict, dump_config
from bigan.data.feed import make_feed, merge_states, model_images
from bigan.eval.samples import save_samples_png
from bigan.train import checkpoint as ckpt
from bigan.train import lr_decay, parallel, parallel_state, sharded_save
from bigan.train.hooks import TrainHooks
from bigan.train import schedule
from bigan.train.step import Batch, StepState, gan_iteration

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the step and the last checkpoint."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # G steps completed
    cur_nimg: int  # real images shown to D so far
    last_checkpoint: Path | None
    metrics: dict[str, float]


def _step_generator(seed: int, step: int, sub: int) -> torch.Generator:
    """An RNG keyed by (seed, step, sub-step): noise depends on the position, not on history."""
    state = np.random.SeedSequence([seed, step, sub]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _fake_inputs(cfg: Config, b: int, gen: torch.Generator, rank: int,
                 world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's slice of the global batch's (b) latents and classes (same for any world size)."""
    z = torch.randn(b, cfg.model.dim_z, generator=gen)
    y = torch.randint(0, cfg.model.num_classes, (b,), generator=gen)
    per = b // world
    return z[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def _check_resumable(cfg: Config, manifest_config: dict) -> None:
    old = config_from_dict(manifest_config)
    if old.model != cfg.model:
        diff = [k for k, v in cfg.model.__dict__.items() if old.model.__dict__[k] != v]
        raise ConfigError(f"cannot resume: the checkpoint's model differs in model.{', model.'.join(diff)}; "
                          "resume with the checkpoint's model settings or start a new run directory")


def train(cfg: Config, hooks: TrainHooks | None = None, resume: str | None = None) -> TrainResult:
    """Train `cfg` to `cfg.train.steps` G steps, resuming from `resume` ("auto" or a path)."""
    from accelerate import Accelerator
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    hooks = hooks or TrainHooks()
    tc = cfg.train
    run_dir = Path(tc.out_dir)
    ckpt_root = run_dir / "checkpoints"
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    progressive = cfg.model.arch == "progan"
    batch_sizes = {tc.batch_size, *(cfg.progressive.batch_size.values() if progressive else ())}
    for b in sorted(batch_sizes):
        if b % world:
            raise ConfigError(f"the global batch {b} (train.batch_size or progressive.batch_size) "
                              f"must be divisible by the {world} workers")
    torch.use_deterministic_algorithms(tc.deterministic)
    device = accelerator.device

    # --- models, optimizers, data ---------------------------------------------------------------
    torch.manual_seed(tc.seed)
    G, D = models.build(cfg.model)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    betas = tuple(cfg.optim.betas)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.optim.g_lr, betas=betas, eps=cfg.optim.eps)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.optim.d_lr, betas=betas, eps=cfg.optim.eps)

    # Data parallelism (train/parallel.py): gradients all-reduced by hand (ddp) or one DeepSpeed
    # engine per model (zero1-3); G's batch norms become cross-replica. One process: plain modules.
    strategy = tc.strategy if world > 1 else "ddp"
    if progressive and strategy != "ddp" and cfg.progressive.reset_optimizer:
        raise ConfigError(f"train.strategy={strategy} cannot reset optimizer state at ProGAN phase "
                          "changes (DeepSpeed partitions it): use train.strategy=ddp or "
                          "progressive.reset_optimizer=false")
    bf16 = tc.precision == "bf16"
    p = parallel.prepare(strategy, G.to(device), D.to(device), opt_G, opt_D, cfg.optim.grad_clip, device,
                         autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
                         batch_per_worker=tc.batch_size // world)
    G_ema.to(device)

    step, cur_nimg, data_state, state = 0, 0, None, StepState()
    resume_from = ckpt.find_resume(ckpt_root, resume) if resume else None
    if resume_from is not None:
        # Checkpoints hold full (consolidated) weights and optimizer states, so they load onto any
        # world size and strategy: 2 -> 1, 1 -> 2 processes, ddp -> zero2, ...
        c = ckpt.load_checkpoint(resume_from)
        _check_resumable(cfg, c.manifest["config"])
        parallel_state.load_full_state(p, {"G": c.models["G"], "D": c.models["D"],
                                           "opt_G": c.objects["opt_G"], "opt_D": c.objects["opt_D"]})
        G_ema.load_state_dict(c.models["G_ema"])
        torch.set_rng_state(c.objects["rng"]["torch"])
        m = c.manifest
        step, cur_nimg, data_state = m["step"], m["cur_nimg"], m["data_position"]
        state.d_updates = m["d_updates"]
        if main:
            log.info("resumed from %s at step %d (%d images; written by %d %s workers, now %d %s)",
                     resume_from, step, cur_nimg, m.get("world_size", 1), m.get("strategy", "ddp"),
                     world, strategy)
    feed = make_feed(cfg, rank, world, data_state)

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=step or None) if main else None
    metrics_file = (run_dir / "metrics.jsonl").open("a") if main else None
    grid_rows = list(range(min(tc.grid_classes, cfg.model.num_classes)))

    # Every rank writes its part of each checkpoint (train/sharded_save.py) when all of them see
    # the checkpoint directory; otherwise (node-local run directories) rank 0 gathers and writes all.
    sharded = world > 1 and sharded_save.shares_directory(ckpt_root)
    if world > 1 and not sharded and main:
        log.warning("the ranks do not share %s: rank 0 gathers the state and writes each checkpoint "
                    "alone (put train.out_dir on a shared file system to write in parallel)", ckpt_root)

    def save(step: int) -> Path | None:
        path, data_position = None, feed.state()
        if world > 1:  # each rank knows only its own streams' progress
            states = [None] * world
            torch.distributed.all_gather_object(states, data_position)
            data_position = merge_states(states)
        extra = {"cur_nimg": cur_nimg, "data_position": data_position, "d_updates": state.d_updates,
                 **({"phase": {"index": ph.index, "resolution": ph.resolution, "alpha": ph.alpha}}
                    if progressive else {}),
                 "world_size": world, "strategy": strategy,
                 "class_names": feed.class_names, "config": cfg.to_dict()}
        rng = {"torch": torch.get_rng_state()}
        if sharded:  # collective; each rank's part is about 1/world of the bytes
            part = parallel_state.state_dicts(p, (rank, world))
            path = sharded_save.save_sharded(
                ckpt_root, step,
                models={"G": part["G"], "G_ema": parallel_state.part_of(G_ema.state_dict(), (rank, world)),
                        "D": part["D"]},
                objects={"opt_G": part["opt_G"], "opt_D": part["opt_D"]},
                whole_models={}, whole_objects={"rng": rng}, config_text=dump_config(cfg),
                extra=extra, keep=tc.keep_ckpts)
            path = path if main else None
        else:
            full = parallel_state.full_state_dicts(p)  # collective: ZeRO partitions are gathered
            if main:
                path = ckpt.save_checkpoint(
                    ckpt_root, step,
                    models={"G": full["G"], "G_ema": G_ema.state_dict(), "D": full["D"]},
                    objects={"opt_G": full["opt_G"], "opt_D": full["opt_D"], "rng": rng},
                    config_text=dump_config(cfg), extra=extra, keep=tc.keep_ckpts)
        accelerator.wait_for_everyone()
        hooks.on_checkpoint(path, step)
        return path

    def draw_grid(step: int, name: str | None = None) -> Path:
        model = G_ema
        if cfg.ema.standing_stats_batches:
            model = copy.deepcopy(G_ema)
            n = min(tc.batch_size, 256)
            gen = _step_generator(tc.seed, step, 1 << 20)
            ema.standing_stats(model, lambda: (torch.randn(n, cfg.model.dim_z, generator=gen).to(device),
                                               torch.randint(0, cfg.model.num_classes, (n,), generator=gen).to(device)),
                               cfg.ema.standing_stats_batches)
        path = save_samples_png(model, run_dir / "grids" / (name or f"step-{step:08d}.png"), grid_rows,
                                tc.grid_per_class, tc.grid_seed, reference=feed.reference)
        (run_dir / "grids" / "latest.png").write_bytes(path.read_bytes())
        return path

    # --- the loop -------------------------------------------------------------------------------
    last_ckpt, metrics = resume_from, {}
    # `disable` only where it must be True: passed explicitly it would override TQDM_DISABLE=1.
    bar = tqdm(total=tc.steps, initial=step, desc="train", unit="it", dynamic_ncols=True,
               **({} if main else {"disable": True}))
    t_log, n_img = time.perf_counter(), 0
    ph = schedule.phase_at(cur_nimg, cfg) if progressive else None

    def rows(global_batch: int) -> tuple[int, int]:  # this worker's rows of the global batch
        return rank * (global_batch // world), global_batch
    while step < tc.steps:
        batch_size = tc.batch_size
        if progressive:  # ProGAN: resolution, alpha, batch and lrs follow cur_nimg (schedule.py)
            ph = schedule.phase_at(cur_nimg, cfg)
            schedule.apply_phase(ph, [p.G, p.D, G_ema], p.opt_G, p.opt_D)
            batch_size = ph.batch_size
        if cfg.optim.lr_decay != "none":  # a function of the step: resumes follow the same curve
            scale = lr_decay.lr_scale(step, tc.steps, cfg.optim.lr_decay, cfg.optim.lr_decay_start)
            g_lr, d_lr = (ph.g_lr, ph.d_lr) if progressive else (cfg.optim.g_lr, cfg.optim.d_lr)
            lr_decay.set_lrs(p.opt_G, p.opt_D, scale * g_lr, scale * d_lr)
        d_batches = []
        for k in range(cfg.optim.d_steps):
            real, real_y = feed.next(batch_size)
            real = model_images(real.to(device))
            if progressive:
                real = schedule.phase_reals(real, ph.resolution, ph.alpha)
            gen = _step_generator(tc.seed, step, k)
            z, y = _fake_inputs(cfg, batch_size, gen, rank, world)
            d_batches.append(Batch(z=z.to(device), fake_y=y.to(device), generator=gen,
                                   real=real, real_y=real_y.to(device), rows=rows(batch_size)))
        gen = _step_generator(tc.seed, step, cfg.optim.d_steps)
        z, y = _fake_inputs(cfg, batch_size, gen, rank, world)
        g_batch = Batch(z=z.to(device), fake_y=y.to(device), generator=gen, rows=rows(batch_size))

        metrics = gan_iteration(p.G, p.D, p.opt_G, p.opt_D, d_batches, g_batch, cfg.loss, state,
                                p.d_runtime, g_runtime=p.g_runtime)
        with p.gathered("G"):  # ZeRO-3: whole weights for the average
            ema.update_ema(G_ema, p.G, ema.ema_decay(step, cfg.ema.decay, cfg.ema.start_step))
        step += 1
        prev_nimg, cur_nimg = cur_nimg, cur_nimg + batch_size * cfg.optim.d_steps
        n_img += batch_size * cfg.optim.d_steps
        new_phase = progressive and schedule.entered_new_phase(prev_nimg, cur_nimg, cfg)
        if main and (new_phase or (progressive and step == tc.steps)):  # a grid per phase, at its end
            kind = "fade" if ph.phase.fading else "stable"
            draw_grid(step, f"phase-{ph.index:02d}-{ph.resolution}px-{kind}.png")
        if new_phase:
            if cfg.progressive.reset_optimizer:
                schedule.reset_optimizer_state(p.opt_G, p.opt_D)
            # checkpoints and grids from here on show the phase the next step trains
            ph = schedule.phase_at(cur_nimg, cfg)
            schedule.apply_phase(ph, [p.G, p.D, G_ema], p.opt_G, p.opt_D)
        bar.update(1)

        stop = hooks.should_stop(step)
        is_ckpt_step = step % tc.ckpt_every == 0 or step == tc.steps or stop
        if step % tc.log_every == 0 or is_ckpt_step:
            # Floats only at log/checkpoint steps: converting syncs the GPU. A non-finite loss is
            # caught before any checkpoint could save diverged weights.
            metrics = {k: float(v) for k, v in metrics.items()}
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                raise TrainingDiverged(
                    f"{', '.join(bad)} became non-finite by step {step}; the last good checkpoint "
                    f"is {last_ckpt or 'none'}. Lower optim.d_lr/g_lr, enable a gradient penalty "
                    "(loss.penalty) or train in fp32, then resume with --resume auto.")
        if step % tc.log_every == 0 or step == tc.steps:
            elapsed = time.perf_counter() - t_log
            metrics["speed/img_per_sec"] = n_img / elapsed
            metrics["progress/kimg"] = cur_nimg / 1000
            if progressive:
                metrics.update({"progress/resolution": float(ph.resolution), "progress/alpha": ph.alpha})
            metrics.update({f"data/skipped_{k}": float(v) for k, v in feed.skipped().items()})
            t_log, n_img = time.perf_counter(), 0
            if main:
                for k, v in metrics.items():
                    writer.add_scalar(k, v, step)
                metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
                metrics_file.flush()
                bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3f}"
                                 for k in ("loss/D", "loss/G") if k in metrics})
            hooks.on_metrics(step, metrics)
        if main and (step % tc.sample_every == 0 or step == tc.steps):
            draw_grid(step)
        if is_ckpt_step:
            last_ckpt = save(step)
        if stop:
            break
    bar.close()
    if main:
        writer.close()
        metrics_file.close()
    return TrainResult(run_dir, step, cur_nimg, last_ckpt, {k: float(v) for k, v in metrics.items()})
