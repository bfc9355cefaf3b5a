"""Several real processes in one torch.distributed group on 127.0.0.1, for the tests and benches
that check data parallelism by hand: `spawn(fn, args, world)` runs fn(rank, world, *args) in
`world` fresh processes, each joined to the group (gloo; NCCL when the bench asks for it on GPUs)
on a free loopback port, with one thread per process, and the group torn down after fn.

It lives beside the tests, not in `bigan/`, because the product never bootstraps a group itself
(`accelerate launch` and Ray's TorchTrainer do, from their own environment variables); the
benches import it with the repository root on sys.path (`from tests.process_group import spawn`).
The free port comes from `serving.client.free_port`, the one copy of that."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from serving.client import free_port


def spawn(fn: Callable[..., None], args: tuple = (), world: int = 2, backend: str = "gloo",
          timeout: float | None = None) -> None:
    """fn(rank, world, *args) in `world` processes of one group; returns when all have finished.
    fn must be importable by name (a module-level function), as `mp.spawn` pickles it. A failing
    rank raises torch.multiprocessing.ProcessRaisedException (its traceback in the message) or
    ProcessExitedException (killed by a signal) here. With `timeout`, ranks still running that
    many seconds after the start are killed and TimeoutError raised: a test of ranks that must
    stop together fails, instead of hanging, where one is left waiting in a collective."""
    context = mp.start_processes(_rank_main, args=(world, free_port(), backend, fn, args),
                                 nprocs=world, join=False, start_method="spawn")
    deadline = None if timeout is None else time.monotonic() + timeout
    while not context.join(None if deadline is None else max(0.0, deadline - time.monotonic())):
        if deadline is not None and time.monotonic() >= deadline:
            running = [p for p in context.processes if p.is_alive()]
            for process in running:
                process.kill()
                process.join()
            raise TimeoutError(f"{len(running)} of {world} ranks of {fn.__name__} still ran "
                               f"after {timeout:g} s (waiting in a collective?); killed")


def _rank_main(rank: int, world: int, port: int, backend: str, fn: Callable[..., None],
               args: tuple) -> None:
    # The environment a launcher (torchrun, accelerate, Ray) would give each rank.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    except BaseException:
        dist.destroy_process_group()
        raise
    # Leave without interpreter finalization, once every rank is past its last collective.
    # DeepSpeed keeps references to the process groups (its clone of the world group, the
    # engines), so their native threads outlive destroy_process_group(): measured on a ZeRO-2
    # worker, pt_gloo_runloop x4, gloo_tcp_loop x2 and pt_tcpstore_uv still run after it, with
    # torch's or DeepSpeed's destroy. During finalization a gloo thread that drops the last
    # reference to a finished work's tensors must take the GIL; CPython ends such a thread
    # with pthread_exit, whose forced unwind through C++ noexcept frames calls std::terminate
    # ("terminate called without an active exception", about one run in ten of the ZeRO-2
    # parity job under load; torch PR 179291 describes the same race). fn has written its
    # results by now, so nothing is lost by skipping finalization.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
