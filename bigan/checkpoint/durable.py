"""Writing files so that a crash never leaves half of one: fsync, directory fsync, rename into
place (setting aside what is there), the sha256 seal a manifest records, telling a full disk
from other write failures, and finding a read-only directory before any work is done. Standard
library only; `store.py` builds checkpoints from these.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def no_space(e: BaseException | None) -> bool:
    """Whether a write failed for lack of space (ENOSPC, EDQUOT), anywhere in its chain: torch's
    zip writer reports a full disk as 'unexpected pos' with the OSError only as its context, and
    safetensors (Rust) and other ranks report it as text."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).lower()
        if ((isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
                or "no space left on device" in text or "os error 28" in text):
            return True
        e = e.__cause__ or e.__context__
    return False


def failure_text(e: BaseException) -> str:
    """One line for a failed write: 'no space left on device', else the exception's type and
    message."""
    return "no space left on device" if no_space(e) else f"{type(e).__name__}: {e}"


def seal(path: Path) -> dict:
    """fsync a written file and return its manifest entry (sha256 of the bytes on disk, size)."""
    with open(path, "rb+") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        os.fsync(f.fileno())
    return {"sha256": digest, "bytes": path.stat().st_size}


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the new one, whole."""
    tmp = path.with_name(path.name + ".tmp")
    write_durably(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make renames and new entries in `path` durable (POSIX; Windows has no directory fsync)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(tmp: Path, final: Path) -> None:
    """Rename tmp to final. A re-run may find final present; a directory cannot be renamed over a
    non-empty one, so the old one is set aside under a leftover name (restored if the swap fails,
    or by the next save's cleanup after a crash in between) and deleted once the new one is durable.
    """
    aside = None
    if final.exists():
        aside = final.with_name(f"{final.name}.tmp-old-{os.getpid()}")
        os.replace(final, aside)
    try:
        os.replace(tmp, final)
    except BaseException:
        if aside is not None:
            os.replace(aside, final)
        raise
    fsync_dir(final.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def check_writable(path: Path) -> None:
    """Create a file in the directory `path` and remove it: OSError (naming the directory) when
    a directory mode or a read-only file system forbids writing there. Renames and new files
    need the directory writable, which writing an existing file does not show. A missing
    directory is not created (a run refused later must leave nothing behind): its nearest
    existing parent, which creating it will need writable, is probed instead."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    with tempfile.NamedTemporaryFile(dir=probe, prefix=".write-probe-"):
        pass
