"""Atomic training checkpoints: one directory per G step, a checksummed manifest, a `latest` pointer.

A checkpoint is `<root>/step-NNNNNNNN/` holding each model's weights as `<name>.safetensors`, every
other piece of state (optimizer, scheduler, RNG) as `<name>.pt` read back only with
`torch.load(weights_only=True)`, the run's `config.yaml`, and `manifest.json` (step, creation time,
the caller's extra fields, and the sha256 and size of every file). A save writes everything into
`step-NNNNNNNN.tmp-<pid>/`, fsyncs it, renames it into place and then moves `<root>/latest` the same
way, so a crash at any moment leaves the previous checkpoint and pointer usable. Readers ignore
`*.tmp-*` names and directories without a manifest; the next save deletes such leftovers.

Sharded writes: `save_checkpoint` is `begin_checkpoint` + `write_part` + `commit_checkpoint`, and
several writers (the ranks of a training job) may each call `write_part` into the same temporary
directory with `shard=(rank, world)`, naming their files `<name>-RRRRR-of-WWWWW.<ext>`; one of them
commits with every writer's file seals. `loading.py` verifies and reads a checkpoint back, merging
a name's shards into one state dict (or one nested dict of objects), so readers never see the
sharding and a checkpoint written by W writers loads onto any number of processes. This module
knows nothing of the trainer, Accelerate or processes: callers hand it state dicts and seals
(`checkpoint/sharded.py` runs the collective protocol). What may be saved is checked in `checks.py`
(which also defines the exceptions and the step directory's name, `step_dir_name` and `STEP_DIR`,
re-exported here; there rather than here because `best.py`, which this module imports, needs the
name too); fsync, rename and sealing live in `durable.py`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from bigan.checkpoint.best import protected
from bigan.checkpoint.checks import (STEP_DIR, CheckpointError, CheckpointWarning,  # noqa: F401
                                     check_commit, check_part, check_step,
                                     step_dir_name)  # (re-exported)
from bigan.checkpoint.durable import (failure_text, fsync_dir, install, no_space,  # noqa: F401
                                      seal, write_atomically, write_durably)

log = logging.getLogger(__name__)

FORMAT = "bigan-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
LATEST = "latest"
SUPERSEDED = "superseded"  # checkpoints of a line of training a run went back from (set_aside)
_LEFTOVER = re.compile(r"^step-\d{8,}\.tmp-")  # new (tmp-<pid>), set aside (tmp-old-), pruned (tmp-del-)


def shard_file_stem(name: str, rank: int, world: int) -> str:
    """`<name>-RRRRR-of-WWWWW`: the stem of writer `rank`'s part of `name` (ranks from 0)."""
    return f"{name}-{rank:05d}-of-{world:05d}"


def save_checkpoint(root: str | Path, step: int, models: dict[str, dict[str, torch.Tensor]],
                    objects: dict[str, Any], config_text: str, extra: dict | None = None,
                    keep: int = 0) -> Path:
    """Write `<root>/step-NNNNNNNN/` atomically, point `latest` at it, prune; return its path.

    models: name -> state dict of tensors, saved as `<name>.safetensors` (tensors are copied to
    contiguous CPU memory first, so tied or strided weights are fine). objects: name -> value saved
    as `<name>.pt`; every value must be loadable with `torch.load(weights_only=True)`, i.e. built
    only from tensors, None/bool/int/float/complex/str/bytes, torch dtypes/devices/Sizes and
    dict/list/tuple/set. Convert anything else first (NumPy RNG state: e.g.
    `{"keys": torch.from_numpy(keys), "pos": int(pos), ...}`); a CheckpointError is raised before
    anything is written otherwise. extra: JSON-serializable fields merged into the manifest
    (cur_nimg, world_size, data position, ...). keep: keep only the `keep` newest complete
    checkpoints, always including this one (0 keeps all).
    """
    check_step(step, keep)
    extra = dict(extra or {})
    check_part(models, objects)
    check_commit(config_text, extra)
    try:  # a read-only or full checkpoints directory fails here already
        tmp = begin_checkpoint(root, step, str(os.getpid()))
    except OSError as e:
        raise write_error(Path(root), step, e) from e
    try:
        files = write_part(tmp, models, objects)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(Path(root), step, e) from e
    except BaseException:  # e.g. KeyboardInterrupt: tidy up, then let it through unchanged
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_checkpoint(root, tmp, step, files, config_text, extra, keep)


def write_error(root: Path, step: int, e: BaseException) -> CheckpointError:
    if no_space(e):
        try:
            free = f" ({shutil.disk_usage(root).free / 2**20:.0f} MiB free there now that the " \
                   "partial save is removed)"
        except OSError:
            free = ""
        what, fix = f"no space left on device{free}", ("free disk space or keep fewer "
                                                          "checkpoints (train.keep_ckpts)")
    elif isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what, fix = (f"cannot write {e.filename or root} ({e.strerror})",
                     f"make {root} writable (or move the run to a writable place)")
    else:
        what, fix = f"{type(e).__name__}: {e}", "fix the cause (disk space, permissions)"
    try:
        previous = list_checkpoints(root)
    except OSError:
        previous = []
    if previous:
        kept = f"The previous checkpoint ({previous[-1].name}) and {root / LATEST} are intact"
        then = "rerun the same command to resume"
    else:  # the first save of a run: there is nothing to fall back on, say so
        kept = "No earlier checkpoint exists, so nothing of this run is saved yet"
        then = "rerun the same command (it starts from step 0)"
    return CheckpointError(f"could not write checkpoint {root / step_dir_name(step)}: {what}. "
                           f"{kept}; {fix} and {then}")


def begin_checkpoint(root: str | Path, step: int, token: str) -> Path:
    """Create and return the temporary directory `<root>/step-NNNNNNNN.tmp-<token>` that
    `write_part` fills, after deleting what interrupted saves left. One caller per checkpoint;
    other writers learn the path from it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(root)
    tmp = root / f"{step_dir_name(step)}.tmp-{token}"
    tmp.mkdir()
    return tmp


def write_part(tmp: Path, models: dict[str, dict[str, torch.Tensor]], objects: dict[str, Any],
               shard: tuple[int, int] | None = None) -> dict[str, dict]:
    """Write models (`.safetensors`) and objects (`.pt`) into `tmp`, fsynced; return their seals
    (file name -> sha256 and size) for `commit_checkpoint`. shard=(rank, world) names the files as
    that writer's part; without it, the files hold whole state. Validate the input with
    `check_part` first; OS errors pass through (the caller abandons `tmp`)."""
    stem = (lambda n: shard_file_stem(n, *shard)) if shard else (lambda n: n)
    files = {}
    for mname, state in models.items():
        path = tmp / f"{stem(mname)}.safetensors"
        # A private contiguous CPU copy per tensor: safetensors refuses shared or strided storage.
        flat = {k: v.detach().to(device="cpu", copy=True, memory_format=torch.contiguous_format)
                for k, v in state.items()}
        safetensors.torch.save_file(flat, str(path), metadata={"format": "pt"})
        del flat
        files[path.name] = seal(path)
    for oname, value in objects.items():
        path = tmp / f"{stem(oname)}.pt"
        with open(path, "wb") as f:
            torch.save(value, f)
        files[path.name] = seal(path)
    return files


def commit_checkpoint(root: str | Path, tmp: Path, step: int, files: dict[str, dict],
                      config_text: str, extra: dict | None = None, keep: int = 0) -> Path:
    """Finish a checkpoint whose parts `files` (every writer's seals) are in `tmp`: write the
    config and manifest, rename `tmp` into place, move `latest`, prune to `keep`. Validate step,
    keep, config_text and extra (`check_step`, `check_commit`) before anything is written. On
    failure `tmp` is removed and the previous checkpoint and pointer stay intact."""
    root = Path(root)
    extra = dict(extra or {})
    final = root / step_dir_name(step)
    try:
        files = dict(files)
        (tmp / CONFIG).write_text(config_text, encoding="utf-8")
        files[CONFIG] = seal(tmp / CONFIG)
        # The manifest goes last and only after every data file is fsynced: without that order the
        # filesystem may persist the manifest before the data blocks, and a directory that looks
        # complete could hold zeros. The checksums also catch partial copies (rsync, cloud sync).
        manifest = {"format": FORMAT, "version": VERSION, "step": step,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "files": files, **extra}
        write_durably(tmp / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        fsync_dir(tmp)  # the directory entries of the files, before the rename can become durable
        install(tmp, final)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(root, step, e) from e
    except BaseException:  # e.g. KeyboardInterrupt: tidy up, then let it through unchanged
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    # `latest` moves only once the directory rename is durable, so it never names a missing step.
    try:
        write_atomically(root / LATEST, (final.name + "\n").encode())
    except OSError as e:
        raise CheckpointError(f"checkpoint {final} was written but {root / LATEST} could not be "
                              f"updated ({e}); `--resume auto` still finds it") from e
    log.info("saved checkpoint %s", final)
    if keep:
        _prune(root, keep, final)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete `step-*` directories under root (those with a manifest), by step ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / MANIFEST).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def incomplete_step_dirs(root: str | Path) -> list[Path]:
    """`step-*` directories under root without a manifest (an interrupted save renamed by hand,
    or a checkpoint from a writer without manifests): never resumed from, worth a warning."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if STEP_DIR.match(p.name) and p.is_dir() and not (p / MANIFEST).is_file())


def set_aside(root: str | Path, names: list[str]) -> list[Path]:
    """Move checkpoints `names` under root into `<root>/superseded/` (a numeric suffix where the
    name is taken); return where they went. For a run training again from an earlier step (a
    resume from an older checkpoint, a recovery's rollback): left in place, the newest would be
    what a later `--resume auto` picks (the newest usable wins, for a save cut between its rename
    and the pointer update), jumping back to the line the run left. Moved, not deleted."""
    root, moved = Path(root), []
    for name in names:
        target, n = root / SUPERSEDED / name, 1
        while target.exists():
            n += 1
            target = root / SUPERSEDED / f"{name}-{n}"
        target.parent.mkdir(exist_ok=True)
        os.replace(root / name, target)
        moved.append(target)
    if moved:  # both directory entries, before anyone relies on the move
        fsync_dir(root)
        fsync_dir(root / SUPERSEDED)
    return moved


def _clean_leftovers(root: Path) -> None:
    """Delete what interrupted saves left; put back a checkpoint set aside by an interrupted re-run."""
    for p in root.iterdir():
        if not _LEFTOVER.match(p.name):
            continue
        final = root / p.name.split(".tmp-", 1)[0]
        if ".tmp-old-" in p.name and not final.exists() and (p / MANIFEST).is_file():
            os.replace(p, final)
            log.warning("restored %s, set aside by an interrupted save", final)
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            log.info("removed %s, left by an interrupted save", p)
        else:
            p.unlink(missing_ok=True)


def _prune(root: Path, keep: int, current: Path) -> None:
    """Delete all but the `keep` newest complete checkpoints, never `current`, the one `best`
    names or one somebody holds (`checkpoint/best.py`)."""
    keep_names = protected(root)
    others = [p for p in reversed(list_checkpoints(root)) if p != current]
    for p in others[keep - 1:]:
        if p.name in keep_names:
            continue
        try:
            # Rename first: a half-deleted directory must never look like a complete checkpoint.
            doomed = p.with_name(f"{p.name}.tmp-del-{os.getpid()}")
            os.replace(p, doomed)
            shutil.rmtree(doomed)
            log.info("pruned checkpoint %s", p)
        except OSError as e:
            log.warning("could not prune checkpoint %s (%s); delete it by hand to free space", p, e)
