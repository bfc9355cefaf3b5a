"""The evaluator of `bigan launch` (launch/ray_eval.py): a Ray actor on a local Ray instance
scores the checkpoints of a tiny run, and gives the numbers the in-process scorer gives for the
same checkpoints (one `RunScorer.record` behind both). Also: --eval-cpus is refused when the
cluster has no room beside the workers, instead of waiting for ever."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("ray")

from bigan.checkpoint import best as best_pointer  # noqa: E402
from bigan.config import ConfigError  # noqa: E402
from bigan.eval.run_evaluator import RunScorer, read_history  # noqa: E402
from bigan.train.evaluation import EvalJob  # noqa: E402
from bigan.train.trainer import train  # noqa: E402
from launch.ray_eval import RayEvaluator  # noqa: E402
from launch.ray_job import LaunchConfig, _check_eval_resources  # noqa: E402
from tests.helpers import eval_run_config as _cfg  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_eval_resources_are_checked_before_launch():
    lc = LaunchConfig(workers=2, cpus_per_worker=1, eval_cpus=1)
    _check_eval_resources(lc, {"CPU": 3.0})
    with pytest.raises(ConfigError, match="--eval-cpus=1: the cluster has 2 CPUs"):
        _check_eval_resources(lc, {"CPU": 2.0})


def test_ray_actor_evaluator_scores_beside_training(tmp_path, tiny_eval_shards, tiny_classifier):
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    run = tmp_path / "run"
    cfg = _cfg(run, tiny_eval_shards, tiny_classifier, tmp_path / "cache",
               **{"train.keep_ckpts": 0})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = train(cfg, evaluator=RayEvaluator(cfg, run, cpus=1))
    finally:
        ray.shutdown()
    assert result.step == 4
    history = read_history(run)
    assert [r["step"] for r in history] == [2, 4]
    assert best_pointer.read_best(run / "checkpoints")["checkpoint"] in {r["checkpoint"] for r in history}
    assert best_pointer.held(run / "checkpoints") == []
    scorer = RunScorer(cfg, tmp_path / "again")
    for r in history:
        path = run / "checkpoints" / r["checkpoint"]
        again = scorer.score(EvalJob(str(path), r["step"], r["kimg"]))
        torch.testing.assert_close(again["metrics"], r["metrics"], rtol=0, atol=0)
