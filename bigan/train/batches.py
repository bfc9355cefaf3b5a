"""The inputs of one GAN iteration, keyed by position: real images from the feed and the latents
and classes of G's samples, drawn from RNGs seeded by (seed, step, sub-step).

Noise depends on where it is used, never on history or rank: every worker draws the whole global
batch's latents and keeps its own slice, so 1 process and W processes see the same numbers and a
resume continues the same sequence.
"""

from __future__ import annotations

import numpy as np
import torch

from bigan.config import Config, ConfigError
from bigan.data.feed import model_images
from bigan.losses import RELATIVISTIC_KINDS
from bigan.train.step import Batch


def check_global_batches(cfg: Config, world: int, workers: str) -> None:
    """Refuse a global batch the run trains with (train.batch_size; with model.arch=progan also
    each phase's progressive.batch_size.R) that does not split evenly over `world` workers: the
    ConfigError names the field, and `workers` how the user set their number ("--workers=3")."""
    batches = {"train.batch_size": cfg.train.batch_size}
    if cfg.model.arch == "progan":
        batches |= {f"progressive.batch_size.{res}": b
                    for res, b in sorted(cfg.progressive.batch_size.items())}
    for field, b in batches.items():
        if b % world:
            raise ConfigError(f"{field}={b} must be divisible by {workers}")


def step_generator(seed: int, step: int, sub: int, key: int = 0) -> torch.Generator:
    """An RNG keyed by (seed, step, sub-step): noise depends on the position, not on history.
    `key` > 0 (a recovery's count, `recovery.py`) gives the same positions other noise; 0 keeps
    the sequence runs have always drawn."""
    entropy = [seed, step, sub] + ([key] if key else [])
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def fake_inputs(cfg: Config, b: int, gen: torch.Generator, rank: int,
                world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's slice of the global batch's (b) latents and classes (same for any world size)."""
    z = torch.randn(b, cfg.model.dim_z, generator=gen)
    y = torch.randint(0, cfg.model.num_classes, (b,), generator=gen)
    per = b // world
    return z[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def draw_batches(cfg: Config, feed, prepare_reals, step: int, batch_size: int, rank: int,
                 world: int, device: torch.device, noise_key: int = 0) -> tuple[list[Batch], Batch]:
    """(one Batch per D update, the G update's Batch) of global batch `batch_size`.
    `prepare_reals` maps the model-range real images to what D sees (ProGAN's phase resolution);
    `noise_key` re-keys the noise (`step_generator`).

    With a relativistic loss, G's sample i has real sample i's class: the loss scores the pair's
    difference D(G(z_i), y_i) - D(x_i, y_i), and R3GAN's loop conditions both on the same labels.
    With independent classes the projection terms of two different classes enter every pair's
    difference, and G learned its classes far later (class accuracy about 0.2 after 600-1,200
    steps on 2% of the digits, docs/benchmarks.md). ProGAN's D with `model.mbstd_groups: class`
    gets the same pairing, so that its per-class statistic pools the same number of reals and
    fakes of every class. The classes are still drawn, so no other draw moves."""
    rows = (rank * (batch_size // world), batch_size)  # this worker's rows of the global batch
    paired = cfg.loss.kind in RELATIVISTIC_KINDS or cfg.model.mbstd_groups == "class"
    d_batches = []
    for k in range(cfg.optim.d_steps):
        real, real_y = feed.next(batch_size)
        real, real_y = prepare_reals(model_images(real.to(device))), real_y.to(device)
        gen = step_generator(cfg.train.seed, step, k, noise_key)
        z, y = fake_inputs(cfg, batch_size, gen, rank, world)
        d_batches.append(Batch(z=z.to(device), fake_y=real_y if paired else y.to(device),
                               generator=gen, real=real, real_y=real_y, rows=rows))
    gen = step_generator(cfg.train.seed, step, cfg.optim.d_steps, noise_key)
    z, y = fake_inputs(cfg, batch_size, gen, rank, world)
    # The relativistic losses compare G's samples with real ones: the last D update's reals, as
    # R3GAN's loop uses one real batch for both updates (no extra images are read).
    last = d_batches[-1]
    return d_batches, Batch(z=z.to(device), fake_y=last.real_y if paired else y.to(device),
                            generator=gen, rows=rows, real=last.real, real_y=last.real_y)
