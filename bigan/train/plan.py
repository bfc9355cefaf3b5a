"""`bigan plan CONFIG`: what a run will cost before it is launched, from one measured iteration.

For each resolution the run trains at (one; ProGAN: one per phase) `plan_measure.measure_steps`
runs the trainer's iteration (D updates x d_steps + the G update, penalties and the orthogonal
term included) on the meta device at per-worker batches 1 and 2, counting FLOPs and live tensor
bytes; both are affine in the batch, so the two points give them at the configured batch. Then:

- memory per GPU under each strategy: weights, gradients, Adam's moments, the EMA copy and the
  activations at the iteration's peak, divided as `train/parallel.py` divides them (ZeRO-1:
  Adam; ZeRO-2: + gradients; ZeRO-3: + G's weights, D staying at stage 2);
- time per kimg and to the configured length at a stated utilisation of the GPU's published
  dense peak (`GPUS`), in the precision the config trains in;
- checkpoint size (full weights, EMA and Adam states: what `train_state.py` writes) and the
  shard bandwidth the images/s need.

Not modelled (docs/cluster.md says by how much it may matter): communication time, DeepSpeed's
bucket buffers, the allocator's fragmentation, data loading, the evaluator, bf16 activations
(counted in fp32: an upper bound).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from bigan.config import STRATEGIES, Config, ConfigError

if TYPE_CHECKING:
    from bigan.train.plan_measure import StepCount

# torch is imported inside the functions that measure: `bigan --help` builds this parser.

MEASURED_BATCHES = (1, 2)
GiB = 2**30


@dataclass(frozen=True)
class Gpu:
    memory_gib: float
    tflops: dict[str, float | None]  # dense peak per precision (no sparsity); None: not offered


# Published dense peaks (the datasheets' figures with sparsity are 2x these).
GPUS = {
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf (SXM 80GB)
    "a100": Gpu(80, {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    # https://www.nvidia.com/en-us/data-center/h100/ (SXM: BF16 1,979 with sparsity)
    "h100": Gpu(80, {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    # https://www.nvidia.com/en-us/data-center/h200/ (SXM: BF16 1,979 with sparsity)
    "h200": Gpu(141, {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    # https://www.nvidia.com/en-us/data-center/l40/ (datasheet: BF16 181.05 | 362.1 with sparsity)
    "l40": Gpu(48, {"bf16": 181.0, "fp16": 181.0, "fp32": 90.5}),
    # https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf (SXM2; no bf16)
    "v100": Gpu(32, {"bf16": None, "fp16": 125.0, "fp32": 15.7}),
    # https://cloud.google.com/tpu/docs/v3 (123 TFLOPS bf16 and 32 GiB HBM per chip of 2 cores)
    "tpuv3-core": Gpu(16, {"bf16": 61.5, "fp16": None, "fp32": None}),
}


@dataclass(frozen=True)
class Stage:
    """A stretch of the run at one resolution and global batch; `nimg` real images shown to D."""

    resolution: int
    batch: int
    nimg: int


def stages(cfg: Config) -> list[Stage]:
    """What the configured run trains: train.steps iterations at train.batch_size, or ProGAN's
    phases in order (a fade-in counted at its new resolution: it runs both paths, the old one
    at a quarter of the pixels) until train.steps iterations are spent."""
    from bigan.train import phases

    k = cfg.optim.d_steps
    if cfg.model.arch != "progan":
        return [Stage(cfg.model.resolution, cfg.train.batch_size, cfg.train.steps * cfg.train.batch_size * k)]
    out: list[Stage] = []
    steps_left = cfg.train.steps
    for ph in phases.all_phases(cfg):
        batch = phases.phase_at(ph.start_nimg, cfg).batch_size
        steps = steps_left if ph.end_nimg is None else min(
            steps_left, math.ceil((ph.end_nimg - ph.start_nimg) / (batch * k)))
        if steps <= 0:
            break
        steps_left -= steps
        out.append(Stage(ph.resolution, batch, steps * batch * k))
    return out


def _affine(a: "StepCount", b: "StepCount", field: str, batch: float) -> float:
    """`field` at per-worker `batch`, on the line through the two measurements."""
    ya, yb = getattr(a, field), getattr(b, field)
    return ya + (yb - ya) * (batch - a.batch) / (b.batch - a.batch)


def memory(at: "tuple[StepCount, StepCount]", per_gpu_batch: float, strategy: str, gpus: int) -> dict:
    """Bytes per GPU by component under `strategy` on `gpus` workers (see the module docstring)."""
    s = at[1].static_bytes
    stage = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3}[strategy] if gpus > 1 else 0
    grads = _affine(*at, "grad_bytes_at_peak", per_gpu_batch)
    out = {"weights": s["weights_G"] / (gpus if stage == 3 else 1) + s["weights_D"],
           "grads": grads / gpus if stage >= 2 else grads,
           "adam": (s["adam_G"] + s["adam_D"]) / (gpus if stage >= 1 else 1),
           "ema": s["ema"],
           "activations": _affine(*at, "activation_bytes", per_gpu_batch)}
    out["total"] = sum(out.values())
    return {k: int(v) for k, v in out.items()}


def shard_bytes_per_image(cfg: Config) -> tuple[float | None, str]:
    """(bytes per packed image, where the number comes from): a local pack's dataset.json
    (its shards' bytes over its samples), else raw RGB bytes, an upper bound for JPEG shards;
    None for the in-memory sets, which read no shards."""
    if cfg.data.source != "shards":
        return None, f"data.source={cfg.data.source} is held in memory"
    index = Path(cfg.data.path) / "dataset.json" if cfg.data.source == "shards" and cfg.data.path else None
    if index is not None and index.is_file():
        data = json.loads(index.read_text())
        return sum(sh["bytes"] for sh in data["shards"]) / max(1, data["num_samples"]), str(index)
    m = cfg.model
    return float(m.img_channels * m.resolution ** 2), "raw RGB (no local pack to read)"


def make_plan(cfg: Config, gpus: int, gpu_kind: str, strategy: str, utilisation: float,
              measured: dict | None = None) -> dict:
    """The plan as a JSON-ready dict; ConfigError for options or a config it cannot plan.
    `measured` (resolution -> measurements, filled as they are made) lets plans of one config
    for several clusters share one measurement: it does not depend on the GPUs."""
    from bigan.train.batches import check_global_batches
    from bigan.train.plan_measure import measure_steps

    if gpus < 1:
        raise ConfigError(f"--gpus={gpus} must be >= 1")
    if gpu_kind not in GPUS:
        raise ConfigError(f"--gpu-kind={gpu_kind!r}: choose one of {', '.join(GPUS)}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy={strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if not 0 < utilisation <= 1:
        raise ConfigError(f"--utilisation={utilisation} must be in (0, 1]")
    check_global_batches(cfg, gpus, f"--gpus={gpus}")
    gpu, dtype = GPUS[gpu_kind], cfg.train.precision
    peak = gpu.tflops.get(dtype)
    if peak is None:
        raise ConfigError(f"--gpu-kind={gpu_kind} publishes no {dtype} peak: train.precision={dtype} "
                          f"cannot run there at speed; pick another --gpu-kind or precision")
    t0, k = time.perf_counter(), cfg.optim.d_steps
    rows, seconds, worst = [], 0.0, None
    measured = {} if measured is None else measured  # fade-in and stable phases share one
    for st in stages(cfg):
        if st.resolution not in measured:
            measured[st.resolution] = tuple(measure_steps(cfg, MEASURED_BATCHES, st.resolution))
        at = measured[st.resolution]
        b = st.batch / gpus
        flops_iter = _affine(*at, "flops", b)  # per GPU
        sec_iter = flops_iter / (peak * 1e12 * utilisation)
        iters = st.nimg / (st.batch * k)
        mem = {s: memory(at, b, s, gpus) for s in STRATEGIES}
        rows.append({"resolution": st.resolution, "batch": st.batch, "batch_per_gpu": b,
                     "kimg": st.nimg / 1000, "flops_per_image": flops_iter * gpus / (st.batch * k),
                     "sec_per_kimg": sec_iter * 1000 / (st.batch * k), "hours": iters * sec_iter / 3600,
                     "memory_per_gpu": mem, "checkpoint_bytes": sum(at[1].static_bytes.values()),
                     "parameters": at[1].params})
        seconds += iters * sec_iter
        if worst is None or mem[strategy]["total"] > worst["memory_per_gpu"][strategy]["total"]:
            worst = rows[-1]
    last = rows[-1]
    per_image, source = shard_bytes_per_image(cfg)
    # at the last stage: ProGAN's first phases would need far more than any loader gives
    img_per_sec = 1000 / last["sec_per_kimg"]
    return {"config": {"arch": cfg.model.arch, "resolution": cfg.model.resolution,
                       "batch_size": cfg.train.batch_size, "steps": cfg.train.steps,
                       "d_steps": k, "precision": dtype},
            "gpus": gpus, "gpu_kind": gpu_kind, "strategy": strategy,
            "gpu": {"memory_gib": gpu.memory_gib, "peak_tflops": peak, "utilisation": utilisation},
            "parameters": last["parameters"],
            "stages": rows, "peak_memory_stage": worst["resolution"],
            "memory_per_gpu": worst["memory_per_gpu"],
            "fits": worst["memory_per_gpu"][strategy]["total"] <= gpu.memory_gib * GiB,
            "flops_per_image": last["flops_per_image"], "sec_per_kimg": last["sec_per_kimg"],
            "total_kimg": sum(r["kimg"] for r in rows), "hours": seconds / 3600,
            "gpu_hours": seconds * gpus / 3600,
            "checkpoint_bytes": max(r["checkpoint_bytes"] for r in rows),
            "shards": {"bytes_per_image": per_image, "source": source,
                       "images_per_sec": img_per_sec,
                       "bytes_per_sec": None if per_image is None else per_image * img_per_sec},
            "measured": {"device": "meta", "batches": list(MEASURED_BATCHES),
                         "activation_dtype": "float32", "seconds": time.perf_counter() - t0}}


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def format_plan(plan: dict) -> str:
    """The plan as the table `bigan plan` prints."""
    c, g = plan["config"], plan["gpu"]
    n, kind = plan["gpus"], plan["gpu_kind"]
    lines = [f"{c['arch']} {c['resolution']} px, batch {c['batch_size']}, {c['steps']:,} steps "
             f"({plan['total_kimg']:,.0f} kimg), {c['precision']}, on {n} x {kind} "
             f"({g['peak_tflops']:g} TFLOPS {c['precision']} peak, {g['utilisation']:.0%} of it assumed)",
             f"  parameters        G {plan['parameters']['G'] / 1e6:.1f} M, D {plan['parameters']['D'] / 1e6:.1f} M",
             f"  FLOPs per image   {plan['flops_per_image'] / 1e9:,.1f} GFLOP ({c['d_steps']} D updates "
             "+ 1 G update, per real image shown to D)",
             f"  memory per GPU    GiB at the {plan['peak_memory_stage']} px stage "
             f"(GPU: {g['memory_gib']:g} GiB)",
             "    strategy   weights   grads    adam     ema  activations   total"]
    for s, m in plan["memory_per_gpu"].items():
        mark = " <" if s == plan["strategy"] else ""
        lines.append(f"    {s:<8} {_gib(m['weights']):>9} {_gib(m['grads']):>7} {_gib(m['adam']):>7} "
                     f"{_gib(m['ema']):>7} {_gib(m['activations']):>12} {_gib(m['total']):>7}{mark}")
    if not plan["fits"]:
        lines.append(f"    {plan['strategy']} does not fit {g['memory_gib']:g} GiB: lower the batch "
                     "per GPU, add GPUs or pick a higher ZeRO stage")
    if len(plan["stages"]) > 1:
        lines.append("  stages            resolution  batch      kimg   s/kimg   hours")
        lines += [f"                    {r['resolution']:>10} {r['batch']:>6} {r['kimg']:>9,.0f} "
                  f"{r['sec_per_kimg']:>8.2f} {r['hours']:>7.2f}" for r in plan["stages"]]
    sh = plan["shards"]
    lines += [f"  time              {plan['sec_per_kimg']:.2f} s/kimg, {plan['hours']:,.1f} h to "
              f"{plan['total_kimg']:,.0f} kimg ({plan['gpu_hours']:,.0f} GPU-hours)",
              f"  checkpoint        {_gib(plan['checkpoint_bytes'])} GiB (weights, EMA, Adam)",
              (f"  shard bandwidth   none ({sh['source']})" if sh["bytes_per_sec"] is None else
               f"  shard bandwidth   {sh['bytes_per_sec'] / 1e6:,.1f} MB/s ({sh['bytes_per_image'] / 1e3:,.1f} "
               f"kB/image x {sh['images_per_sec']:,.0f} images/s; {sh['source']})"),
              f"  measured          one iteration at per-GPU batch {' and '.join(map(str, plan['measured']['batches']))} "
              f"on the meta device per stage, {plan['measured']['seconds']:.0f} s; activations in fp32"]
    return "\n".join(lines)


def add_plan_command(sub) -> None:
    """`bigan plan CONFIG [overrides] --gpus N --gpu-kind KIND --strategy S [--json PATH]`."""
    p = sub.add_parser("plan", help="estimate memory, FLOPs, time and bandwidth of a run before launching it",
                       description="Measure one training iteration of CONFIG on the meta device "
                                   "(FLOPs and live tensor bytes at two small batches, scaled to "
                                   "the configured one) and print memory per GPU under each "
                                   "strategy, time to the configured length at a stated share of "
                                   "the GPU's published peak, checkpoint size and shard bandwidth.")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=2048")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (workers; default 1)")
    p.add_argument("--gpu-kind", default="h100", choices=list(GPUS), help="default h100")
    p.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="the strategy to check against GPU memory (default: train.strategy)")
    p.add_argument("--utilisation", type=float, default=0.4,
                   help="share of the published dense peak reached (default 0.4)")
    p.add_argument("--json", default=None, help="also write the plan as JSON to this file")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    from bigan.config import load_config

    cfg = load_config(args.config, list(args.overrides))
    plan = make_plan(cfg, args.gpus, args.gpu_kind, args.strategy or cfg.train.strategy,
                     args.utilisation)
    print(format_plan(plan))
    if args.json:
        Path(args.json).write_text(json.dumps(plan, indent=2) + "\n")
    return 0
