"""What one real training iteration costs, counted on the CPU: `LiveBytes` (the tensor bytes alive
at any moment, by category, and their peak) and `measure_step` (one `gan_iteration` as the
trainer runs it, at a small per-worker batch, under `LiveBytes` and `Flops`).

`bigan plan` (`plan.py`) measures two small batches and fits a line in the batch size: the
iteration's FLOPs and the bytes alive at its peak are an affine function of the batch (the
per-sample activations plus what does not depend on it: weights, the orthogonal penalty's
W W^T), so two points extrapolate to the configured batch. Counting, not a rule of thumb.

How the bytes are counted: every tensor an operator returns passes through the dispatch mode;
each new storage adds its bytes, and a finalizer subtracts them when torch frees it. Views share
their storage and count once. The measured iteration is the second one: the first creates Adam's
moments and the gradients, as the trainer's steady state has them; the gradients it leaves are
registered as alive when counting starts, so `zero_grad(set_to_none=True)` freeing them is seen.
A hook after gradient accumulation marks which storages are gradients, so the peak is split into
gradients and activations (everything else the iteration holds: saved tensors, temporaries).
Weights, EMA weights and Adam's moments are counted from the tensors themselves.

The step runs in fp32 (no autocast): bf16 is emulated on most CPUs at ~150x the cost, so under
`train.precision=bf16` the activations here are an upper bound (autocast keeps conv and matmul
outputs in bf16, half the bytes, but also caches bf16 copies of the weights).
"""

from __future__ import annotations

import contextlib
import copy
import time
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from bigan import models
from bigan.config import Config
from bigan.train import phases
from bigan.train.optimizers import build_optimizers
from bigan.train.speed import FastPath
from bigan.train.step import Batch, StepRuntime, StepState, gan_iteration


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storages created inside the mode (or `adopt`ed) that are still alive, and
    the peak, split at the peak into `grads` (storages `mark_grad` named) and `other`.

    torch.cuda.max_memory_allocated for any device: the caching allocator's rounding aside, the
    same quantity (tests/test_plan.py checks it on known allocations)."""

    def __init__(self):
        super().__init__()
        self.live = self.live_grads = 0
        self.peak = self.peak_grads = 0
        self._size: "weakref.WeakKeyDictionary[torch.UntypedStorage, int]" = weakref.WeakKeyDictionary()
        self._grads: "weakref.WeakSet[torch.UntypedStorage]" = weakref.WeakSet()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.adopt(t)
        return out

    def adopt(self, t: torch.Tensor) -> None:
        """Count `t`'s storage from now until torch frees it (once, however many views)."""
        s = t.untyped_storage()
        if s in self._size:
            return
        n = s.nbytes()
        self._size[s] = n
        self.live += n
        weakref.finalize(s, self._freed, n)
        self._note_peak()

    def mark_grad(self, t: torch.Tensor) -> None:
        """`t` is a parameter's .grad: its bytes count as gradients while it lives."""
        self.adopt(t)
        s = t.untyped_storage()
        if s not in self._grads:
            self._grads.add(s)
            self.live_grads += self._size[s]
            weakref.finalize(s, self._grad_freed, self._size[s])

    def _freed(self, n: int) -> None:
        self.live -= n

    def _grad_freed(self, n: int) -> None:
        self.live_grads -= n

    def _note_peak(self) -> None:
        if self.live > self.peak:
            self.peak, self.peak_grads = self.live, self.live_grads


class Flops(TorchDispatchMode):
    """FLOPs of the operators run inside the mode, by torch's own formulas (`flop_registry`:
    matmuls, convolutions, attention; forward and backward), as `FlopCounterMode` counts them.
    Not FlopCounterMode itself: its module tracker puts hooks on module inputs that make the
    gradient penalties' `autograd.grad` fail ("A leaf node was passed to
    _will_engine_execute_node", torch 2.13)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


@dataclass(frozen=True)
class StepCount:
    """One measured iteration at per-worker batch `batch`."""

    batch: int
    resolution: int  # the image side D saw (ProGAN: the phase's)
    flops: float  # torch's FLOP formulas: D updates x d_steps + the G update, penalties included
    peak_bytes: int  # live tensor bytes at the iteration's peak, beyond the static ones below
    grad_bytes_at_peak: int  # ... of which parameter gradients
    static_bytes: dict[str, int]  # weights_G/_D, ema, adam_G/_D: alive throughout (from the tensors)
    seconds: float  # wall time of the measured iteration on this CPU
    params: dict[str, int]  # G and D parameters (every ProGAN phase's)

    @property
    def activation_bytes(self) -> int:
        return self.peak_bytes - self.grad_bytes_at_peak


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def _random_batch(cfg: Config, n: int, res: int, generator: torch.Generator, device: str) -> Batch:
    """Latents, classes and "real" images of the model's shapes: the cost of a step does not
    depend on the pixel values."""
    m = cfg.model
    shape = (n, m.data_dim) if m.arch == "mlp" else (n, m.img_channels, res, res)
    return Batch(z=torch.randn(n, m.dim_z, generator=generator).to(device),
                 fake_y=torch.randint(0, m.num_classes, (n,), generator=generator).to(device),
                 generator=generator, real=(torch.rand(shape, generator=generator) * 2 - 1).to(device),
                 real_y=torch.randint(0, m.num_classes, (n,), generator=generator).to(device))


class _MomentsOnly:
    """Adam's memory without its arithmetic, for the meta device (whose tensors hold no values,
    so torch's Adam cannot read its step count): the two moments per parameter that has a
    gradient, created at the first step as Adam creates them; zero_grad as torch's."""

    def __init__(self, params, lr: float):
        self.param_groups = [{"params": list(params), "lr": lr}]
        self.state: dict = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            p.grad = None

    def step(self) -> None:
        for p in self.param_groups[0]["params"]:
            if p.grad is not None and p not in self.state:
                self.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}


def _built_on(device: str):
    """Build on `device`; on the meta device without spectral norm's start-up iterations."""
    return models.on_meta() if device == "meta" else contextlib.nullcontext()


def measure_steps(cfg: Config, batches: tuple[int, ...], resolution: int | None = None,
                  device: str = "meta") -> list[StepCount]:
    """Build G, D, the EMA copy and Adam as the trainer does (same resampling path, `speed:`),
    run one warm-up iteration, then count one iteration at each per-worker batch of `batches` on
    `device`: "meta" (shapes only: no arithmetic, so any preset costs seconds) or "cpu" (the
    real thing, torch's Adam included). ProGAN: `resolution` picks the phase (stabilising there,
    alpha 1; default the final one)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    with _built_on(device):
        G, D = models.build(cfg.model)
    FastPath.resolve(cfg.speed, "cpu", cfg.train.strategy).models(G, D)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    if device == "meta":
        opt_G, opt_D = (_MomentsOnly(G.parameters(), cfg.optim.g_lr),
                        _MomentsOnly(D.parameters(), cfg.optim.d_lr))
    else:
        opt_G, opt_D = build_optimizers(G, D, cfg.optim, "for-loop")
    res = resolution or cfg.model.resolution
    if cfg.model.arch == "progan":
        start = next(p for p in phases.all_phases(cfg) if p.resolution == res and not p.fading)
        phases.apply_phase(phases.phase_at(start.start_nimg, cfg), [G, D, G_ema], opt_G, opt_D)

    def one(batch: int) -> None:
        d_batches = [_random_batch(cfg, batch, res, gen, device) for _ in range(cfg.optim.d_steps)]
        gan_iteration(G, D, opt_G, opt_D, d_batches, _random_batch(cfg, batch, res, gen, device),
                      cfg.loss, StepState(), StepRuntime(), aug=cfg.augment, d_call=cfg.speed.d_call)

    one(batches[0])  # Adam's moments and the gradients now exist, as in the trainer's steady state
    out = []
    for batch in batches:
        flops, live, seconds = _count(one, batch, [p for m in (G, D) for p in m.parameters()])
        moments = {name: _nbytes([v for s in opt.state.values() for v in s.values()])
                   for name, opt in (("adam_G", opt_G), ("adam_D", opt_D))}
        static = {"weights_G": module_bytes(G), "weights_D": module_bytes(D),
                  "ema": module_bytes(G_ema), **moments}
        out.append(StepCount(batch, res, flops, live.peak, live.peak_grads, static, seconds,
                             {"G": _numel(G), "D": _numel(D)}))
    return out


def _count(one, batch: int, params: list[nn.Parameter]) -> tuple[float, LiveBytes, float]:
    """(FLOPs, the LiveBytes, seconds) of `one(batch)`; the gradients alive before it count
    from the start, those it accumulates as they appear."""
    live = LiveBytes()
    hooks = [p.register_post_accumulate_grad_hook(lambda p: live.mark_grad(p.grad)) for p in params]
    flops = Flops()
    try:
        for p in params:
            if p.grad is not None:
                live.mark_grad(p.grad)
        live.peak, live.peak_grads = live.live, live.live_grads
        t0 = time.perf_counter()
        with flops, live:
            one(batch)
        seconds = time.perf_counter() - t0
    finally:
        for h in hooks:
            h.remove()
    return float(flops.total), live, seconds


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def module_bytes(module: nn.Module) -> int:
    return _nbytes([*module.parameters(), *module.buffers()])
