"""Serving bench, Ray Serve: images/s of `bigan serve --ray` with 1, 2 and 4 replicas against one
`bigan serve` process, on this machine.

The generator is bench/serving.py's (BigGAN 128x128 of configs/biggan_128.yaml, random weights,
width 8 with `--quick`), served without the response cache so every request runs it. The same
load (`bench.serving.drive`: `--clients` threads sending one-image requests back to back on
keep-alive connections) goes first to one `bigan serve` process, then to a local Ray cluster
(`ray.init(num_cpus=max replicas)`) deployed by `serving.ray_serve.deployment` with each replica
count in turn (the deployment is updated in place), then to the one process again; each Ray rate
is compared with the mean of the two one-process rates around the Ray runs, since a shared
machine drifts. Prints a table, writes serving_ray.json.

    python bench/serving_ray.py [--quick] [--replicas 1,2,4] [--clients 8] [--seconds S]
                                [--model MODEL.onnx] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.serving import drive, random_checkpoint, running_server  # noqa: E402
from bigan.ort_session import open_model  # noqa: E402
from serving.client import free_port, wait_ready  # noqa: E402
from serving.config import EngineConfig, ServeConfig  # noqa: E402

MAX_BATCH = 16


def one_process_rate(onnx_path: Path, clients: int, seconds: float, num_classes: int) -> float:
    with running_server(onnx_path, MAX_BATCH, "--cache-mb", "0") as (port, _):
        return drive(port, clients, seconds, num_classes)["img_per_sec"]


def ray_rates(onnx_path: Path, replicas: list[int], clients: int, seconds: float,
              num_classes: int) -> dict[int, float]:
    """images/s of the Ray Serve deployment at each replica count, on one local cluster."""
    import ray
    from ray import serve

    from serving.ray_serve import deployment

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # On a busy core Ray's own start outlasts its default deadlines (here, at load average 11-13,
    # the driver gave up on the raylet once, and the raylet on its agents after ~100 s once).
    for name, value in (("RAY_raylet_start_wait_time_s", "600"),
                        ("RAY_agent_register_timeout_ms", "600000"),
                        ("RAY_worker_register_timeout_seconds", "600")):
        os.environ.setdefault(name, value)
    ray.init(address="local", num_cpus=max(replicas), include_dashboard=False,
             log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        rates = {}
        for n in replicas:
            cfg = ServeConfig(model=str(onnx_path), workers=n, cache_mb=0,
                              engine=EngineConfig(max_batch=MAX_BATCH, max_queue=256))
            serve.run(deployment(cfg), name="bigan", route_prefix="/")
            wait_ready(f"http://127.0.0.1:{port}", 300)  # the proxy may lag the replicas
            print(f"  Ray Serve, {n} replica(s):", flush=True)
            rates[n] = drive(port, clients, seconds, num_classes)["img_per_sec"]
        return rates
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="width 8 instead of 96")
    parser.add_argument("--replicas", default="1,2,4", help="replica counts (default 1,2,4)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    parser.add_argument("--model", help="an exported .onnx to serve instead of BigGAN-128")
    parser.add_argument("--out", default="bench/results", help="directory for serving_ray.json")
    args = parser.parse_args()
    replicas = [int(n) for n in args.replicas.split(",")]
    if min(replicas) < 1 or args.clients < 1:
        parser.error("--replicas and --clients must be >= 1")
    load_before = os.getloadavg()  # Ray's control plane starves on a busy core: say how busy
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            onnx_path = Path(args.model)
        else:
            from bigan.export.onnx import export_onnx

            ckpt = random_checkpoint(Path(tmp), args.quick)
            onnx_path = export_onnx(ckpt, Path(tmp) / "model.onnx").path
        num_classes = len(open_model(onnx_path, "cpu", 1)[2].class_names)
        print(f"one `bigan serve` process, {args.clients} clients:", flush=True)
        before = one_process_rate(onnx_path, args.clients, args.seconds, num_classes)
        rates = ray_rates(onnx_path, replicas, args.clients, args.seconds, num_classes)
        print("one `bigan serve` process again:", flush=True)
        after = one_process_rate(onnx_path, args.clients, args.seconds, num_classes)
    baseline = (before + after) / 2
    rows = [{"replicas": n, "img_per_sec": rate, "vs_one_process": rate / baseline}
            for n, rate in rates.items()]
    print(f"\n| server ({args.clients} clients) | images/s | vs one process |\n| --- | --- | --- |")
    print(f"| one `bigan serve` process | {baseline:.1f} ({before:.1f}, {after:.1f}) | 1.00x |")
    for row in rows:
        print(f"| Ray Serve, {row['replicas']} replica(s) | {row['img_per_sec']:.1f} | "
              f"{row['vs_one_process']:.2f}x |")
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "affinity": len(os.sched_getaffinity(0)),
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                          "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]]},
              "quick": args.quick, "clients": args.clients, "seconds": args.seconds,
              "max_batch": MAX_BATCH, "one_process": {"img_per_sec": baseline,
                                                      "before": before, "after": after},
              "ray": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving_ray.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'serving_ray.json'}")


if __name__ == "__main__":
    main()
