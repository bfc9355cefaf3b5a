"""Training-iteration speed against BigGAN-PyTorch's own code, side by side on one machine.

`bench/train_step.py` times bigan's fast path against bigan's own plain path; this bench times it
against the reference implementation itself: BigGAN-PyTorch's `BigGAN.Generator`,
`BigGAN.Discriminator` and `BigGAN.G_D` (its `layers.py`: its spectral norm, conditional batch
norm, attention), the Adam optimizers those constructors build, and one iteration of
`train_fns.GAN_training_function` (num_D_steps D updates, each one D call on fake and real
concatenated, then one G update; hinge, its `losses.py`; toggle_grads). The reference code is not
part of bigan and is never copied into it: fetch it yourself and name its folder,

    git clone https://github.com/ajbrock/BigGAN-PyTorch
    BIGGAN_PYTORCH_DIR=BigGAN-PyTorch python bench/train_step.py --against biggan-pytorch
    # or: python bench/train_vs_reference.py --reference-dir BigGAN-PyTorch [--cases biggan-32]

Without it the bench prints that and exits 0 (a skip, not a failure).

Both sides get the same nets (bench/train_step.py's CASES: BigGAN-32 ch 64 on 10 classes without
attention; BigGAN-128 at the paper's width, ch 96, attention at 64, 1,000 classes), batch, latent
and shared-embedding sizes, hierarchical z, orthogonal init, spectral-norm and batch-norm
epsilons, Adam (lrs, betas, eps), D steps per G step, G's orthogonal regularization weight and
thread count, fp32. bigan runs its default `speed:` path (`auto` on this device). They are timed
in alternating rounds (bigan first in odd rounds), each round's ratio reference/bigan in wall
time and in this process's CPU time is reported with the median, min and max over rounds, and
each side's FLOPs per iteration (`torch.utils.flop_counter.FlopCounterMode`) and GFLOP/s.

Shims, applied only while the reference modules import and undone after (`load_reference`):
its `utils.py` imports torchvision and its `datasets.py` (torchvision, h5py) for data loading this
bench never does, so where torchvision is missing it and `datasets` are stand-in modules; its
top-level module names (`utils`, `layers`, `losses`, `datasets`, ...) are taken out of
`sys.modules` again so they cannot shadow same-named packages (Hugging Face `datasets`).
`train_fns` prints a line per iteration when G's ortho reg is on; that output is swallowed.
Its `utils.prepare_z_y` wraps z and y in `utils.Distribution`, a `torch.Tensor` subclass: since
torch 1.7 every tensor computed from one is a subclass instance too, so each op of G and D would
run through `__torch_function__` (overhead the code did not have when written, and
`FlopCounterMode` fails on it); z and y here are plain tensors with the same `sample_()` draws.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step  # noqa: E402  (bench/train_step.py: cases, bigan's runner)

ENV = "BIGGAN_PYTORCH_DIR"
HOW_TO_GET = (f"BigGAN-PyTorch not found: git clone https://github.com/ajbrock/BigGAN-PyTorch and "
              f"set {ENV}=<that folder> (or pass --reference-dir); skipping")
# Top-level names the reference's modules take (and the shims): removed again after import.
_REFERENCE_NAMES = ("BigGAN", "layers", "losses", "utils", "train_fns", "datasets", "animal_hash",
                    "sync_batchnorm", "torchvision")


def _stand_in(name: str) -> types.ModuleType:
    """A module whose every attribute is a placeholder class: enough for import-time references
    such as `utils.dset_dict = {'C10': dset.CIFAR10, ...}`."""
    module = types.ModuleType(name)
    module.__getattr__ = lambda attr: type(attr, (), {})
    return module


def load_reference(folder: Path) -> types.SimpleNamespace:
    """BigGAN-PyTorch's `BigGAN`, `train_fns` and `utils` modules, imported from `folder`."""
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] in _REFERENCE_NAMES}
    for n in saved:
        del sys.modules[n]
    sys.path.insert(0, str(folder))
    try:
        if importlib.util.find_spec("torchvision") is None:
            for name in ("torchvision", "torchvision.transforms", "torchvision.datasets",
                         "torchvision.datasets.utils"):
                sys.modules[name] = _stand_in(name)
        sys.modules["datasets"] = _stand_in("datasets")  # data loading only; needs h5py
        return types.SimpleNamespace(BigGAN=importlib.import_module("BigGAN"),
                                     train_fns=importlib.import_module("train_fns"),
                                     utils=importlib.import_module("utils"))
    finally:
        sys.path.remove(str(folder))
        for n in [n for n in sys.modules if n.split(".")[0] in _REFERENCE_NAMES]:
            del sys.modules[n]
        sys.modules.update(saved)


class ReferenceRunner:
    """BigGAN-PyTorch's G, D, their optimizers and one `GAN_training_function` iteration."""

    def __init__(self, ref: types.SimpleNamespace, cfg, batch: int):
        torch.manual_seed(0)
        m, o = cfg.model, cfg.optim
        attn = "_".join(str(a) for a in m.attention) or "0"
        self.G = ref.BigGAN.Generator(
            G_ch=m.ch, dim_z=m.dim_z, resolution=m.resolution, G_attn=attn, n_classes=m.num_classes,
            G_shared=True, shared_dim=m.shared_dim, hier=m.hier, G_lr=o.g_lr, G_B1=o.betas[0],
            G_B2=o.betas[1], adam_eps=o.eps, BN_eps=m.bn_eps, SN_eps=m.sn_eps, G_init="ortho")
        self.D = ref.BigGAN.Discriminator(
            D_ch=m.d_ch, resolution=m.resolution, D_attn=attn, n_classes=m.num_classes, D_lr=o.d_lr,
            D_B1=o.betas[0], D_B2=o.betas[1], adam_eps=o.eps, SN_eps=m.sn_eps, D_init="ortho")
        z_, y_ = torch.zeros(batch, m.dim_z), torch.zeros(batch, dtype=torch.int64)
        z_.sample_ = lambda: z_.normal_()  # utils.prepare_z_y's draws, on plain tensors (docstring)
        y_.sample_ = lambda: y_.random_(0, m.num_classes)
        config = {"batch_size": batch, "toggle_grads": True, "num_D_steps": o.d_steps,
                  "num_D_accumulations": 1, "num_G_accumulations": 1, "split_D": False,
                  "D_ortho": 0.0, "G_ortho": cfg.loss.ortho_weight, "ema": False}
        self.train = ref.train_fns.GAN_training_function(
            self.G, self.D, ref.BigGAN.G_D(self.G, self.D), z_, y_, None, {"itr": 0}, config)
        self.cfg, self.batch = cfg, batch

    def one(self) -> None:
        m, n = self.cfg.model, self.batch * self.cfg.optim.d_steps  # one real batch per D step
        x = torch.rand(n, 3, m.resolution, m.resolution) * 2 - 1
        y = torch.randint(0, m.num_classes, (n,))
        with contextlib.redirect_stdout(io.StringIO()):  # "using modified ortho reg in G" per call
            self.train(x, y)

    def time(self, iters: int) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        for _ in range(iters):
            self.one()
        return (time.perf_counter() - t) / iters, (time.process_time() - c) / iters


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_case(ref, name: str, batch: int, iters: int, rounds: int) -> dict:
    path, overrides = train_step.CASES[name]
    cfg = train_step.load_config(path, overrides + [f"train.batch_size={batch}"])
    fast = train_step.FastPath.resolve(cfg.speed, train_step.DEVICE)
    paths = {"reference": ReferenceRunner(ref, cfg, batch),
             "bigan": train_step.Runner(cfg, fast, "fp32", batch)}
    flops = {}
    for p, r in paths.items():  # the counted iteration is the warm-up too (allocator, oneDNN's
        counter = FlopCounterMode(display=False)  # primitives, Adam's state): minutes at 128 px
        with counter:
            r.one()
        flops[p] = counter.get_total_flops()
    per_round = []
    for i in range(rounds):
        order = ("bigan", "reference") if i % 2 == 0 else ("reference", "bigan")
        sec = {p: paths[p].time(iters) for p in order}
        (rw, rc), (bw, bc) = sec["reference"], sec["bigan"]
        per_round.append({"reference_sec": rw, "bigan_sec": bw, "ratio": rw / bw,
                          "reference_cpu_sec": rc, "bigan_cpu_sec": bc, "cpu_ratio": rc / bc,
                          "load_avg": os.getloadavg()[0]})
        print(f"  {name} round {i + 1}: reference {rw:.3f} s  bigan {bw:.3f} s  ratio {rw / bw:.2f}x"
              f"  (CPU time {rc:.3f} / {bc:.3f} s = {rc / bc:.2f}x)", flush=True)
    sec = {p: statistics.median(r[f"{p}_sec"] for r in per_round) for p in paths}
    cpu = {p: statistics.median(r[f"{p}_cpu_sec"] for r in per_round) for p in paths}
    return {"case": name, "precision": "fp32", "batch": batch, "d_steps": cfg.optim.d_steps,
            "bigan_path": fast.__dict__, "iters_per_round": iters, "rounds": per_round,
            "ratio": _spread([r["ratio"] for r in per_round]),
            "cpu_ratio": _spread([r["cpu_ratio"] for r in per_round]),
            "params": {p: sum(t.numel() for net in (r.G, r.D) for t in net.parameters())
                       for p, r in paths.items()},
            "sec_per_iter": sec, "cpu_sec_per_iter": cpu,
            "gflop_per_iter": {p: f / 1e9 for p, f in flops.items()},
            "gflop_per_sec": {p: flops[p] / sec[p] / 1e9 for p in paths},
            # per second of this process's CPU time: what the wall rate is on a machine to itself
            "gflop_per_cpu_sec": {p: flops[p] / cpu[p] / 1e9 for p in paths}}


def reference_dir(explicit: str | None) -> Path | None:
    folder = explicit or os.environ.get(ENV)
    if folder and (Path(folder) / "BigGAN.py").is_file() and (Path(folder) / "train_fns.py").is_file():
        return Path(folder)
    return None


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", help=f"BigGAN-PyTorch checkout (default: ${ENV})")
    parser.add_argument("--cases", default="biggan-32,biggan-128",
                        help=f"comma-separated: {', '.join(train_step.CASES)}")
    parser.add_argument("--batch", type=int, default=0, help="batch per case (0: the case's own)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (>= 1)")
    parser.add_argument("--iters", type=int, default=3, help="iterations per side per round")
    parser.add_argument("--quick", action="store_true", help="small batches, 1 round of 1 iteration")
    parser.add_argument("--out", default="bench/results", help="directory for the JSON")
    parser.add_argument("--name", default="train_vs_reference.json", help="JSON file name")
    args = parser.parse_args(argv)
    folder = reference_dir(args.reference_dir)
    if folder is None:
        print(HOW_TO_GET)
        return None
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in train_step.CASES]
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(train_step.CASES)}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    ref = load_reference(folder)
    rounds, iters = (1, 1) if args.quick else (max(1, args.rounds), max(1, args.iters))
    rows = []
    for name in cases:
        batch = args.batch or (train_step.QUICK_BATCH if args.quick else train_step.DEFAULT_BATCH)[name]
        rows.append(bench_case(ref, name, batch, iters, rounds))
    print(f"\n{'case':11s} {'batch':>5s} {'ref s/it':>9s} {'bigan s/it':>10s} {'ratio med (min-max)':>21s}"
          f" {'CPU-time ratio':>20s} {'ref GFLOP':>9s} {'bigan GFLOP':>11s} {'GFLOP/s ref, bigan':>19s}"
          f" {'per CPU-s':>13s}")
    for r in rows:
        w, c, g, s, sc = (r["ratio"], r["cpu_ratio"], r["gflop_per_iter"], r["gflop_per_sec"],
                          r["gflop_per_cpu_sec"])
        print(f"{r['case']:11s} {r['batch']:5d} {r['sec_per_iter']['reference']:9.3f} "
              f"{r['sec_per_iter']['bigan']:10.3f} {w['median']:6.2f}x ({w['min']:.2f}-{w['max']:.2f})"
              f" {c['median']:6.2f}x ({c['min']:.2f}-{c['max']:.2f}) {g['reference']:9.1f} "
              f"{g['bigan']:11.1f} {s['reference']:9.1f} {s['bigan']:9.1f} "
              f"{sc['reference']:6.1f} {sc['bigan']:6.1f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"reference": "BigGAN-PyTorch (train_fns.GAN_training_function)",
              "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                          "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "load_avg_at_start": os.getloadavg()},
              "results": rows}
    (out / args.name).write_text(json.dumps(report, indent=2))
    print(f"wrote {out / args.name}")
    return report


if __name__ == "__main__":
    main()
