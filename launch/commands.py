"""`bigan launch CONFIG --address ADDR --workers N ...`: a training run on a Ray cluster."""

from __future__ import annotations

import argparse

from bigan.config import STRATEGIES, load_config


def _launch(args: argparse.Namespace) -> int:
    from launch.ray_job import LaunchConfig, launch

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    if args.strategy:
        overrides.append(f"train.strategy={args.strategy}")
    cfg = load_config(args.config, overrides)
    lc = LaunchConfig(address=args.address, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                      cpus_per_worker=args.cpus_per_worker, max_failures=args.max_failures,
                      storage=args.storage, spread=args.spread, name=args.name,
                      eval_cpus=args.eval_cpus, eval_gpus=args.eval_gpus)
    result = launch(cfg, lc, resume=args.resume)
    print(f"finished: {result.metrics.get('step', '?')} steps on {args.workers} workers")
    print(f"  checkpoint   {result.checkpoint.path if result.checkpoint else 'none'}")
    print(f"  run          {cfg.train.out_dir}")
    return 0


def add_launch_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch", help="train on a Ray cluster (one Accelerate process per worker, auto-recovery)",
        description="Run the training function in N Ray Train workers (gloo on CPU, NCCL on GPU). "
                    "A dead worker or node restarts the group from the newest checkpoint, up to "
                    "--max-failures times. Checkpoints are copied to --storage: make it shared "
                    "(NFS path or bucket URI) on a multi-node cluster.")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=500")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (host:port, or 'auto'); default: start a local Ray")
    p.add_argument("--workers", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per worker (default 0: CPU)")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs per worker (default 1)")
    p.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="data-parallel strategy (default: the config's train.strategy)")
    p.add_argument("--max-failures", type=int, default=3,
                   help="group restarts after a worker failure before giving up (-1: unlimited)")
    p.add_argument("--storage", default=None,
                   help="persistent checkpoint storage: a shared path or a bucket URL such as "
                        "s3://bucket/runs (credentials and endpoint from the store's own "
                        "environment, e.g. AWS_*; default RUN/ray)")
    p.add_argument("--spread", action="store_true", help="one worker per node (STRICT_SPREAD)")
    p.add_argument("--eval-cpus", type=float, default=1,
                   help="CPUs of the evaluator actor beside the workers (eval.every_kimg > 0; default 1)")
    p.add_argument("--eval-gpus", type=float, default=0, help="GPUs of the evaluator actor (default 0)")
    p.add_argument("--out", help="run directory (overrides train.out_dir)")
    p.add_argument("--resume", help="'auto' or 'auto-or-fresh' (as in bigan train), a "
                                    "checkpoint directory, or a checkpoint URL (e.g. "
                                    "s3://bucket/runs/bigan/step-00000400, or the run's storage "
                                    "URL for its newest step), for the first attempt")
    p.add_argument("--name", default="bigan", help="Ray run name (default bigan)")
    p.set_defaults(func=_launch)
