"""Training-step throughput of the BigGAN configs, against a matmul peak measured in the same run.

For each (config, precision): iterations/s and images/s of `gan_iteration` (k D steps + 1 G
step, the paper's settings), the FLOPs of one iteration counted by `torch.utils.flop_counter`,
the achieved GFLOP/s, and its ratio to the peak GFLOP/s of a large square matmul in the same
dtype, timed in this same process (machines are noisy; ratios compare like with like).

    python bench/train_step.py [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bigan import models  # noqa: E402
from bigan.config import ModelConfig, load_config  # noqa: E402
from bigan.train.optimizers import build_optimizers  # noqa: E402
from bigan.train.step import Batch, StepRuntime, StepState, gan_iteration  # noqa: E402

# name -> (config file, overrides). 32 px is BigGAN-PyTorch's CIFAR setting (ch 64, 10 classes).
# Each case trains with its config's own optimizer settings (build_optimizers(G, D, cfg.optim)),
# as the trainer would.
BIGGAN_128 = ROOT / "configs" / "biggan_128.yaml"
CASES = {
    "biggan-32": (BIGGAN_128, ["model.resolution=32", "model.num_classes=10", "model.ch=64",
                               "model.d_ch=64", "model.attention=[]"]),
    "biggan-64": (BIGGAN_128, ["model.resolution=64", "model.attention=[32]"]),
    "biggan-128": (BIGGAN_128, []),
}


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


def matmul_peak(dtype: torch.dtype, seconds: float = 2.0) -> float:
    """GFLOP/s of an n x n x n matmul in `dtype`, best of repeated timings."""
    n = 8192 if DEVICE.type == "cuda" else (2048 if dtype == torch.float32 or has_fast_bf16() else 512)
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)
    a @ b
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        _sync()
        t = time.perf_counter()
        a @ b
        _sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def random_batch(m: ModelConfig, n: int, device: torch.device, generator: torch.Generator,
                 rows: tuple[int, int] | None = None) -> Batch:
    """n random latents, classes and "real" images in [-1, 1] of model `m`'s shapes on `device`:
    the step's cost does not depend on what the pixels are."""
    return Batch(z=torch.randn(n, m.dim_z, device=device),
                 fake_y=torch.randint(0, m.num_classes, (n,), device=device), generator=generator,
                 real=torch.rand(n, 3, m.resolution, m.resolution, device=device) * 2 - 1,
                 real_y=torch.randint(0, m.num_classes, (n,), device=device), rows=rows)


def bench_case(name: str, precision: str, batch: int, iters: int) -> dict:
    path, overrides = CASES[name]
    cfg = load_config(path, overrides + [f"train.batch_size={batch}"])
    torch.manual_seed(0)
    G, D = (m.to(DEVICE) for m in models.build(cfg.model))
    opt_G, opt_D = build_optimizers(G, D, cfg.optim)
    bf16 = precision == "bf16"
    runtime = StepRuntime(autocast=lambda: torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16))
    gen = torch.Generator().manual_seed(0)

    def one() -> None:
        batches = [random_batch(cfg.model, batch, DEVICE, gen) for _ in range(cfg.optim.d_steps + 1)]
        gan_iteration(G, D, opt_G, opt_D, batches[:-1], batches[-1], cfg.loss, StepState(), runtime)

    one()  # warm-up: allocator, lazy init
    counter = FlopCounterMode(display=False)
    with counter:
        one()
    flops = counter.get_total_flops()
    _sync()
    t = time.perf_counter()
    for _ in range(iters):
        one()
    _sync()
    sec = (time.perf_counter() - t) / iters
    images = batch * (cfg.optim.d_steps + 1)  # D sees k real+fake batches, G one fake batch
    return {"case": name, "precision": precision, "batch": batch, "d_steps": cfg.optim.d_steps,
            "params_G": sum(p.numel() for p in G.parameters()),
            "params_D": sum(p.numel() for p in D.parameters()),
            "sec_per_iter": sec, "iter_per_sec": 1 / sec, "img_per_sec": images / sec,
            "real_img_per_sec": batch * cfg.optim.d_steps / sec,  # what the data loader must supply
            "gflop_per_iter": flops / 1e9, "gflop_per_sec": flops / sec / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed iteration, small batches")
    parser.add_argument("--out", default="bench/results", help="directory for train_step.json")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    peaks = {p: matmul_peak(dt) for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    batches = {"biggan-32": 8 if args.quick else 32, "biggan-64": 4 if args.quick else 16,
               "biggan-128": 2 if args.quick else 8}
    rows = []
    precisions = ("fp32", "bf16") if has_fast_bf16() else ("fp32",)
    if "bf16" not in precisions:
        print(f"bf16 skipped: no bf16 hardware on this {DEVICE.type} "
              f"(bf16 matmul {peaks['bf16']:.1f} GFLOP/s vs fp32 {peaks['fp32']:.0f})")
    for name in CASES:
        for precision in precisions:
            r = bench_case(name, precision, batches[name], iters=1 if args.quick else 3)
            r["peak_gflop_per_sec"] = peaks[precision]
            r["fraction_of_peak"] = r["gflop_per_sec"] / peaks[precision]
            rows.append(r)
            print(f"{name:11s} {precision:5s} batch {r['batch']:3d}  {r['iter_per_sec']:7.3f} it/s "
                  f"{r['img_per_sec']:8.1f} img/s  {r['gflop_per_sec']:7.1f} GFLOP/s "
                  f"({r['fraction_of_peak']:.0%} of {peaks[precision]:.0f} peak)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "device": str(DEVICE)},
              "matmul_peak_gflop_per_sec": peaks, "bf16_hardware": has_fast_bf16(), "results": rows}
    (out / "train_step.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'train_step.json'}")


if __name__ == "__main__":
    main()
