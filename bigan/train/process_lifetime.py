"""Processes that die with the process that started them (training workers with their launcher,
the evaluator with its trainer), and a training process that ends cleanly after its collectives.

A SIGKILL of `accelerate launch` (torchrun starts each worker in a session of its own) or of a
trainer (the OOM killer) gives its children no chance to stop them: they went on training and
checkpointing, and a restarted job ran beside them. So such a child asks the kernel for a
parent-death signal, `prctl(PR_SET_PDEATHSIG, SIGKILL)` through ctypes (no package wraps it that
we ship; Ray fate-shares its own processes the same way). Chosen over a watchdog thread polling
the parent's pid because the kernel delivers it at once, with no thread and no polling interval,
even to a process stuck in native code (a collective waiting for a dead peer, a DeepSpeed
initialisation) that a Python thread may never get the GIL from. SIGKILL, not SIGTERM: the
launcher is gone, no one reads the output, and a checkpoint is written so that a kill at any
moment leaves the previous one intact; a SIGTERM handler could only hang in a collective.

Its limits, and why they do not bite here: the signal follows the *thread* that started the
child (torchrun, `accelerate launch` and `multiprocessing` start theirs from the main thread);
a fork does not inherit it (DataLoader workers have torch's own parent check); and a parent that
died before the child armed it sends nothing, so the child compares its parent before and after
arming and exits if it changed (the window left is the child's start-up, before `train()`).

A worker that finished training could still die at exit with SIGABRT ("terminate called without
an active exception"; one run of the two-rank recovery test in CI): gloo's worker threads
outlive `train()`, and one that drops the last reference to a finished collective's tensors
during interpreter finalization must take the GIL, which CPython refuses by ending the thread
inside C++ noexcept frames (torch PR 179291 describes the race; torch 2.13 does not guard it).
So the process group `train()` created is destroyed by an atexit handler, while the interpreter
is whole: its destructor drains the work queue and joins those threads. It only joins them when
nothing else holds the group, and importing torch._inductor.config after the group exists (what
`torch.use_deterministic_algorithms` does) keeps a reference that outlives destroy (measured:
the threads stayed); the trainer therefore sets determinism before it builds the Accelerator.
A group someone else created (Ray's TorchTrainer, a test's spawn) is theirs to end. Not covered:
under ZeRO, DeepSpeed's engines and its clone of the world group hold the group past destroy
(tests/process_group.py measured it), so their threads stay until the process ends.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# What the launchers that wait for their workers put in a worker's environment: torchrun (which
# `accelerate launch` runs for several processes) and `accelerate launch` with one process.
LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION")


def die_with_parent(parent_pid: int | None = None) -> bool:
    """SIGKILL this process when its parent dies (Linux). `parent_pid`: the parent it must still
    have (default: the current one); if that parent is already gone the process exits now.
    False where the kernel offers no parent-death signal."""
    if not sys.platform.startswith("linux"):
        return False
    before = os.getppid() if parent_pid is None else parent_pid
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (%s): this process will outlive its parent",
                    os.strerror(ctypes.get_errno()))
        return False
    if os.getppid() != before:  # the parent died before the signal was armed: none will come
        log.error("the parent process %d exited before this one started; exiting", before)
        sys.stderr.flush()
        os._exit(1)
    return True


def started_by_launcher() -> str | None:
    """The environment variable that shows a launcher started this process and waits for it, or
    None (a process started by hand, whose parent is a shell: it must outlive a closed terminal
    under nohup, so it is never tied to its parent)."""
    return next((name for name in LAUNCHER_ENV if name in os.environ), None)


def die_with_launcher() -> None:
    """Tie this training process to the launcher that started it, if one did."""
    found = started_by_launcher()
    if found and die_with_parent():
        log.debug("started by a launcher (%s is set): dies with parent %d", found, os.getppid())


_ending_registered = False


def end_group_at_exit() -> None:
    """Destroy the default process group before interpreter finalization (atexit; once per
    process, whatever the number of calls). Call it right after creating the group."""
    global _ending_registered
    if not _ending_registered:
        atexit.register(_destroy_group)
        _ending_registered = True


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # no collective: it waits for this process's queued work only
