"""One job per run directory: `RUN/run.lock`, held by the main process for the run's life.

Two jobs on one run directory save the same step directories, and the second's leftover cleanup
deletes the first's save in progress. So `train()` takes an exclusive `flock` on `RUN/run.lock`
before it touches a checkpoint, and keeps it until it returns or dies. The kernel releases an
flock when the last descriptor of its holder closes, which a SIGKILL or the OOM killer does too:
whether a job runs is what the lock says, never whether the file exists. The file's content
(host, pid, start time) only names the holder for the message a second job gets, and a clean
release empties it; a record left by a killed job is simply taken over and rewritten, with a line
in the log.

Only the main process (rank 0) takes the lock; every rank learns the outcome through one
collective (`parallel.any_rank`), so a refused job stops on every rank together instead of leaving
the others waiting in their next collective. A process forked while the lock is held (DataLoader
workers under the fork start method) would inherit the descriptor and keep the lock after its
parent was killed; `os.register_at_fork` closes the child's copy, which leaves the parent's lock
untouched. On NFS, Linux turns flock into an NFSv4 lock: it works across nodes, and a lock of a
node that died is released when the server's lease expires (90 s by default).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
_held: set[int] = set()  # descriptors of the locks this process holds


class RunLockError(RuntimeError):
    """The run directory is in use by another job, or cannot be locked; the message says which."""


def _close_in_child() -> None:
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):  # empty (a job killed between open and write) or damaged
        return {}
    return holder if isinstance(holder, dict) else {}


def describe(holder: dict) -> str:
    """'pid 123 on host-a, started 2026-12-07T01:57:39Z' (what is known of it)."""
    if not holder:
        return "a job that left no record of itself"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}")


def _alive_here(holder: dict) -> bool:
    """False when the holder ran on this host and its pid is gone."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _refusal(run_dir: Path, holder: dict) -> RunLockError:
    detail = "" if _alive_here(holder) else (
        "; that process is gone but a process it started still holds the lock "
        f"(`fuser -v {run_dir / LOCK_NAME}` names it)")
    return RunLockError(f"run directory {run_dir} is in use by {describe(holder)}{detail}: one job "
                        "per run directory; stop that job first, or train into another --out")


class RunLock:
    """An exclusive lock on `run_dir` (created if missing); RunLockError when another job holds
    it or the directory cannot be written. `release()` (or the process's death) ends it."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunLockError(f"cannot lock the run directory: {e.filename or self.path}: "
                               f"{e.strerror}") from e
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(self.fd)
            os.close(self.fd)
            raise _refusal(self.run_dir, holder) from None
        _held.add(self.fd)
        previous = _read_holder(self.fd)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, (json.dumps(self.holder) + "\n").encode(), 0)
        except OSError as e:  # a full disk: say so in one line, holding nothing
            self.release()
            raise RunLockError(f"cannot write {self.path}: {e.strerror}") from e
        if previous:  # a clean release empties the file: this holder died holding the lock
            log.info("took over %s from %s, which ended without releasing it (killed?)",
                     self.path, describe(previous))

    def release(self) -> None:
        if self.fd in _held:
            _held.discard(self.fd)
            with contextlib.suppress(OSError):  # emptied: the next holder knows this one ended
                os.ftruncate(self.fd, 0)
            os.close(self.fd)


@contextlib.contextmanager
def held(run_dir: str | Path, main: bool, device: torch.device) -> Iterator[RunLock | None]:
    """Hold `run_dir`'s lock for the block (the main process takes it; collective, so every rank
    raises RunLockError together when it is refused)."""
    from bigan.train import parallel  # torch: not needed to take or read a lock

    lock, error = None, None
    if main:
        try:
            lock = RunLock(run_dir)
        except RunLockError as e:
            error = e
    if parallel.any_rank(error is not None, device):
        raise error or RunLockError(f"run directory {run_dir}: the main process could not lock "
                                    "it (its message says why)")
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
