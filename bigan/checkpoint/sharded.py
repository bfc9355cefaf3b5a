"""Checkpoints that every rank of a training job writes at once, each its own part.

`save_sharded` runs the collective protocol over `checkpoint/store.py`'s pieces: rank 0 opens the
temporary step directory, every rank writes its part (`<name>-RRRRR-of-WWWWW.*`, about 1/world of
the bytes, chosen by `parallel_state.owners`), the seals are gathered, and rank 0 commits the
manifest and renames the directory into place. A failure on any rank abandons the directory and
raises the same CheckpointError on every rank, so the previous checkpoint stays the newest and no
rank hangs in a collective. Parts merge back on load, whatever world size reads them.

Every rank must see the same checkpoint directory (one machine, or a shared file system);
`shares_directory` probes that at start-up, and a job whose ranks do not share it has rank 0
gather and write the whole state instead (`save_gathered`, with the same all-ranks outcome).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bigan.checkpoint import store as ckpt
from bigan.checkpoint.durable import failure_text


def shares_directory(root: str | Path) -> bool:
    """True when every rank sees the same `root` (collective; True with one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return True
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    box = [f".probe-{uuid.uuid4().hex}" if dist.get_rank() == 0 else None]
    if dist.get_rank() == 0:
        (root / box[0]).touch()
    dist.broadcast_object_list(box, src=0)
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, (root / box[0]).exists())
    if dist.get_rank() == 0:
        (root / box[0]).unlink(missing_ok=True)
    return all(seen)


def save_sharded(root: str | Path, step: int, models: dict[str, dict[str, torch.Tensor]],
                 objects: dict[str, Any], *, whole_models: dict[str, dict[str, torch.Tensor]],
                 whole_objects: dict[str, Any], config_text: str, extra: dict, keep: int) -> Path:
    """Write this rank's part (`models`, `objects`) of checkpoint `step`; rank 0 also writes the
    unsharded `whole_*` (ignored elsewhere) and commits. Collective; returns the checkpoint path
    on every rank, or raises CheckpointError on every rank."""
    rank, world = dist.get_rank(), dist.get_world_size()
    root = Path(root)
    extra = {**extra, "shards": world}
    ckpt.check_step(step, keep)

    box: list[Any] = [None]
    if rank == 0:
        try:
            ckpt.check_commit(config_text, extra)
            box = [(True, str(ckpt.begin_checkpoint(root, step, f"{os.getpid()}")))]
        except ckpt.CheckpointError as e:
            box = [(False, str(e))]
        except Exception as e:
            box = [(False, str(ckpt.write_error(root, step, e)))]
    tmp = Path(_outcome(box))

    try:
        ckpt.check_part(models, objects)
        if rank == 0:
            ckpt.check_part(whole_models, whole_objects)
        files = ckpt.write_part(tmp, models, objects, shard=(rank, world))
        if rank == 0:
            files.update(ckpt.write_part(tmp, whole_models, whole_objects))
        result: Any = files
    except Exception as e:  # reported to rank 0 instead of raised: the others wait in all_gather
        result = f"rank {rank}: {failure_text(e)}"
    results: list[Any] = [None] * world
    dist.all_gather_object(results, result)
    errors = [r for r in results if isinstance(r, str)]

    if rank == 0:
        if errors:
            shutil.rmtree(tmp, ignore_errors=True)
            box = [(False, str(ckpt.write_error(root, step, RuntimeError("; ".join(errors)))))]
        else:
            try:
                merged = {name: seal for files in results for name, seal in files.items()}
                path = ckpt.commit_checkpoint(root, tmp, step, merged, config_text, extra, keep)
                box = [(True, str(path))]
            except ckpt.CheckpointError as e:
                box = [(False, str(e))]
    return Path(_outcome(box))


def save_gathered(root: str | Path, step: int, models: dict[str, dict[str, torch.Tensor]] | None,
                  objects: dict[str, Any] | None, *, config_text: str, extra: dict,
                  keep: int) -> Path:
    """Rank 0 writes the whole checkpoint (`models`, `objects`: the gathered state, None on the
    other ranks) with `store.save_checkpoint`. Collective: returns the checkpoint path on every
    rank, or raises the same CheckpointError on every rank, so no rank waits for a save that
    failed. Without a process group it is `save_checkpoint`."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return ckpt.save_checkpoint(root, step, models, objects, config_text=config_text,
                                    extra=extra, keep=keep)
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box = [(True, str(ckpt.save_checkpoint(root, step, models, objects,
                                                   config_text=config_text, extra=extra,
                                                   keep=keep)))]
        except Exception as e:
            box = [(False, str(e))]
    return Path(_outcome(box))


def _outcome(box: list) -> str:
    """Rank 0's (ok, text) on every rank: the text, or CheckpointError(text) raised everywhere."""
    dist.broadcast_object_list(box, src=0)
    ok, text = box[0]
    if not ok:
        raise ckpt.CheckpointError(text)
    return text
