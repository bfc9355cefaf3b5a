"""`bigan launch`: the training function in every worker of a Ray Train `TorchTrainer`.

Ray places N workers (one process each, CPUs/GPUs per worker as asked), builds the torch process
group (gloo on CPU, NCCL on GPU), and restarts the whole group from the newest reported
checkpoint when a worker or node dies (`FailureConfig(max_failures)`). Each worker runs
`train(cfg, hooks=_RayHooks())`, which creates its `Accelerator` on that process group.

Checkpoints: the trainer writes its atomic step directory under the run directory and reports it
with `ray.train.report`, which copies it into `RunConfig(storage_path)`; on restart
`ray.train.get_checkpoint()` hands the newest copy back and training resumes from it. So the run
survives a lost node when `--storage` is shared (NFS, or a bucket URI), even though the run
directory itself is node-local.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigan.checkpoint.store import step_dir_name
from bigan.config import Config, ConfigError, config_from_dict
from bigan.train.batches import check_global_batches
from bigan.train.hooks import TrainHooks

log = logging.getLogger(__name__)

@dataclass
class LaunchConfig:
    """Where and how wide to run (the cluster side; the training side is `Config`)."""

    address: str | None = None  # Ray cluster address ("auto", "host:port"); None = a local Ray
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_failures: int = 3  # group restarts before the job fails (-1 = unlimited)
    storage: str | None = None  # persistent checkpoint storage (shared path or URI); default RUN/ray
    spread: bool = False  # place workers on different nodes (STRICT_SPREAD), e.g. one per node
    name: str = "bigan"
    eval_cpus: float = 1.0  # CPUs of the evaluator actor (eval.every_kimg > 0, eval.mode=process)
    eval_gpus: float = 0.0  # GPUs of the evaluator actor

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers={self.workers} must be >= 1")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise ConfigError("--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")
        if self.max_failures < -1:
            raise ConfigError(f"--max-failures={self.max_failures} must be >= -1 (-1 = unlimited)")
        if self.eval_cpus <= 0 or self.eval_gpus < 0:
            raise ConfigError("--eval-cpus must be > 0 and --eval-gpus >= 0")


class _RayHooks(TrainHooks):
    """Reports each checkpoint to Ray Train; every rank calls report (it is a barrier)."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics = {"step": step, **metrics}

    def on_checkpoint(self, path: Path, step: int) -> None:
        import ray.train

        # Every rank gets the same (whole) checkpoint directory; one upload of it is enough.
        first = ray.train.get_context().get_world_rank() == 0
        checkpoint = ray.train.Checkpoint.from_directory(str(path)) if first else None
        ray.train.report({**self.metrics, "step": step}, checkpoint=checkpoint,
                         checkpoint_dir_name=step_dir_name(step))


def _record_worker(run_dir: Path, rank: int, resumed_from: str | None) -> None:
    """RUN/workers/rank-R.json: pid, node and starting checkpoint of each live worker, for
    operators (and tests)."""
    import ray.train

    ctx = ray.train.get_context()
    info = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(),
            "node_ip": os.environ.get("RAY_NODE_IP_ADDRESS") or ray.util.get_node_ip_address(),
            "world_size": ctx.get_world_size(), "local_rank": ctx.get_local_rank(),
            "resumed_from": resumed_from}
    path = run_dir / "workers" / f"rank-{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info) + "\n")


def _evaluator(cfg: Config, config: dict[str, Any], rank: int):
    """Rank 0's evaluator: a Ray actor with its own resources (blocking: inside rank 0's loop)."""
    if rank != 0 or not cfg.eval.every_kimg:
        return None
    if cfg.eval.mode == "blocking":
        from bigan.eval.run_evaluator import BlockingEvaluator

        return BlockingEvaluator(cfg, cfg.train.out_dir)
    from launch.ray_eval import RayEvaluator

    return RayEvaluator(cfg, cfg.train.out_dir, config.get("eval_cpus", 1.0), config.get("eval_gpus", 0.0))


def worker_loop(config: dict[str, Any]) -> None:
    """Runs in every Ray worker: resume from Ray's newest checkpoint if any, else as asked."""
    import ray.train

    from bigan.train.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_from_dict(config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        _record_worker(Path(cfg.train.out_dir), rank, config.get("resume"))
        train(cfg, hooks=_RayHooks(), resume=config.get("resume"),
              evaluator=_evaluator(cfg, config, rank))
        return
    with checkpoint.as_directory() as path:  # a restart after a failure: the newest reported one
        _record_worker(Path(cfg.train.out_dir), rank, str(path))
        if rank == 0:
            log.warning("restarting from Ray checkpoint %s", path)
        train(cfg, hooks=_RayHooks(), resume=str(path), evaluator=_evaluator(cfg, config, rank))


def launch(cfg: Config, lc: LaunchConfig, resume: str | None = None):
    """Run `cfg` on the Ray cluster at `lc.address`; returns Ray's `Result` (raises on failure)."""
    lc.validate()
    check_global_batches(cfg, lc.workers, f"--workers={lc.workers}")  # before Ray starts
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run_dir = Path(cfg.train.out_dir).resolve()
    cfg.train.out_dir = str(run_dir)
    storage = lc.storage or str(run_dir / "ray")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    if not ray.is_initialized():
        ray.init(address=lc.address, log_to_driver=True)
    if cfg.eval.every_kimg and cfg.eval.mode == "process":
        _check_eval_resources(lc, ray.cluster_resources())
    use_gpu = lc.gpus_per_worker > 0
    resources = {"CPU": lc.cpus_per_worker, **({"GPU": lc.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"cfg": cfg.to_dict(), "resume": resume, "eval_cpus": lc.eval_cpus,
                           "eval_gpus": lc.eval_gpus},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=lc.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy="STRICT_SPREAD" if lc.spread else "PACK"),
        run_config=RunConfig(name=lc.name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=lc.max_failures)),
    )
    return trainer.fit()


def _check_eval_resources(lc: LaunchConfig, cluster: dict) -> None:
    """The evaluator actor needs resources beside the workers; without them it would wait for
    ever (and the end of training with it), so refuse before starting."""
    for kind, per_worker, extra, flag in (("CPU", lc.cpus_per_worker, lc.eval_cpus, "--eval-cpus"),
                                          ("GPU", lc.gpus_per_worker, lc.eval_gpus, "--eval-gpus")):
        need = lc.workers * per_worker + extra
        if extra and cluster.get(kind, 0) < need:
            raise ConfigError(f"{flag}={extra:g}: the cluster has {cluster.get(kind, 0):g} {kind}s, "
                              f"the {lc.workers} workers take {lc.workers * per_worker:g}; lower "
                              f"{flag}, add nodes, or use eval.mode=blocking")
