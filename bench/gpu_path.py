"""The engine's GPU path against plain `session.run`, per batch size (serving/core/gpu_path.py).

For the BigGAN 128x128 generator of configs/biggan_128.yaml (random weights; `--quick` shrinks the
width to 8), exported with `bigan export`'s own code, one generator call is timed at each batch
size in --batches, in rounds that alternate the variants (a shared machine drifts within a
minute), median over rounds:
  plain      `session.run(["images"], ...)`: what the engine does on CPU, and did on GPUs before;
  bound      IO binding, only the uint8 output copied back (the CUDA default now);
  padded     the batch padded to the next power-of-two bucket, preallocated bound buffers;
  graphs     padded + CUDA graphs (a separate session with enable_cuda_graph; CUDA only).
On CPU, `bound` has no device copy to save and `padded` shows what padding costs where no graph
pays it back; the GPU numbers are the point. Every variant's images are checked against plain's
(equal on CPU, within one uint8 level on CUDA) before timing. Prints a table, writes JSON.

    python bench/gpu_path.py [--quick] [--batches 1,3,8,16,32] [--rounds 5] [--reps 10]
                             [--model FILE.onnx] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bigan import models, sampling  # noqa: E402
from bigan.checkpoint.store import save_checkpoint  # noqa: E402
from bigan.config import dump_config, load_config  # noqa: E402
from bigan.export.onnx import export_onnx  # noqa: E402
from bigan.ort_session import cuda_usable, open_session, read_metadata  # noqa: E402
from serving.core.gpu_path import BoundRunner, batch_buckets, cuda_provider_options  # noqa: E402


def exported_model(out: Path, quick: bool) -> Path:
    cfg = load_config(ROOT / "configs" / "biggan_128.yaml",
                      ["model.ch=8", "model.d_ch=8"] if quick else [])
    torch.manual_seed(0)
    G, D = models.build(cfg.model)
    ckpt = save_checkpoint(out / "ckpts", 0, {"G": G.state_dict(), "G_ema": G.state_dict(),
                                              "D": D.state_dict()}, {}, dump_config(cfg),
                           {"config": cfg.to_dict()})
    return export_onnx(ckpt, out / "model.onnx").path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="width 8 instead of the config's")
    p.add_argument("--batches", default="1,3,8,16,32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=10, help="calls per variant per round")
    p.add_argument("--model", default=None, help="an exported .onnx instead of BigGAN-128")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    max_batch = max(batches)
    cuda = cuda_usable()
    device = "cuda" if cuda else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else exported_model(Path(tmp), args.quick)
        provider = "cuda" if cuda else "cpu"
        session, used = open_session(path, provider, cuda_options=cuda_provider_options())
        meta = read_metadata(session, path)
        shape = (meta.resolution, meta.resolution, meta.channels)
        buckets = batch_buckets(max_batch)
        bound, padded = BoundRunner(session, device), BoundRunner(session, device, buckets, shape)
        variants = {"plain": lambda z, y: session.run(["images"], {"z": z, "y": y})[0],
                    "bound": lambda z, y: bound.run({"z": z, "y": y}),
                    "padded": lambda z, y: padded.run({"z": z, "y": y})}
        if cuda:
            graph_session, _ = open_session(path, "cuda",
                                            cuda_options=cuda_provider_options(cuda_graphs=True))
            graphs = BoundRunner(graph_session, "cuda", buckets, shape, graphs=True)
            graphs.warm_up()
            variants["graphs"] = lambda z, y: graphs.run({"z": z, "y": y})
        results = {name: {b: [] for b in batches} for name in variants}
        for b in batches:
            z = sampling.latents(range(b), meta.dim_z, 1.0)
            y = np.arange(b, dtype=np.int64) % meta.num_classes
            reference = variants["plain"](z, y)
            for name, run in variants.items():
                diff = np.abs(run(z, y).astype(int) - reference.astype(int)).max()
                assert diff <= (1 if cuda else 0), f"{name} at batch {b} differs by {diff}"
            for _ in range(args.rounds):
                for name, run in variants.items():
                    run(z, y)  # warm
                    start = time.perf_counter()
                    for _ in range(args.reps):
                        run(z, y)
                    results[name][b].append((time.perf_counter() - start) / args.reps * 1e3)
    medians = {name: {b: float(np.median(v)) for b, v in per.items()}
               for name, per in results.items()}
    model = path.name if args.model else f"BigGAN-128{' width 8' if args.quick else ''}"
    print(f"one generator call, ms (median of {args.rounds} rounds x {args.reps} calls), "
          f"{used}, {model}")
    print("batch  " + "  ".join(f"{name:>8}" for name in medians) + "  (x plain)")
    for b in batches:
        cells = "  ".join(f"{medians[name][b]:8.2f}" for name in medians)
        ratios = " ".join(f"{medians[name][b] / medians['plain'][b]:.2f}" for name in medians)
        print(f"{b:5d}  {cells}  ({ratios})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"provider": used, "model": model, "quick": args.quick, "rounds": args.rounds, "reps": args.reps,
              "buckets": list(buckets), "median_ms": medians, "all_ms": results,
              "machine": platform.platform(), "processor": platform.processor()}
    (out / "gpu_path.json").write_text(json.dumps(record, indent=1))
    print(f"-> {out / 'gpu_path.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
