"""Data-parallel scaling: images/s of 1 vs 2 processes (DDP and ZeRO-2) and communication time.

Weak scaling, as on a cluster: every process trains the same per-worker batch, so ideal 2-process
throughput is twice the 1-process one. Each case runs in fresh processes on a real gloo group on
127.0.0.1 (NCCL on GPUs), one thread per process, through the trainer's own `parallel.prepare` and
`gan_iteration`. Reported per case: seconds per iteration, images/s (D and G images), speed-up
over 1 process, and scaling efficiency. Communication per iteration is measured two ways in the
same process group: the time DDP spends inside its gradient all-reduces during training, and a
stand-alone all-reduce of the iteration's gradient volume (D's gradients once per D step, G's
once), which is also what ZeRO-2's reduce-scatter + all-gather moves. The compute/communication
ratio is what docs/benchmarks.md's scaling paragraph extrapolates from.

    python bench/scaling.py [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bigan import models  # noqa: E402
from bigan.config import load_config  # noqa: E402
from bigan.train import parallel  # noqa: E402
from bigan.train.optimizers import build_optimizers  # noqa: E402
from bigan.train.step import StepState, gan_iteration  # noqa: E402
from tests.process_group import spawn  # noqa: E402

from train_step import CASES as ALL_CASES, random_batch  # noqa: E402  (bench/ is on sys.path as a script)

# BigGAN-PyTorch's CIFAR setting (32 px, ch 64) and the 64 px config: real layer shapes at sizes
# that keep a CPU iteration in seconds.
CASES = {name: ALL_CASES[name] for name in ("biggan-32", "biggan-64")}


def _allreduce_seconds(numels: list[int], device: torch.device, repeats: int) -> float:
    """Median time of all-reducing flat fp32 buffers of these sizes (one iteration's gradients)."""
    bufs = [torch.ones(n, device=device) for n in numels]
    times = []
    for _ in range(repeats):
        dist.barrier()
        t = time.perf_counter()
        for b in bufs:
            dist.all_reduce(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _worker(rank: int, world: int, case: str, strategy: str, batch: int, iters: int,
            out: str) -> None:
    """One rank of a case, in the process group tests.process_group.spawn has set up."""
    device = torch.device(f"cuda:{rank}") if torch.cuda.is_available() else torch.device("cpu")
    path, overrides = CASES[case]
    cfg = load_config(path, overrides + [f"train.batch_size={batch * world}"])
    torch.manual_seed(0)
    G, D = (m.to(device) for m in models.build(cfg.model))
    opt_G, opt_D = build_optimizers(G, D, cfg.optim)
    p = parallel.prepare(strategy, G, D, opt_G, opt_D, cfg.optim.grad_clip, device,
                         batch_per_worker=batch)
    comm = [0.0]
    if strategy == "ddp":  # time DDP's all-reduces where they happen
        inner = parallel.average_gradients

        def timed(module):
            t = time.perf_counter()
            inner(module)
            comm[0] += time.perf_counter() - t
        parallel.average_gradients = timed
    gen = torch.Generator().manual_seed(rank)

    def one() -> None:
        batches = [random_batch(cfg.model, batch, device, gen, rows=(rank * batch, batch * world))
                   for _ in range(cfg.optim.d_steps + 1)]
        gan_iteration(p.G, p.D, p.opt_G, p.opt_D, batches[:-1], batches[-1], cfg.loss, StepState(),
                      p.d_runtime, g_runtime=p.g_runtime)

    one()  # warm-up: allocator, DeepSpeed buffers
    dist.barrier()
    comm[0] = 0.0
    t = time.perf_counter()
    for _ in range(iters):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    sec = (time.perf_counter() - t) / iters
    n_g = sum(q.numel() for q in G.parameters())
    n_d = sum(q.numel() for q in D.parameters())
    volume = [n_d] * cfg.optim.d_steps + [n_g]
    standalone = _allreduce_seconds(volume, device, 5) if world > 1 else 0.0
    if rank == 0:
        row = {"case": case, "strategy": strategy, "processes": world, "batch_per_worker": batch,
               "d_steps": cfg.optim.d_steps, "params_G": n_g, "params_D": n_d,
               "sec_per_iter": sec,
               "img_per_sec": world * batch * (cfg.optim.d_steps + 1) / sec,
               "grad_mib_per_iter": sum(volume) * 4 / 2**20,
               "comm_sec_in_training": comm[0] / iters if strategy == "ddp" else None,
               "comm_sec_standalone": standalone}
        Path(out).write_text(json.dumps(row))


def run_case(case: str, strategy: str, world: int, batch: int, iters: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        backend = parallel.backend_for(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        spawn(_worker, (case, strategy, batch, iters, str(out)), world, backend)
        return json.loads(out.read_text())


def _fmt(value: float | None, spec: str) -> str:
    return "-" if not value else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="biggan-32 only, 1 timed iteration")
    parser.add_argument("--out", default="bench/results", help="directory for scaling.json")
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    if torch.cuda.is_available() and gpus < 2:
        print(f"only {gpus} GPU: the 2-process cases need 2; run on a 2-GPU machine")
        return
    cases = ["biggan-32"] if args.quick else list(CASES)
    batch, iters = (8, 1) if args.quick else (8, 2)  # per worker; CPU iterations take seconds
    rows = []
    print(f"{'case':10s} {'strategy':8s} {'procs':>5s} {'s/iter':>7s} {'img/s':>7s} {'speed-up':>8s} "
          f"{'effic.':>6s} {'grad MiB':>8s} {'comm s (train)':>14s} {'comm s (alone)':>14s} {'compute/comm':>12s}")
    for case in cases:
        base = None
        for strategy, world in (("ddp", 1), ("ddp", 2), ("zero2", 2)):
            r = run_case(case, strategy, world, batch, iters)
            base = base or r
            r["speedup"] = r["img_per_sec"] / base["img_per_sec"]
            r["efficiency"] = r["speedup"] / world
            comm = r["comm_sec_standalone"]
            r["compute_to_comm"] = (base["sec_per_iter"] / comm) if comm else None
            rows.append(r)
            print(f"{case:10s} {strategy:8s} {world:5d} {r['sec_per_iter']:7.2f} {r['img_per_sec']:7.1f} "
                  f"{r['speedup']:7.2f}x {r['efficiency']:6.0%} {r['grad_mib_per_iter']:8.1f} "
                  f"{_fmt(r['comm_sec_in_training'], '.3f'):>14s} {_fmt(comm, '.3f'):>14s} "
                  f"{_fmt(r['compute_to_comm'], '.0f'):>12s}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch": torch.__version__,
                          "device": "cuda" if torch.cuda.is_available() else "cpu",
                          "backend": "nccl" if torch.cuda.is_available() else "gloo"},
              "mode": "weak scaling (fixed batch per worker)", "results": rows}
    (out / "scaling.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'scaling.json'}")


if __name__ == "__main__":
    main()
