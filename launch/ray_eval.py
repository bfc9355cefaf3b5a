"""The evaluator beside a `bigan launch` run: a Ray actor with its own resources.

Rank 0's worker creates one actor (`--eval-cpus`, `--eval-gpus`) pinned to its own node, since
the run directory, where the trainer writes the checkpoints it hands over, may be node-local. The
actor holds a `RunScorer` (bigan/eval/run_evaluator.py), so it scores, records the history, moves
`best` and releases holds exactly as the process evaluator of `bigan train` does; the trainer sees
it through the same `Evaluator` seam (submit / results / close).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from bigan.config import Config
from bigan.train.evaluation import EvalJob

log = logging.getLogger(__name__)


class _ScorerActor:
    def __init__(self, cfg: Config, run_dir: str):
        import os

        import torch

        from bigan.eval.run_evaluator import RunScorer

        os.environ["TQDM_DISABLE"] = "1"
        torch.set_num_threads(cfg.eval.threads)
        self.scorer = RunScorer(cfg, run_dir)

    def record(self, job: dict) -> dict:
        return self.scorer.record(EvalJob(**job))


class RayEvaluator:
    """Scores in a Ray actor (started at the first job) with `cpus` CPUs and `gpus` GPUs, on the
    node of the process that creates it."""

    def __init__(self, cfg: Config, run_dir: str | Path, cpus: float = 1.0, gpus: float = 0.0):
        self.cfg, self.run_dir, self.cpus, self.gpus = cfg, str(run_dir), cpus, gpus
        self._actor = None
        self._pending: dict = {}  # ObjectRef -> step

    def _start(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        self._actor = ray.remote(_ScorerActor).options(
            num_cpus=self.cpus, num_gpus=self.gpus, name=None,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(self.cfg, self.run_dir)

    def submit(self, job: EvalJob) -> None:
        if self._actor is None:
            self._start()
        self._pending[self._actor.record.remote(asdict(job))] = job.step

    def _collect(self, timeout: float | None) -> list[dict]:
        import ray

        if not self._pending:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=timeout)
        out = []
        for ref in ready:
            step = self._pending.pop(ref)
            try:
                out.append(ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - the actor died: an error record
                out.append({"step": step, "error": f"the evaluator actor failed: {exc}"})
        return out

    def results(self) -> list[dict]:
        return self._collect(0)

    def close(self) -> list[dict]:
        import ray

        out = self._collect(None)
        if self._actor is not None:
            ray.kill(self._actor)
            self._actor = None
        return out
