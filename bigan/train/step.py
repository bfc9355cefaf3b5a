"""One GAN iteration: `d_steps` discriminator updates, then one generator update.

No I/O, no processes, no devices: the trainer hands in models, optimizers, batches and a
`StepRuntime` (how to backward, autocast and clip), so the same code runs single-process, under
DDP and under DeepSpeed. Every random draw comes from the batch's own `torch.Generator`, keyed
by step, which is what makes a resumed run bit-identical to an uninterrupted one. Under data
parallelism each worker holds `Batch.rows` of the global batch: per-sample noise is drawn for the
global batch and sliced, so the union over workers sees exactly the single-process draws.

Augmentation (`augment:`, `bigan/augment.py`) applies to every image D sees, real and fake, in D
and G updates, drawn from the same keyed generator (reals, then fakes, before any other draw of
the update). Gradient penalties see the images before augmentation. ADA's p and LeCam's EMAs are
statistics of the global batch: `StepRuntime.all_reduce_mean` averages them over the workers.

A D update scores real and fake in one call on the two batches concatenated, as BigGAN-PyTorch
does (`G_D.forward`), wherever D scores each sample alone (`d_call="auto"`): each GEMM is twice as
tall and spectral norm's power iteration runs once per update instead of twice
(docs/training.md). A D that mixes samples (ProGAN's minibatch std-dev, a batch norm in training
mode) keeps two calls, as does `d_call="separate"` (`speed.d_call`). Penalties make their own calls.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import torch
from torch import Tensor, nn

from bigan import augment, losses, regularizers
from bigan.config import AugmentConfig, LossConfig
from bigan.layers import MinibatchStdDev

_NO_AUGMENT = AugmentConfig()


def _plain_backward(loss: Tensor) -> None:
    loss.backward()


def _local_mean(t: Tensor) -> Tensor:
    return t


def _plain_clip(params: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    return nn.utils.clip_grad_norm_(list(params), max_norm)


@dataclass
class StepRuntime:
    """How the surrounding launcher wants backward passes, autocast and clipping done."""

    backward: Callable[[Tensor], None] = _plain_backward
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    clip_grad: Callable[[Iterable[nn.Parameter], float], Tensor] = _plain_clip
    grad_clip: float = 0.0  # 0 = no clipping
    all_reduce_mean: Callable[[Tensor], Tensor] = _local_mean  # a statistic's mean over the workers


@dataclass
class Batch:
    """Inputs of one D or G update: real images (D only), latents, fake labels, an RNG."""

    z: Tensor  # [N, dim_z]
    fake_y: Tensor  # [N] int64 classes for G
    generator: torch.Generator  # label noise, penalty interpolation/perturbation
    real: Tensor | None = None  # [N, C, H, W] in [-1, 1] (D steps only)
    real_y: Tensor | None = None  # [N] int64
    # (first, total): these N samples are rows first..first+N of a global batch of `total`; the
    # generator's per-sample draws are made for all `total` rows and sliced (None: N is global).
    rows: tuple[int, int] | None = None


@dataclass
class StepState:
    """What the step carries across calls (saved in checkpoints; identical on every worker)."""

    d_updates: int = 0  # D updates so far: drives the lazy-regularization interval
    d_nimg: int = 0  # real images of those D updates (the trainer's cur_nimg between steps): LeCam's start
    ada_p: float = 0.0  # ADA's augmentation probability
    ada_signs: float = 0.0  # sum over this ADA interval's D updates of E[sign(D(real))]
    lecam_real: float = 0.0  # LeCam's EMA of E[D(real)]
    lecam_fake: float = 0.0  # LeCam's EMA of E[D(fake)]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "StepState":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _clip(runtime: StepRuntime, module: nn.Module, out: dict[str, Tensor], key: str) -> None:
    if runtime.grad_clip > 0:
        out[key] = torch.as_tensor(runtime.clip_grad(module.parameters(), runtime.grad_clip)).detach()


def _augmented(x: Tensor, aug: AugmentConfig, state: StepState, batch: Batch) -> Tensor:
    return augment.augment(x, aug, state.ada_p, batch.generator, batch.rows)


def _track_ada(real_logits: Tensor, aug: AugmentConfig, state: StepState, runtime: StepRuntime,
               batch: Batch) -> None:
    """Add this update's r = E[sign(D(real))] (over all workers) to the interval's sum; at the end
    of every `ada_interval` D updates move p by ADA's rule (`augment.ada_adjust`)."""
    r = runtime.all_reduce_mean(torch.sign(real_logits.detach()).mean())
    state.ada_signs += float(r)
    if (state.d_updates + 1) % aug.ada_interval == 0:
        total = batch.rows[1] if batch.rows is not None else real_logits.shape[0]
        r_t = torch.tensor(state.ada_signs / aug.ada_interval)
        state.ada_p = float(augment.ada_adjust(torch.tensor(state.ada_p), r_t, aug.ada_target,
                                               total * aug.ada_interval, aug.ada_kimg, aug.ada_p_max))
        state.ada_signs = 0.0


def _lecam(real_logits: Tensor, fake_logits: Tensor, aug: AugmentConfig, state: StepState,
           runtime: StepRuntime) -> Tensor:
    """Update LeCam's EMAs with this update's means (over all workers), then its penalty."""
    means = runtime.all_reduce_mean(torch.stack([real_logits.detach().mean(),
                                                 fake_logits.detach().mean()]))
    started = state.d_nimg >= aug.lecam_start_nimg
    state.lecam_real = float(regularizers.ema_of_mean(torch.tensor(state.lecam_real), means[0].cpu(),
                                                      aug.lecam_decay, started))
    state.lecam_fake = float(regularizers.ema_of_mean(torch.tensor(state.lecam_fake), means[1].cpu(),
                                                      aug.lecam_decay, started))
    return regularizers.lecam_penalty(real_logits, fake_logits, state.lecam_real, state.lecam_fake)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def mixes_samples(D: nn.Module) -> bool:
    """Whether D's score of one sample depends on the others in the same call: ProGAN's minibatch
    std-dev (by design) or a batch norm in training mode (batch statistics). Such a D must see
    real and fake in separate calls; any other scores a concatenated batch row by row."""
    return any(isinstance(m, MinibatchStdDev) or (isinstance(m, _BATCH_NORMS) and m.training)
               for m in D.modules())


def _score_real_fake(D: nn.Module, real: Tensor, real_y: Tensor, fake: Tensor, fake_y: Tensor,
                     runtime: StepRuntime, joint: bool) -> tuple[Tensor, Tensor]:
    """(D(real), D(fake)) as float32 logits: one call on the concatenated batch when `joint`."""
    with runtime.autocast():
        if not joint:
            return D(real, real_y).float(), D(fake, fake_y).float()
        logits = D(torch.cat([real, fake]), torch.cat([real_y, fake_y])).float()
    real_logits, fake_logits = logits.split([real.shape[0], fake.shape[0]])
    return real_logits, fake_logits


def d_update(G: nn.Module, D: nn.Module, opt_D: torch.optim.Optimizer, batch: Batch,
             cfg: LossConfig, state: StepState, runtime: StepRuntime,
             aug: AugmentConfig = _NO_AUGMENT, d_call: str = "auto") -> dict[str, Tensor]:
    """One discriminator update on (aug(real), aug(G(z))); G receives no gradient. `d_call`
    (`speed.d_call`): "auto" scores both in one D call unless D mixes samples; "separate": two."""
    opt_D.zero_grad(set_to_none=True)
    with torch.no_grad(), runtime.autocast():
        fake = G(batch.z, batch.fake_y)
    fake = fake.float()
    real_seen, fake_seen = _augmented(batch.real, aug, state, batch), _augmented(fake, aug, state, batch)
    joint = d_call == "auto" and not mixes_samples(D)
    real_logits, fake_logits = _score_real_fake(D, real_seen, batch.real_y, fake_seen, batch.fake_y,
                                                runtime, joint)
    loss = losses.d_loss(cfg.kind, real_logits, fake_logits, label_smoothing=cfg.label_smoothing,
                         label_noise=cfg.label_noise, generator=batch.generator, rows=batch.rows,
                         weights=cfg.member_weights)
    out = {"loss/D": loss.detach(), "D/real": real_logits.detach().mean(),
           "D/fake": fake_logits.detach().mean()}
    if aug.kind == "ada":
        _track_ada(real_logits, aug, state, runtime, batch)
    if aug.lecam_weight:
        lecam = _lecam(real_logits, fake_logits, aug, state, runtime)
        loss = loss + aug.lecam_weight * lecam
        out["loss/lecam"] = lecam.detach()
    if cfg.drift_weight:
        loss = loss + cfg.drift_weight * regularizers.drift_penalty(real_logits)
    if cfg.penalty != "none" and state.d_updates % cfg.penalty_interval == 0:
        # Penalties run in fp32 outside autocast: the double backward is precision-sensitive.
        pen = regularizers.penalty(cfg.penalty, D, batch.real, fake, batch.real_y,
                                   fake_y=batch.fake_y, target=cfg.penalty_target,
                                   dragan_c=cfg.dragan_c, generator=batch.generator,
                                   rows=batch.rows)
        scale = 0.5 if cfg.penalty in ("r1", "r2", "r1+r2") else 1.0  # R1/R2 use gamma / 2
        loss = loss + scale * cfg.penalty_weight * cfg.penalty_interval * pen
        out["loss/penalty"] = pen.detach()
    runtime.backward(loss)
    _clip(runtime, D, out, "grad_norm/D")
    opt_D.step()
    state.d_updates += 1
    state.d_nimg += batch.rows[1] if batch.rows is not None else batch.real.shape[0]  # global batch
    return out


def g_update(G: nn.Module, D: nn.Module, opt_G: torch.optim.Optimizer, batch: Batch,
             cfg: LossConfig, runtime: StepRuntime, aug: AugmentConfig = _NO_AUGMENT,
             state: StepState | None = None) -> dict[str, Tensor]:
    """One generator update through a frozen D on aug(G(z)): no D weight gradient is computed.
    The relativistic losses also score aug(batch.real) (without gradient)."""
    opt_G.zero_grad(set_to_none=True)
    state = state or StepState()
    trainable = [p for p in D.parameters() if p.requires_grad]  # not D's frozen blocks (FreezeD)
    D.requires_grad_(False)
    try:
        real_logits = None
        if cfg.kind in losses.RELATIVISTIC_KINDS:
            if batch.real is None:
                raise ValueError(f"loss.kind={cfg.kind} needs real images in the G update's batch")
            with torch.no_grad(), runtime.autocast():
                real_logits = D(_augmented(batch.real, aug, state, batch), batch.real_y).float()
        with runtime.autocast():
            fake = G(batch.z, batch.fake_y)
        fake = _augmented(fake.float(), aug, state, batch)
        with runtime.autocast():
            fake_logits = D(fake, batch.fake_y).float()
        loss = losses.g_loss(cfg.kind, fake_logits, real_logits, weights=cfg.member_weights)
        out = {"loss/G": loss.detach()}
        if cfg.ortho_weight:
            ortho = regularizers.orthogonal_regularization(G)
            loss = loss + cfg.ortho_weight * ortho
            out["loss/ortho"] = ortho.detach()
        runtime.backward(loss)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    _clip(runtime, G, out, "grad_norm/G")
    opt_G.step()
    return out


def gan_iteration(G: nn.Module, D: nn.Module, opt_G: torch.optim.Optimizer,
                  opt_D: torch.optim.Optimizer, d_batches: list[Batch], g_batch: Batch,
                  cfg: LossConfig, state: StepState, runtime: StepRuntime | None = None,
                  g_runtime: StepRuntime | None = None,
                  aug: AugmentConfig = _NO_AUGMENT, d_call: str = "auto") -> dict[str, Tensor]:
    """k = len(d_batches) D updates (`d_call`: see `d_update`), then one G update.

    `runtime` runs the D updates and, unless `g_runtime` is given, the G update too: data-parallel
    strategies reduce each model's gradients in its own backward (`train/parallel.py`).

    Returns detached scalar tensors (D metrics averaged over the D updates that produced them);
    converting to floats is left to the caller, so a GPU is synchronised only when it logs.
    """
    runtime = runtime or StepRuntime()
    g_runtime = g_runtime or runtime
    d_metrics = [d_update(G, D, opt_D, b, cfg, state, runtime, aug, d_call) for b in d_batches]
    keys = dict.fromkeys(k for m in d_metrics for k in m)
    metrics = {k: torch.stack([m[k] for m in d_metrics if k in m]).mean() for k in keys}
    metrics.update(g_update(G, D, opt_G, g_batch, cfg, g_runtime, aug, state))
    if aug.kind == "ada":
        metrics["augment/p"] = torch.tensor(state.ada_p)
    if aug.lecam_weight:
        metrics["lecam/ema_real"] = torch.tensor(state.lecam_real)
        metrics["lecam/ema_fake"] = torch.tensor(state.lecam_fake)
    return metrics
