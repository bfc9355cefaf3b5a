"""Checkpoint state of a `parallel.Prepared` pair: consolidated (full) and sharded (per rank).

`full_state_dicts(p)` gathers G and D weights (with buffers) and their optimizer states in torch's
own `Optimizer.state_dict()` format, whatever the strategy; `load_full_state(p, state)` puts such
a state into any strategy on any world size. That pair is the elastic path: DDP -> ZeRO-2, 2 -> 1
and 1 -> 2 processes all go through it, and `bigan checkpoint consolidate` writes its output.
ZeRO optimizer states are read and written per parameter through DeepSpeed's tensor-fragment API
(`deepspeed.utils.safe_get_full_optimizer_state` & co.), which serves stages 1-3 alike.

`save_shards(p, directory)` writes DeepSpeed's own checkpoint (each rank its partition, no
gathering) under `directory/deepspeed/{G,D}/`; `load_shards(p, directory, manifest)` loads it
natively on the same strategy and world size only. DeepSpeed's route to another world size,
`ds_to_universal --inject_missing_state` then `load_universal`, fails in 0.19.8 on 0-dim
parameters (BigGAN's SelfAttention.gamma: `torch.cat` of a zero-dimensional tensor in
`merge_tp_slices`), and `load_universal` could not feed DDP anyway; the consolidated state can.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bigan.train.parallel import Prepared

SHARD_DIR = "deepspeed"
_SCALAR_KEYS = {"step"}  # optimizer-state entries shared by all elements (torch Adam's step)


class ShardError(RuntimeError):
    """A sharded checkpoint cannot be loaded here; the message says what to do instead."""


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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
    out = {}
    for name in ("G", "D"):
        module = getattr(p, name)
        with p.gathered(name):
            out[name] = {k: v.detach().clone().cpu() for k, v in module.state_dict().items()}
        if name in p.engines:
            out[f"opt_{name}"] = _zero_optimizer_state(p.engines[name], module)
        else:
            out[f"opt_{name}"] = getattr(p, f"opt_{name}").state_dict()
    return out if _rank() == 0 else None


def _zero_optimizer_state(engine: Any, module: nn.Module) -> dict:
    from deepspeed.utils import safe_get_full_optimizer_state

    zero, base, flats = _zero_optimizer(engine)
    flat_state = base.state.get(flats[0], {})
    if flat_state:
        _relink(zero)
    per_element = sorted(k for k in flat_state if k not in _SCALAR_KEYS)
    state = {}
    for i, param in enumerate(module.parameters()):
        entry = {k: flat_state[k].clone() for k in _SCALAR_KEYS & flat_state.keys()}
        shape = getattr(param, "ds_shape", param.shape)  # ZeRO-3 keeps the true shape there
        for key in per_element:
            entry[key] = safe_get_full_optimizer_state(param, key).detach().reshape(shape).cpu()
        if entry:
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
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    params = list(module.named_parameters())
    with torch.no_grad():
        for key, buf in module.named_buffers():
            buf.copy_(weights[key])
        if p.strategy == "zero3" and hasattr(params[0][1], "ds_id"):
            with deepspeed.zero.GatheredParameters([q for _, q in params], modifier_rank=0):
                for key, q in params:
                    q.copy_(weights[key])
        else:
            for key, q in params:
                q.copy_(weights[key])
        for key, q in params:
            safe_set_full_fp32_param(q, weights[key].to(torch.float32))

    zero, base, flats = _zero_optimizer(engine)
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
        for k in per_element:
            safe_set_full_optimizer_state(q, per_param[i][k].to(torch.float32), k)
    for group, saved in zip(base.param_groups, opt_state["param_groups"]):
        group.update({k: v for k, v in saved.items() if k != "params"})


# --- sharded ------------------------------------------------------------------------------------

def save_shards(p: Prepared, directory: str | Path) -> list[str]:
    """Write this rank's DeepSpeed shards of G and D under `directory/deepspeed/`; collective.

    Returns the files this rank wrote, relative to `directory`, for the manifest (rank 0 also
    owns DeepSpeed's shared files). DDP has nothing sharded: returns [] (save `full_state_dicts`).
    """
    if not p.engines:
        return []
    directory = Path(directory)
    rank = _rank()
    for name, engine in p.engines.items():
        engine.save_checkpoint(str(directory / SHARD_DIR), tag=name, save_latest=False)
    if dist.is_initialized():
        dist.barrier()
    mine = []
    for f in sorted((directory / SHARD_DIR).rglob("*")):
        if not f.is_file():
            continue
        owner = _owner(f.name)
        if owner == rank or (owner is None and rank == 0):
            mine.append(str(f.relative_to(directory)))
    return mine


def _owner(filename: str) -> int | None:
    """The rank that wrote a DeepSpeed checkpoint file (`zero_pp_rank_R_...`), None if shared."""
    if filename.startswith("zero_pp_rank_"):
        return int(filename.split("_")[3])
    return None


def load_shards(p: Prepared, directory: str | Path, manifest: dict) -> None:
    """Load `save_shards` output written with `manifest["strategy"]` on `manifest["world_size"]`.

    Same strategy and world size: DeepSpeed's native load. Otherwise the shards are converted
    (DeepSpeed's universal checkpoint) to full tensors and loaded with `load_full_state`.
    """
    directory = Path(directory)
    strategy, world = manifest.get("strategy"), manifest.get("world_size")
    if not (directory / SHARD_DIR).is_dir():
        raise ShardError(f"{directory} holds no DeepSpeed shards (strategy {strategy!r}); load "
                         "its consolidated weights with load_full_state instead")
    if strategy == p.strategy and world == p.world_size:
        for name, engine in p.engines.items():
            path, _ = engine.load_checkpoint(str(directory / SHARD_DIR), tag=name,
                                             load_optimizer_states=True,
                                             load_lr_scheduler_states=False)
            if path is None:
                raise ShardError(f"DeepSpeed found no checkpoint {name} in {directory / SHARD_DIR}")
        return
    raise ShardError(
        f"{directory} was written by {strategy!r} on {world} process(es); its DeepSpeed shards load "
        f"only onto the same (here: {p.strategy!r} on {p.world_size}). Load the checkpoint's "
        "consolidated state with load_full_state instead (DeepSpeed 0.19.8's universal conversion "
        "fails on 0-dim parameters such as SelfAttention.gamma)")
