"""Training-step speed: the plain eager NCHW iteration against bigan's fast path, side by side.

For each (case, precision), two copies of G and D with the same initial weights run
`gan_iteration` (k D updates + 1 G update, the config's settings): `plain` as the reference
implementations run it (BigGAN-PyTorch, StudioGAN: NCHW, for-loop Adam; `speed.PLAIN`), and
`bigan` with its default `speed:` settings on this device (`auto`; `--speed FIELD=VALUE` sets one
instead, to measure a switch). They are
timed in alternating rounds (plain first in odd rounds, bigan first in even ones), so load from
other processes on a shared machine falls on both alike; each round's ratio plain/bigan and
the median ratio are reported, in wall time and in this process's CPU time (which other
processes' load disturbs far less: on a CPU, with one thread, it is the iteration's own work).
FLOPs of one iteration (each path's own: folded resampling does fewer) are counted by
`torch.utils.flop_counter` and set against a matmul peak
measured in the same run: the best GFLOP/s of large square matmuls over every thread count up
to the machine's cores (an upper bound for what any iteration on this machine reaches).

    python bench/train_step.py [--quick] [--cases biggan-32] [--rounds 3] [--speed memory_format=channels_last]
                               [--out bench/results]

`--against biggan-pytorch` times bigan's default path against BigGAN-PyTorch's own code instead
(`bench/train_vs_reference.py`, which takes the remaining options).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bigan import models  # noqa: E402
from bigan.config import ConfigError, ModelConfig, SpeedConfig, load_config  # noqa: E402
from bigan.train.optimizers import build_optimizers  # noqa: E402
from bigan.train.speed import PLAIN, FastPath  # noqa: E402
from bigan.train.step import Batch, StepRuntime, StepState, gan_iteration  # noqa: E402

# name -> (config file, overrides). 32 px is BigGAN-PyTorch's CIFAR setting (ch 64, 10 classes,
# the target case, no attention); 128 px is the paper's width (ch 96, attention at 64).
BIGGAN_128 = ROOT / "configs" / "biggan_128.yaml"
CASES = {
    "biggan-32": (BIGGAN_128, ["model.resolution=32", "model.num_classes=10", "model.ch=64",
                               "model.d_ch=64", "model.attention=[]", "loss.kind=hinge"]),
    "biggan-64": (BIGGAN_128, ["model.resolution=64", "model.attention=[32]"]),
    "biggan-128": (BIGGAN_128, []),
}
DEFAULT_BATCH = {"biggan-32": 32, "biggan-64": 16, "biggan-128": 8}
QUICK_BATCH = {"biggan-32": 8, "biggan-64": 4, "biggan-128": 2}

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def has_fast_bf16() -> bool:
    """bf16 runs in hardware on CUDA and on CPUs with AVX512-BF16/AMX; elsewhere it is emulated
    (here: ~0.6 GFLOP/s, 150x slower than fp32), so training in it would only time the emulation."""
    if DEVICE.type == "cuda":
        return True
    cpu = torch.backends.cpu.get_cpu_capability()
    return "AMX" in cpu or bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def matmul_peak(dtype: torch.dtype, seconds: float = 1.0) -> dict:
    """The best GFLOP/s of an n x n x n matmul in `dtype` over sizes and thread counts.

    A peak must bound what the iteration reaches: one size at one thread count undershoots
    (a 2048 matmul at the bench's thread count measured below the iteration's own rate), so
    several large sizes run at every thread count from 1 to the core count, best of repeated
    timings each, and the maximum is kept. Returns {gflop_per_sec, n, threads}."""
    saved = torch.get_num_threads()
    if DEVICE.type == "cuda":
        sizes, thread_counts = (4096, 8192), (saved,)
    else:
        slow = dtype != torch.float32 and not has_fast_bf16()
        sizes = (256, 512) if slow else (1024, 2048, 3072)
        thread_counts = range(1, (os.cpu_count() or 1) + 1)
    best = {"gflop_per_sec": 0.0, "n": 0, "threads": 0}
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for n in sizes:
                a = torch.randn(n, n, dtype=dtype, device=DEVICE)
                b = torch.randn(n, n, dtype=dtype, device=DEVICE)
                a @ b
                fastest, t_end = float("inf"), time.perf_counter() + seconds
                while time.perf_counter() < t_end:
                    _sync()
                    t = time.perf_counter()
                    a @ b
                    _sync()
                    fastest = min(fastest, time.perf_counter() - t)
                rate = 2 * n ** 3 / fastest / 1e9
                if rate > best["gflop_per_sec"]:
                    best = {"gflop_per_sec": rate, "n": n, "threads": threads}
    finally:
        torch.set_num_threads(saved)
    return best


def random_batch(m: ModelConfig, n: int, device: torch.device, generator: torch.Generator,
                 rows: tuple[int, int] | None = None) -> Batch:
    """n random latents, classes and "real" images in [-1, 1] of model `m`'s shapes on `device`:
    the step's cost does not depend on what the pixels are."""
    return Batch(z=torch.randn(n, m.dim_z, device=device),
                 fake_y=torch.randint(0, m.num_classes, (n,), device=device), generator=generator,
                 real=torch.rand(n, 3, m.resolution, m.resolution, device=device) * 2 - 1,
                 real_y=torch.randint(0, m.num_classes, (n,), device=device), rows=rows)


class Runner:
    """One path's G, D, optimizers and a `one()` that runs a full iteration on fresh batches."""

    def __init__(self, cfg, fast: FastPath, precision: str, batch: int):
        torch.manual_seed(0)
        self.cfg, self.fast, self.batch = cfg, fast, batch
        self.G, self.D = (m.to(DEVICE) for m in models.build(cfg.model))
        fast.models(self.G, self.D)
        self.opt_G, self.opt_D = build_optimizers(self.G, self.D, cfg.optim, fast.optimizer)
        bf16 = precision == "bf16"
        self.runtime = StepRuntime(
            autocast=lambda: torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16))
        self.gen = torch.Generator().manual_seed(0)

    def one(self) -> None:
        m, k = self.cfg.model, self.cfg.optim.d_steps
        batches = [random_batch(m, self.batch, DEVICE, self.gen) for _ in range(k + 1)]
        gan_iteration(self.G, self.D, self.opt_G, self.opt_D,
                      [self.fast.batch(b) for b in batches[:-1]], batches[-1], self.cfg.loss,
                      StepState(), self.runtime, d_call=self.fast.d_call)

    def time(self, iters: int) -> tuple[float, float]:
        """(wall seconds, this process's CPU seconds) per iteration."""
        _sync()
        t, c = time.perf_counter(), time.process_time()
        for _ in range(iters):
            self.one()
        _sync()
        return (time.perf_counter() - t) / iters, (time.process_time() - c) / iters


def bench_case(name: str, precision: str, batch: int, iters: int, rounds: int,
               speed: SpeedConfig, baseline: SpeedConfig | None = None) -> dict:
    path, overrides = CASES[name]
    cfg = load_config(path, overrides + [f"train.batch_size={batch}"])
    fast = FastPath.resolve(speed, DEVICE)  # bigan's default on this device unless --speed says
    # "plain" is PLAIN unless --baseline-speed makes it another bigan path (one switch's A/B)
    base = PLAIN if baseline is None else FastPath.resolve(baseline, DEVICE)
    paths = {"plain": Runner(cfg, base, precision, batch), "bigan": Runner(cfg, fast, precision, batch)}
    for r in paths.values():
        r.one()  # warm-up: allocator, lazy init, oneDNN/cuDNN algorithm choice
    flops = {}
    for p, r in paths.items():  # each path's own count: folded resampling does fewer FLOPs
        counter = FlopCounterMode(display=False)
        with counter:
            r.one()
        flops[p] = counter.get_total_flops()
    per_round = []
    for i in range(rounds):
        order = ("plain", "bigan") if i % 2 == 0 else ("bigan", "plain")
        sec = {p: paths[p].time(iters) for p in order}
        (pw, pc), (bw, bc) = sec["plain"], sec["bigan"]
        per_round.append({"plain_sec": pw, "bigan_sec": bw, "ratio": pw / bw,
                          "plain_cpu_sec": pc, "bigan_cpu_sec": bc, "cpu_ratio": pc / bc})
        print(f"  {name} {precision} round {i + 1}: plain {pw:.3f} s  bigan {bw:.3f} s  ratio "
              f"{pw / bw:.2f}x  (CPU time: {pc:.3f} / {bc:.3f} s = {pc / bc:.2f}x)", flush=True)
    plain_sec = statistics.median(r["plain_sec"] for r in per_round)
    bigan_sec = statistics.median(r["bigan_sec"] for r in per_round)
    return {"case": name, "precision": precision, "batch": batch, "d_steps": cfg.optim.d_steps,
            "loss": cfg.loss.kind, "attention": cfg.model.attention,
            "bigan_path": asdict(fast), "plain_path": asdict(base),
            "params_G": sum(p.numel() for p in paths["plain"].G.parameters()),
            "params_D": sum(p.numel() for p in paths["plain"].D.parameters()),
            "iters_per_round": iters, "rounds": per_round,
            "median_ratio": statistics.median(r["ratio"] for r in per_round),
            "median_cpu_ratio": statistics.median(r["cpu_ratio"] for r in per_round),
            "plain_sec_per_iter": plain_sec, "bigan_sec_per_iter": bigan_sec,
            "bigan_img_per_sec": batch * (cfg.optim.d_steps + 1) / bigan_sec,
            "gflop_per_iter": flops["plain"] / 1e9, "bigan_gflop_per_iter": flops["bigan"] / 1e9,
            "plain_gflop_per_sec": flops["plain"] / plain_sec / 1e9,
            "bigan_gflop_per_sec": flops["bigan"] / bigan_sec / 1e9}


def main(argv: list[str] | None = None) -> dict | None:
    against = argparse.ArgumentParser(add_help=False)
    against.add_argument("--against", choices=["biggan-pytorch"])
    known, rest = against.parse_known_args(argv)
    if known.against:  # the reference's own code: its own bench, which takes the other options
        import train_vs_reference  # beside this file (bench/ is on sys.path as the script's folder)
        return train_vs_reference.main(rest)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[against])
    parser.add_argument("--quick", action="store_true", help="small batches, 1 iteration per round")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--precisions", default="auto",
                        help="comma-separated fp32,bf16 (auto: bf16 too where the hardware has it)")
    parser.add_argument("--batch", type=int, default=0, help="batch per case (0: the case's own)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (>= 1)")
    parser.add_argument("--iters", type=int, default=0, help="iterations per path per round (0: 3, quick: 1)")
    parser.add_argument("--speed", action="append", default=[], metavar="FIELD=VALUE",
                        help="a `speed:` setting for the bigan path instead of its auto value, e.g. "
                             "memory_format=channels_last (repeatable)")
    parser.add_argument("--baseline-speed", action="append", default=None, metavar="FIELD=VALUE",
                        help="time against bigan's path with this `speed:` setting instead of the "
                             "plain path, e.g. d_call=separate (repeatable)")
    parser.add_argument("--out", default="bench/results", help="directory for the JSON")
    parser.add_argument("--name", default="train_step.json", help="JSON file name")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    try:  # the config's own override parser: unknown fields and bad values named as in a config
        speed = load_config(None, [f"speed.{kv}" for kv in args.speed]).speed
        baseline = None if args.baseline_speed is None else \
            load_config(None, [f"speed.{kv}" for kv in args.baseline_speed]).speed
    except ConfigError as e:
        parser.error(f"--speed/--baseline-speed: {e}")
    precisions = (["fp32", "bf16"] if has_fast_bf16() else ["fp32"]) if args.precisions == "auto" \
        else [p.strip() for p in args.precisions.split(",")]
    peaks = {p: matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16) for p in precisions}
    iters = args.iters or (1 if args.quick else 3)
    rows = []
    for name in cases:
        batch = args.batch or (QUICK_BATCH if args.quick else DEFAULT_BATCH)[name]
        for precision in precisions:
            r = bench_case(name, precision, batch, iters, max(1, args.rounds), speed, baseline)
            r["peak_gflop_per_sec"] = peaks[precision]["gflop_per_sec"]
            r["bigan_fraction_of_peak"] = r["bigan_gflop_per_sec"] / r["peak_gflop_per_sec"]
            rows.append(r)
    print(f"\n{'case':11s} {'prec':5s} {'batch':>5s} {'plain s/it':>10s} {'bigan s/it':>10s} "
          f"{'ratios per round':>24s} {'median':>7s} {'CPU-time':>8s} {'GFLOP/s':>8s} {'of peak':>7s}")
    for r in rows:
        ratios = " ".join(f"{x['ratio']:.2f}" for x in r["rounds"])
        print(f"{r['case']:11s} {r['precision']:5s} {r['batch']:5d} {r['plain_sec_per_iter']:10.3f} "
              f"{r['bigan_sec_per_iter']:10.3f} {ratios:>24s} {r['median_ratio']:6.2f}x "
              f"{r['median_cpu_ratio']:7.2f}x "
              f"{r['bigan_gflop_per_sec']:8.1f} {r['bigan_fraction_of_peak']:7.0%}")
    for p, peak in peaks.items():
        print(f"matmul peak {p}: {peak['gflop_per_sec']:.1f} GFLOP/s "
              f"(n={peak['n']}, {peak['threads']} threads)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                          "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "device": str(DEVICE),
                          "gpu": torch.cuda.get_device_name() if DEVICE.type == "cuda" else None,
                          "load_avg_at_start": os.getloadavg()},
              "matmul_peak": peaks, "bf16_hardware": has_fast_bf16(), "results": rows}
    (out / args.name).write_text(json.dumps(report, indent=2))
    print(f"wrote {out / args.name}")
    return report


if __name__ == "__main__":
    main()
