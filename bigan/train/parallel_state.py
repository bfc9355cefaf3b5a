"""Checkpoint state of a `parallel.Prepared` pair, whatever the strategy and world size.

`state_dicts(p)` reads G and D weights (with buffers) and their optimizer states in torch's own
`Optimizer.state_dict()` format; with `part=(rank, world)` only the entries that `owners` gives to
`rank`, so each rank writes about 1/world of a checkpoint (`checkpoint/sharded.py`) and the parts
merge back into the full state on load. `load_full_state(p, state)` puts that state into any
strategy on any world size: DDP -> ZeRO-2, 2 -> 1 and 1 -> 2 processes all go through it, and
`bigan checkpoint consolidate` writes it as one file. ZeRO optimizer states are read and written
per parameter through DeepSpeed's tensor-fragment API (`deepspeed.utils.safe_get_full_optimizer_state`
& co.), which serves stages 1-3 alike.

Why not DeepSpeed's own checkpoints (`engine.save_checkpoint`, one file per rank and partition):
they load only onto the same world size and strategy. Its route to another world size,
`ds_to_universal --inject_missing_state` then `load_universal`, fails in DeepSpeed 0.19.8 on 0-dim
parameters (BigGAN's SelfAttention.gamma: `torch.cat` of a zero-dimensional tensor in
`merge_tp_slices`), and `load_universal` cannot feed DDP. Reading full tensors costs one
all-reduce per parameter and optimizer slot at save time, small next to the minutes between
checkpoints at BigGAN sizes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bigan.train.parallel import Prepared, process_rank

_SCALAR_KEYS = {"step"}  # optimizer-state entries shared by all elements (torch Adam's step)


def _zero_optimizer(engine: Any) -> tuple[Any, torch.optim.Optimizer, list[torch.Tensor]]:
    """(DeepSpeed's ZeRO optimizer, the torch optimizer inside it, its flat fp32 partitions)."""
    zero = engine.optimizer
    base = zero.optimizer
    # The fp32 partitions the torch optimizer steps (ZeRO-3 empties its param_groups between steps).
    flats = getattr(zero, "fp32_partitioned_groups_flat", None) or zero.single_partition_of_fp32_groups
    return zero, base, flats


def _relink(zero: Any) -> None:
    """Point ZeRO-1/2's per-parameter views at the optimizer's current state tensors.

    DeepSpeed links them lazily after its first step and not again after a load (its own
    `load_checkpoint` re-creates the mappings without the optimizer-state views), so read or
    write through the tensor-fragment API only after this. ZeRO-3 reads the state directly.
    """
    if hasattr(zero, "_hp_optimizer_states_linked"):
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


# --- consolidated --------------------------------------------------------------------------------

def full_state_dicts(p: Prepared) -> dict[str, dict] | None:
    """{"G", "D": model state dicts, "opt_G", "opt_D": torch optimizer state dicts} on rank 0.

    Collective: every rank must call it; ranks other than 0 get None. Optimizer states are in
    torch's format for an optimizer built over `module.parameters()` in order, so a plain
    `torch.optim.Adam(G.parameters()).load_state_dict(out["opt_G"])` accepts them.
    """
    out = state_dicts(p)
    return out if process_rank() == 0 else None


def state_dicts(p: Prepared, part: tuple[int, int] = (0, 1)) -> dict[str, dict]:
    """`full_state_dicts`' content on every rank, or with part=(rank, world) only the entries
    `owners` gives to `rank` (weights, buffers and each parameter's optimizer state by the
    parameter's name; param_groups in every part). The parts of all ranks merge back into the
    full state (`checkpoint.loading.load_checkpoint` does). Collective under ZeRO."""
    rank, world = part
    out = {}
    for name in ("G", "D"):
        module = getattr(p, name)
        with p.gathered(name):
            state = module.state_dict()
            own = owners(_nbytes(state), world)
            out[name] = {k: v.detach().clone().cpu() for k, v in state.items() if own[k] == rank}
        names = [n for n, _ in module.named_parameters()]
        keep = {i for i, n in enumerate(names) if own[n] == rank}
        if name in p.engines:
            out[f"opt_{name}"] = _zero_optimizer_state(p.engines[name], module, keep)
        else:
            opt = getattr(p, f"opt_{name}").state_dict()
            out[f"opt_{name}"] = {"state": {i: v for i, v in opt["state"].items() if i in keep},
                                  "param_groups": opt["param_groups"]}
    return out


def part_of(state: dict[str, torch.Tensor], part: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The entries of a replicated state dict (e.g. the EMA generator's) that rank part[0] saves."""
    own = owners(_nbytes(state), part[1])
    return {k: v for k, v in state.items() if own[k] == part[0]}


def _nbytes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    return {k: v.numel() * v.element_size() for k, v in state.items()}


def owners(sizes: dict[str, int], world: int) -> dict[str, int]:
    """Which of `world` ranks saves each entry: largest first to the least loaded rank, so every
    rank writes about 1/world of the bytes. Deterministic: every rank computes the same map."""
    load = [0] * world
    out = {}
    for key in sorted(sizes, key=lambda k: -sizes[k]):  # stable: ties keep state-dict order
        r = min(range(world), key=lambda i: load[i])
        out[key] = r
        load[r] += sizes[key]
    return out


def _zero_optimizer_state(engine: Any, module: nn.Module, keep: set[int]) -> dict:
    from deepspeed.utils import safe_get_full_optimizer_state

    zero, base, flats = _zero_optimizer(engine)
    flat_state = base.state.get(flats[0], {})
    if flat_state:
        _relink(zero)
    per_element = sorted(k for k in flat_state if k not in _SCALAR_KEYS)
    state = {}
    for i, param in enumerate(module.parameters()):
        if not param.requires_grad:  # frozen (finetune.freeze_*): outside ZeRO's optimizer, no
            continue                 # state, as torch's Adam keeps none for a parameter never stepped
        entry = {k: flat_state[k].clone() for k in _SCALAR_KEYS & flat_state.keys()}
        shape = getattr(param, "ds_shape", param.shape)  # ZeRO-3 keeps the true shape there
        for key in per_element:  # collective: every rank reads every parameter's state
            full = safe_get_full_optimizer_state(param, key)
            if i in keep:
                entry[key] = full.detach().reshape(shape).cpu()
        if entry and i in keep:
            state[i] = entry
    group = {k: v for k, v in base.param_groups[0].items() if k != "params"}
    group["params"] = list(range(len(list(module.parameters()))))
    return {"state": state, "param_groups": [group]}


def load_full_state(p: Prepared, state: dict[str, dict]) -> None:
    """Load `full_state_dicts` output (given on every rank) into `p`, any strategy, any world."""
    for name in ("G", "D"):
        module = getattr(p, name)
        if name not in p.engines:
            module.load_state_dict(state[name])
            getattr(p, f"opt_{name}").load_state_dict(state[f"opt_{name}"])
        else:
            _load_zero(p, name, p.engines[name], module, state[name], state[f"opt_{name}"])


def _load_zero(p: Prepared, name: str, engine: Any, module: nn.Module, weights: dict,
               opt_state: dict) -> None:
    params = list(module.named_parameters())
    zero, base, flats = _zero_optimizer(engine)
    with torch.no_grad():
        for key, buf in module.named_buffers():
            buf.copy_(weights[key])
        # ZeRO-3: what GatheredParameters(modifier_rank=0) does, minus its broadcast: every rank
        # holds the same full weights, and the broadcast fails on 0-dim parameters in DeepSpeed
        # 0.19.8 (`view(torch.uint8)` of SelfAttention.gamma).
        partitioned = [q for _, q in params] if p.strategy == "zero3" and hasattr(params[0][1], "ds_id") else []
        if partitioned:
            partitioned[0].all_gather(param_list=partitioned)
        for key, q in params:
            q.copy_(weights[key])
        if partitioned:
            partitioned[0].partition(param_list=partitioned, has_been_updated=True)
        for key, q in params:
            if q.requires_grad:  # a frozen one has no fp32 master copy: the module holds it
                _set_full_hp(zero, q, weights[key].to(torch.float32))

    per_param = opt_state["state"]
    if not per_param:
        return
    first = per_param[min(per_param)]
    per_element = [k for k in first if k not in _SCALAR_KEYS]
    for flat in flats:  # a fresh torch optimizer has no state yet: make the slots to fill
        slot = base.state[flat]
        for k in per_element:
            slot.setdefault(k, torch.zeros_like(flat))
        for k in _SCALAR_KEYS & first.keys():
            slot[k] = first[k].clone() if torch.is_tensor(first[k]) else first[k]
    _relink(zero)
    for i, (_, q) in enumerate(params):
        if q.requires_grad and i in per_param:  # frozen now or then: no state to load (ddp alike)
            for k in per_element:
                _set_full_hp(zero, q, per_param[i][k].to(torch.float32), k)
    for group, saved in zip(base.param_groups, opt_state["param_groups"]):
        group.update({k: v for k, v in saved.items() if k != "params"})


def _set_full_hp(zero: Any, param: nn.Parameter, value: torch.Tensor, key: str | None = None) -> None:
    """Write a full fp32 value (key None) or optimizer state into this rank's partition of it.

    ZeRO-1/2: DeepSpeed's `safe_set_full_*`. ZeRO-3: by hand, because its `set_full_hp_param`
    narrows the unpadded value at rank * partition size and so fails on the last rank whenever
    the element count is not a multiple of the world size (DeepSpeed 0.19.8).
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if not hasattr(param, "ds_id"):
        if key is None:
            safe_set_full_fp32_param(param, value)
        else:
            safe_set_full_optimizer_state(param, value, key)
        return
    part, _ = zero._get_fp32_opt_state_partition(param, release_swap_buffers=False, optim_state_key=key)
    n = part.numel()
    piece = value.flatten()[zero._get_param_partition_rank(param) * n:][:n]
    part.data[:piece.numel()].copy_(piece)
