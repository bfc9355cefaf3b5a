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
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from serving.client import free_port


def spawn(fn: Callable[..., None], args: tuple = (), world: int = 2, backend: str = "gloo") -> None:
    """fn(rank, world, *args) in `world` processes of one group; returns when all have finished.
    fn must be importable by name (a module-level function), as `mp.spawn` pickles it. A failing
    rank raises torch.multiprocessing.ProcessRaisedException (its traceback in the message) or
    ProcessExitedException (killed by a signal) here."""
    mp.spawn(_rank_main, args=(world, free_port(), backend, fn, args), nprocs=world, join=True)


def _rank_main(rank: int, world: int, port: int, backend: str, fn: Callable[..., None],
               args: tuple) -> None:
    # The environment a launcher (torchrun, accelerate, Ray) would give each rank.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()
