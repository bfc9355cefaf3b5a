"""Data-parallel strategies for the two GAN models: `ddp` (gradients all-reduced by hand) and
DeepSpeed ZeRO stages 1-3 (`zero1`, `zero2`, `zero3`), one engine per model.

`prepare(strategy, G, D, opt_G, opt_D, grad_clip, device)` returns a `Prepared`: the plain modules
to run forwards on, optimizer-like objects (`zero_grad`, `step`, `param_groups`) and one
`StepRuntime` per model, so `gan_iteration(..., runtime=p.d_runtime, g_runtime=p.g_runtime)` runs
unchanged. Every strategy gives the same weights as one process on the concatenated batch
(`tests/test_parallel.py`), provided each worker's `Batch.rows` places its slice in the global
batch, because G's batch norms are made cross-replica here (global statistics, as BigGAN).

Why not `DistributedDataParallel` for `ddp`: a D update calls D three times (reals, fakes, the
penalty's interpolates) and backpropagates through `autograd.grad(create_graph=True)`; DDP's
reducer expects one forward per backward and does not support double backward. As StyleGAN2-ADA
does, the modules stay plain and each model's backward is followed by one all-reduce of its
flattened gradients (averaged), which is exact whatever the graph looks like; the price is no
overlap of communication with the backward, negligible for BigGAN's sizes next to its compute.

Why `deepspeed.initialize` once per model and not Accelerate's per-model DeepSpeed plugins: the
plugins route `accelerator.backward` to one engine chosen by a global "active plugin" switch,
need `transformers`, and on CPU silently train each process alone without an explicit gloo group
(the issue's probe); two engines in hand keep the G/D alternation explicit. Forwards go through
`engine.module`, never the engine (through the engine ZeRO-0 refuses the penalty's backward and
ZeRO-1/2 break in their gradient hooks), backwards through `engine.backward`, and D is frozen
during the G step by `step.g_update`. Clipping is DeepSpeed's (set from our `grad_clip`, whose
default there would be 1.0), so `grad_norm/*` metrics are absent under ZeRO. The optimizers stay
torch's (client optimizers), and the shared-memory comm op DeepSpeed would otherwise compile at
its first start is skipped (`deepspeed_ops.py`): no DeepSpeed C++ op is compiled. Under `zero3` only G runs
ZeRO-3; D runs ZeRO-2. A gradient penalty's double backward reads D's weights after ZeRO-3's
module hooks have released them (a backward through `autograd.grad(create_graph=True)` fires no
module hook to fetch them again) and fails with a shape error in DeepSpeed 0.19.8. Persistence
thresholds did not help (D's "persistent" parameters were still released after the first
forward); keeping D gathered with `GatheredParameters` through the D update is untried.
Checkpoints (sharded and consolidated) are in `train/parallel_state.py`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bigan.config import STRATEGIES, deep_merge
from bigan.train import deepspeed_ops
from bigan.train.step import StepRuntime

log = logging.getLogger(__name__)

ZERO_STAGES = {s: int(s.removeprefix("zero")) for s in STRATEGIES if s.startswith("zero")}  # zeroN -> N


class ParallelError(ValueError):
    """A strategy cannot run as configured; the message says what to change."""


def backend_for(device: torch.device) -> str:
    """The process-group backend for `device`: NCCL on CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def has_group() -> bool:
    """Whether this process is in a default process group."""
    return dist.is_available() and dist.is_initialized()


def process_rank() -> int:
    """This process's rank in the default process group (0 when there is none)."""
    return dist.get_rank() if has_group() else 0


def process_count() -> int:
    """The processes in the default process group (1 when there is none)."""
    return dist.get_world_size() if has_group() else 1


# --- cross-replica batch norm -----------------------------------------------------------------------

class CrossReplicaBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all workers.

    `torch.nn.SyncBatchNorm` refuses CPU tensors (torch 2.13: "expected input tensor to be on GPU"),
    so this one gathers each worker's per-channel (count, mean, biased variance) with one
    autograd-aware all-reduce (`_AllReduceSum`; each worker fills its own row of a [world, 2C + 1]
    table) and merges them with the parallel-variance formula (Chan et al. 1979), which avoids E[x^2] - E[x]^2
    cancellation. The backward of the all-reduce sums every worker's gradient of the shared
    statistics, as SyncBatchNorm's does. Outside training, or with one process, it is BatchNorm2d.
    """

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> "CrossReplicaBatchNorm2d":
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        # The same Parameter and buffer objects: optimizers built on the old module keep working.
        new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.train(bn.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        world = process_count()
        if not self.training or world == 1:
            return super().forward(x)
        c = x.shape[1]
        var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
        n = torch.full((1,), x.numel() // c, dtype=torch.float32, device=x.device)
        table = torch.zeros(world, 2 * c + 1, dtype=torch.float32, device=x.device)
        table = table.index_put((torch.tensor([dist.get_rank()], device=x.device),),
                                torch.cat([mean, var, n])[None])
        table = _AllReduceSum.apply(table)
        means, variances, counts = table[:, :c], table[:, c:2 * c], table[:, 2 * c:]
        total = counts.sum()
        g_mean = (counts * means).sum(0) / total
        g_var = (counts * (variances + (means - g_mean) ** 2)).sum(0) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.lerp_(g_mean.detach().to(self.running_mean.dtype), m)
                unbiased = g_var.detach() * (total / (total - 1).clamp(min=1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        shape = (1, c, 1, 1)
        out = (x - g_mean.view(shape).to(x.dtype)) * torch.rsqrt(g_var.view(shape) + self.eps).to(x.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward also sums the gradient over ranks: each rank's loss depends on
    the summed table, so d(total loss)/d(my row) is the sum of every rank's gradient. (What
    `torch.distributed.nn.functional.all_reduce` did; torch 2.13 deprecates it.)"""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # Through the Function itself, not a bare all_reduce, so that the backward is differentiable:
        # R1/R2 differentiate D's input gradient again (create_graph), and with batch norms in D
        # (the projected D's heads) a bare all_reduce there cut the other ranks' share of that
        # second derivative (D's weights 1e-3 apart from one process after one step; now 1e-7).
        return _AllReduceSum.apply(grad)


def convert_cross_replica_bn(module: nn.Module) -> nn.Module:
    """Replace every exact `nn.BatchNorm2d` under `module` (in place) by CrossReplicaBatchNorm2d.

    State-dict keys are unchanged, so checkpoints load into the plain model and back.
    """
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, CrossReplicaBatchNorm2d.from_batch_norm(child))
        else:
            convert_cross_replica_bn(child)
    return module


# --- the prepared pair --------------------------------------------------------------------------------

@dataclass
class Prepared:
    """What the trainer runs: forward modules, optimizer-likes and one runtime per model."""

    strategy: str
    world_size: int
    G: nn.Module  # plain module (DeepSpeed: engine.module); also what the EMA reads
    D: nn.Module
    opt_G: Any  # torch optimizer (ddp) or an EngineOptimizer (zero*)
    opt_D: Any
    g_runtime: StepRuntime
    d_runtime: StepRuntime
    engines: dict[str, Any] = field(default_factory=dict)  # "G"/"D" -> DeepSpeedEngine (zero*)

    def gathered(self, name: str) -> ContextManager:
        """Context in which model `name`'s parameters are whole on every rank (ZeRO-3 partitions
        them): wrap EMA updates and state-dict reads. Read-only: changes are not written back."""
        module = getattr(self, name)
        if self.strategy != "zero3":
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)


class EngineOptimizer:
    """The optimizer face of a DeepSpeed engine for `step.py`: zero_grad / step / param_groups."""

    def __init__(self, engine: Any):
        self.engine = engine

    def zero_grad(self, set_to_none: bool = True) -> None:
        # ZeRO keeps reduced gradients in its own buffers and clears them in engine.step();
        # this clears anything left on the module's parameters.
        self.engine.zero_grad()

    def step(self) -> None:
        self.engine.step()

    @property
    def param_groups(self) -> list[dict]:
        return self.engine.optimizer.param_groups

    @property
    def defaults(self) -> dict:
        """The client torch optimizer's constructor settings (its foreach/fused choice among them),
        which `optimizers.apply_settings` restores after a checkpoint's groups were loaded."""
        inner = getattr(self.engine.optimizer, "optimizer", self.engine.optimizer)
        return getattr(inner, "defaults", {})


def prepare(strategy: str, G: nn.Module, D: nn.Module, opt_G: torch.optim.Optimizer,
            opt_D: torch.optim.Optimizer, grad_clip: float, device: torch.device, *,
            autocast: Callable[[], ContextManager] = contextlib.nullcontext,
            batch_per_worker: int = 1, deepspeed_overrides: dict | None = None) -> Prepared:
    """Make G, D and their optimizers data-parallel with `strategy` (one of STRATEGIES).

    Call on every rank after the process group is initialised (a single process needs none for
    `ddp`; DeepSpeed needs one even for a single process). G, D are on `device`, have the same
    initial weights on every rank (rank 0's are broadcast for `ddp`; DeepSpeed broadcasts its
    own), and opt_G / opt_D are torch optimizers over all of their parameters. `grad_clip` is the
    max global gradient norm (0: none). `batch_per_worker` only fills DeepSpeed's batch fields;
    `deepspeed_overrides` is merged into the generated DeepSpeed config (`launch/deepspeed/`).
    """
    if strategy not in STRATEGIES:
        raise ParallelError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    world = process_count()
    if world > 1:
        convert_cross_replica_bn(G)
        convert_cross_replica_bn(D)
    if strategy == "ddp":
        return _prepare_ddp(G, D, opt_G, opt_D, grad_clip, autocast, world)
    if not dist.is_initialized():
        raise ParallelError(f"strategy {strategy!r} (DeepSpeed) needs an initialised process group, "
                            "even for one process: call torch.distributed.init_process_group first")
    return _prepare_zero(strategy, G, D, opt_G, opt_D, grad_clip, device, autocast,
                         batch_per_worker, deepspeed_overrides or {}, world)


# --- ddp: plain modules, gradients all-reduced after each backward --------------------------------

def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any (collective; `flag` itself with one process).
    For decisions every rank must take together, such as stopping: one rank leaving the loop
    alone would leave the others waiting in the next collective."""
    if process_count() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def max_over_ranks(values: list[int], device: torch.device) -> list[int]:
    """Each of `values` maximised over the ranks (collective, one all-reduce; `values` itself with
    one process): a decision and what it needs (a step) agreed at once, like `any_rank`."""
    if process_count() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def mean_over_ranks(t: Tensor) -> Tensor:
    """The mean of `t` over the ranks (collective; `t` itself with one process): the statistics of
    the global batch that ADA's p and LeCam's EMAs follow, agreed on by every rank. Every rank
    holds the same number of samples, so the mean of the ranks' means is the global mean."""
    world = process_count()
    if world == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out / world


def average_gradients(module: nn.Module) -> None:
    """All-reduce and average the gradients of `module`'s parameters in one flat buffer.

    Only parameters with a gradient take part; every rank ran the same graph, so every rank has
    the same set (StyleGAN2-ADA's `training_loop.py` does the same).
    """
    world = process_count()
    if world == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _broadcast_state(module: nn.Module) -> None:
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def _prepare_ddp(G: nn.Module, D: nn.Module, opt_G, opt_D, grad_clip: float,
                 autocast: Callable[[], ContextManager], world: int) -> Prepared:
    if world > 1:
        _broadcast_state(G)
        _broadcast_state(D)

    def runtime(module: nn.Module) -> StepRuntime:
        def backward(loss: Tensor) -> None:
            loss.backward()
            average_gradients(module)
        # Averaged gradients are identical on every rank, so plain clipping clips them alike.
        return StepRuntime(backward=backward, autocast=autocast, grad_clip=grad_clip,
                           all_reduce_mean=mean_over_ranks)

    return Prepared("ddp", world, G, D, opt_G, opt_D, runtime(G), runtime(D))


# --- zero1/2/3: one DeepSpeed engine per model ---------------------------------------------------

def deepspeed_config(stage: int, grad_clip: float, batch_per_worker: int = 1,
                     overrides: dict | None = None) -> dict:
    """The DeepSpeed config for one model at ZeRO `stage` (0-3), fp32, as in `launch/deepspeed/`.

    Mixed precision stays ours (torch autocast in `StepRuntime`), not DeepSpeed's fp16/bf16
    optimizers, so every strategy computes the same numbers. `overrides` are merged in (nested
    dicts key by key), e.g. {"zero_optimization": {"reduce_bucket_size": 5e7}}.
    """
    cfg: dict = {
        "train_micro_batch_size_per_gpu": batch_per_worker,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(grad_clip),  # DeepSpeed's default would be 1.0
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,  # torch optimizers: no C++ op builds
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},
        "steps_per_print": 2**31 - 1,  # progress is logged by bigan
        "wall_clock_breakdown": False,
    }
    return deep_merge(cfg, overrides or {})


@contextlib.contextmanager
def _own_broadcast():
    """Skip DeepSpeed's broadcast of rank 0's weights during `deepspeed.initialize`.

    DeepSpeed 0.19.8 broadcasts each parameter as `p.data.view(torch.uint8)`, which raises for
    0-dim parameters (SelfAttention.gamma) both in the engine and in ZeRO-3's partitioning.
    `_broadcast_state` has already given every rank rank 0's weights, so both broadcasts are
    replaced, for the duration of this context only, by nothing.
    """
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero.partition_parameters import Init

    def zero_init_param(self, param):  # Init._zero_init_param without the broadcast
        self._convert_to_deepspeed_param(param)
        param.partition()

    saved = DeepSpeedEngine._broadcast_model, Init._zero_init_param
    DeepSpeedEngine._broadcast_model = lambda self: None
    Init._zero_init_param = zero_init_param
    try:
        yield
    finally:
        DeepSpeedEngine._broadcast_model, Init._zero_init_param = saved


def _prepare_zero(strategy: str, G: nn.Module, D: nn.Module, opt_G, opt_D, grad_clip: float,
                  device: torch.device, autocast: Callable[[], ContextManager],
                  batch_per_worker: int, overrides: dict, world: int) -> Prepared:
    import deepspeed

    stage = ZERO_STAGES[strategy]
    g_cfg = deepspeed_config(stage, grad_clip, batch_per_worker, overrides)
    # D's penalty backward runs through weights ZeRO-3 has released (see the module docstring).
    d_cfg = deepspeed_config(min(stage, 2), grad_clip, batch_per_worker, overrides)
    if stage == 3 and process_rank() == 0:
        log.info("zero3: G runs ZeRO stage 3, D stage 2 (D's gradient penalty differentiates "
                 "through weights stage 3 would have released)")
    engines = {}
    for name, module, opt, cfg in (("G", G, opt_G, g_cfg), ("D", D, opt_D, d_cfg)):
        if world > 1:
            _broadcast_state(module)
        with _own_broadcast(), deepspeed_ops.without_unused_ops(), \
                deepspeed_ops.no_endless_build_wait():
            engine, *_ = deepspeed.initialize(model=module, optimizer=opt, config=cfg,
                                              dist_init_required=False)
        engines[name] = engine

    def runtime(engine: Any) -> StepRuntime:
        return StepRuntime(backward=lambda loss: engine.backward(loss), autocast=autocast,
                           grad_clip=0.0,  # clipped inside engine.step()
                           all_reduce_mean=mean_over_ranks)

    return Prepared(strategy, world, engines["G"].module, engines["D"].module,
                    EngineOptimizer(engines["G"]), EngineOptimizer(engines["D"]),
                    runtime(engines["G"]), runtime(engines["D"]), engines)
