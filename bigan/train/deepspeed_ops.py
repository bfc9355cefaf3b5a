"""DeepSpeed's JIT-built C++ ops at a ZeRO start: the one bigan never uses is not built, and a
lock left by a killed build is reported instead of waited for forever.

`deepspeed.initialize` creates DeepSpeed's comm backend, which on the CPU accelerator loads
`deepspeed_shm_comm` (shared-memory collectives) through torch's JIT extension loader. That loader
takes a "baton" on every load, built or not: a `lock` file in the op's build directory under
`~/.cache/torch_extensions` (or `$TORCH_EXTENSIONS_DIR`), created with O_EXCL and removed when
done; everyone else polls until the file is gone. A process killed while holding it (SIGKILL
during `deepspeed.initialize`, a test timeout) leaves the file, and every later ZeRO start on the
machine waits for ever. The first build also costs minutes (measured below).

- The shm op serves only `inference_all_reduce` (DeepSpeed's tensor-parallel inference), never
  training, so `without_unused_ops()` hands DeepSpeed no op for it: no build, no baton, no
  shared-memory segment. Training's collectives are torch.distributed's either way.
- Any other op DeepSpeed builds (a user's `deepspeed_overrides` asking for CPU Adam offload, a
  later DeepSpeed) still takes a baton; `no_endless_build_wait()` makes waiting for one fail
  with `DeepSpeedOpsError`, naming the file, once no process on this host has had it open for a
  few seconds (a builder keeps it open from creation to removal), instead of hanging.

Not a per-run extensions directory: the op would be compiled again for every run. Measured on
this repository's 2-core machine under load: the shm op's first build took 722 s.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from pathlib import Path
from typing import Iterator

STALE_AFTER_S = 3.0  # no opener for this long: the holder is dead (release closes, then removes)
_SCAN_EVERY_S = 1.0  # a /proc scan costs milliseconds; the loader polls every 0.1 s


class DeepSpeedOpsError(RuntimeError):
    """A DeepSpeed op cannot be loaded (a stale build lock); the message says what to remove."""


def held_open(path: str | Path) -> bool:
    """Whether any process on this host (that this user may inspect) has `path` open."""
    target = os.path.realpath(path)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return True
            except OSError:
                continue
    return False


def _stale_message(path: str) -> str:
    return (f"DeepSpeed op build lock {path} was left by a killed process (no process on this "
            f"host has had it open for {STALE_AFTER_S:g} s), so every start would wait for it "
            f"for ever; if no other machine builds into {Path(path).parent}, delete it "
            f"(rm {path}) and start again")


@contextlib.contextmanager
def no_endless_build_wait() -> Iterator[None]:
    """For the duration: torch's wait for another process's extension build raises
    DeepSpeedOpsError when the lock it waits for is stale, instead of polling for ever."""
    from torch.utils.file_baton import FileBaton

    def wait(baton: FileBaton) -> None:
        path, unheld_since, scanned = baton.lock_file_path, None, 0.0
        while os.path.exists(path):
            now = time.monotonic()
            if now - scanned >= _SCAN_EVERY_S:
                scanned = now
                unheld_since = None if held_open(path) else (unheld_since or now)
            if unheld_since is not None and now - unheld_since >= STALE_AFTER_S:
                raise DeepSpeedOpsError(_stale_message(path))
            time.sleep(baton.wait_seconds)

    saved = FileBaton.wait
    FileBaton.wait = wait
    try:
        yield
    finally:
        FileBaton.wait = saved


@contextlib.contextmanager
def without_unused_ops() -> Iterator[None]:
    """For the duration: DeepSpeed's comm backend, created at the first `deepspeed.initialize`
    of the process, builds no shared-memory op (deepspeed.comm.torch.build_shm_op returns None,
    which DeepSpeed handles as an accelerator without one)."""
    # By path: `from deepspeed.comm import torch` is the torch package deepspeed.comm imports.
    ds_comm = importlib.import_module("deepspeed.comm.torch")
    saved = getattr(ds_comm, "build_shm_op", None)
    if saved is None:  # a DeepSpeed without it: nothing to skip
        yield
        return
    ds_comm.build_shm_op = lambda: None
    try:
        yield
    finally:
        ds_comm.build_shm_op = saved
