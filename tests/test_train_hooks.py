"""The trainer's hooks in 2 real processes (gloo on 127.0.0.1): one rank asking to stop stops both
at the same step (before, the other rank went on into the next collective and hung), and
`on_checkpoint` reports the same path on every rank.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from bigan.config import load_config
from bigan.train.hooks import TrainHooks
from serving.client import free_port

pytestmark = pytest.mark.dist

STOP_AT = 2


class _StopOnRankOne(TrainHooks):
    def __init__(self, rank: int, log: Path):
        self.rank, self.log = rank, log

    def should_stop(self, step: int) -> bool:
        return self.rank == 1 and step == STOP_AT

    def on_checkpoint(self, path, step):
        with self.log.open("a") as f:
            f.write(json.dumps({"rank": self.rank, "step": step, "path": str(path)}) + "\n")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    # Not tests.process_group.spawn: Accelerate must set up the group itself, from the
    # environment a launcher gives each rank, as in a real run.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      OMP_NUM_THREADS="1")
    from bigan.train.trainer import train

    cfg = load_config(None, [f"train.out_dir={out}", "train.steps=6", "train.batch_size=4",
                             "train.ckpt_every_kimg=0.4", "train.log_every_kimg=0.004", "train.sample_every_kimg=0.4",
                             "model.ch=4", "model.d_ch=4", "model.dim_z=8", "model.shared_dim=4",
                             "model.attention=[]", "data.source=synthetic", "optim.d_steps=1"])
    result = train(cfg, _StopOnRankOne(rank, Path(out) / f"hooks-{rank}.jsonl"))
    (Path(out) / f"result-{rank}.json").write_text(json.dumps({"step": result.step}))


def test_one_rank_stopping_stops_both_with_one_checkpoint(tmp_path):
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung: the stop was not agreed across ranks"
    assert [p.exitcode for p in procs] == [0, 0]
    steps = [json.loads((tmp_path / f"result-{r}.json").read_text())["step"] for r in range(2)]
    assert steps == [STOP_AT, STOP_AT]
    reports = [json.loads((tmp_path / f"hooks-{r}.jsonl").read_text()) for r in range(2)]
    assert reports[0]["step"] == reports[1]["step"] == STOP_AT
    assert reports[0]["path"] == reports[1]["path"]
    assert reports[0]["path"].endswith(f"step-{STOP_AT:08d}")
    assert (Path(reports[0]["path"]) / "manifest.json").exists()
