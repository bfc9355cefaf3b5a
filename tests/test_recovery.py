"""Recovery from divergence (`bigan/train/recovery.py`): runs made to diverge at a known step
roll back to the last good checkpoint, apply the remedy and end finite; the FID rule; the limit;
the config's checks; the same in 2 real processes where only one rank sees the NaN."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bigan.config import ConfigError, dump_config, load_config
from bigan.train import trainer
from bigan.train.trainer import TrainingDiverged, train
from tests.helpers import ROOT, tiny_overrides

RECOVER = {"train.steps": 8, "recovery.enabled": "true", "recovery.lr_factor": 0.5,
           "train.keep_ckpts": 0}


def _cfg(out, **extra):
    return load_config(None, tiny_overrides(out, **{**RECOVER, **extra}))


def _poison(monkeypatch, at_step: int, times: int = 1) -> dict[int, list[torch.Tensor]]:
    """The update of G step `at_step` puts inf into G (its losses, computed before the update,
    stay finite: only the weight check can see it), the first `times` times the run gets there.
    Returns each step's G latents, one entry per time the step ran."""
    real_draw, real_step, z_by_step, hits, now = trainer.draw_batches, trainer.gan_iteration, {}, [], []

    def draw(cfg, feed, prepare, step, *args):
        now.append(step + 1)  # the G step these batches are for
        d_batches, g_batch = real_draw(cfg, feed, prepare, step, *args)
        z_by_step.setdefault(step + 1, []).append(g_batch.z.clone())
        return d_batches, g_batch

    def poisoned(G, *args, **kwargs):
        metrics = real_step(G, *args, **kwargs)
        if now[-1] == at_step and len(hits) < times:
            hits.append(now[-1])
            with torch.no_grad():
                next(G.parameters()).view(-1)[0] = float("inf")
        return metrics

    monkeypatch.setattr(trainer, "draw_batches", draw)
    monkeypatch.setattr(trainer, "gan_iteration", poisoned)
    return z_by_step


def _manifest(ckpt) -> dict:
    return json.loads((ckpt / "manifest.json").read_text())


def _lr(ckpt, name: str) -> float:
    return torch.load(ckpt / f"{name}.pt", weights_only=True)["param_groups"][0]["lr"]


@pytest.mark.unit
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # the grid
def test_a_run_that_diverges_rolls_back_recovers_and_ends_finite(tmp_path, monkeypatch, caplog):
    z_by_step = _poison(monkeypatch, at_step=6)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="bigan.train.recovery"):
        result = train(_cfg(run))
    assert result.step == 8 and all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())
    # one line: what diverged, where it went back to, the remedy
    lines = [r.getMessage() for r in caplog.records if r.name == "bigan.train.recovery"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("recovery 1/3: G's weights or Adam state became non-finite by step 6")
    assert "rolled back to step-00000004 (step 4), lrs x0.5" in lines[0]
    assert "skipping the 2 steps' batches since" in lines[0] and "re-keyed (1)" in lines[0]
    # the remedy is in force and recorded: lrs halved, count in the manifest
    m = _manifest(result.last_checkpoint)
    assert m["recovery"] == {"count": 1, "lr_factor": 0.5}
    assert (_lr(result.last_checkpoint, "opt_G"), _lr(result.last_checkpoint, "opt_D")) == (0.5e-4, 2e-4)
    # data advanced past steps 5 and 6's batches (16 images a step): 10 steps' worth were read
    assert m["data_position"] == {"kind": "memory", "position": 10 * 16} and m["cur_nimg"] == 8 * 16
    # the retried steps drew other noise; the steps before the rollback were not rerun
    assert not torch.equal(z_by_step[5][0], z_by_step[5][1]) and len(z_by_step[4]) == 1
    # one metrics line per step: the abandoned step 6 left with the rollback
    steps = [json.loads(s)["step"] for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["recovery/count"] == 1

    # A resume keeps the lowered lrs and the noise key (the manifest's, not the config's lrs).
    resumed = train(_cfg(run, **{"train.steps": 10}), resume="auto")
    assert _manifest(resumed.last_checkpoint)["recovery"] == {"count": 1, "lr_factor": 0.5}
    assert _lr(resumed.last_checkpoint, "opt_G") == 0.5e-4


@pytest.mark.unit
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_without_skip_and_rekey_the_same_batches_and_noise_come_again(tmp_path, monkeypatch):
    z_by_step = _poison(monkeypatch, at_step=6)
    result = train(_cfg(tmp_path / "run", **{"recovery.skip_data": "false",
                                             "recovery.rekey_noise": "false"}))
    assert result.step == 8
    assert torch.equal(z_by_step[5][0], z_by_step[5][1])
    assert _manifest(result.last_checkpoint)["data_position"]["position"] == 8 * 16


@pytest.mark.unit
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_after_max_times_the_run_stops_with_the_divergence_message(tmp_path, monkeypatch):
    _poison(monkeypatch, at_step=6, times=99)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(_cfg(run, **{"recovery.max_times": 2}))
    message = str(info.value)
    assert message.startswith("G's weights or Adam state became non-finite by step 6; recovery gave up after 2 "
                              "recoveries (recovery.max_times=2); the last good checkpoint is ")
    assert message.count("step-00000004") == 1 and "--resume auto" in message
    assert not list((run / "checkpoints").glob("step-00000006*"))


@pytest.mark.unit
def test_a_loss_made_non_finite_is_recovered_from(tmp_path, monkeypatch):
    real, seen = trainer.gan_iteration, []

    def nan_once(*args, **kwargs):
        metrics = real(*args, **kwargs)
        seen.append(1)
        return metrics | ({"loss/G": torch.tensor(float("nan"))} if len(seen) == 4 else {})

    monkeypatch.setattr(trainer, "gan_iteration", nan_once)
    result = train(_cfg(tmp_path / "run", **{"train.steps": 6}))
    assert result.step == 6 and len(seen) == 6 + 2  # steps 3 and 4 ran twice
    assert _manifest(result.last_checkpoint)["recovery"]["count"] == 1


class ScriptedEvaluator:
    """An Evaluator (bigan.train.evaluation) scoring each checkpoint by a script of FIDs per step;
    `rise` is the FID of step 6 the first time it is scored."""

    def __init__(self, fids: dict[int, float]):
        self.fids, self.done, self.scored = fids, [], []

    def submit(self, job):
        first = job.step not in self.scored
        self.scored.append(job.step)
        fid = self.fids[job.step] if first else 9.0
        self.done.append({"step": job.step, "kimg": job.kimg, "metrics": {"eval/fid": fid}})

    def results(self):
        out, self.done = self.done, []
        return out

    def close(self):
        return self.results()


@pytest.mark.unit
def test_an_fid_rising_past_the_factor_rolls_back_to_the_best(tmp_path, caplog):
    ev = ScriptedEvaluator({2: 10.0, 4: 8.0, 6: 30.0, 8: 9.0, 10: 9.0})
    cfg = _cfg(tmp_path / "run", **{"train.steps": 10, "eval.every_kimg": 0.032,
                                    "eval.data": str(tmp_path), "recovery.fid_rise_factor": 1.5})
    with caplog.at_level(logging.WARNING, logger="bigan.train.recovery"):
        result = train(cfg, evaluator=ev)
    assert result.step == 10
    lines = [r.getMessage() for r in caplog.records if r.name == "bigan.train.recovery"]
    assert len(lines) == 1 and lines[0].startswith(
        "recovery 1/3: eval/fid rose to 30 at step 6, over 1.5 x the best 8; rolled back to "
        "step-00000004 (step 4)"), lines
    # the detection came at step 8's log: steps 5-8 were trained again, 6 scored again
    assert ev.scored == [2, 4, 6, 6, 8, 10]
    history = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["eval/fid"] for h in history if "eval/fid" in h] == [10.0, 8.0, 9.0, 9.0, 9.0]


@pytest.mark.unit
@pytest.mark.parametrize("override, field", [
    ("recovery.lr_factor=0", "recovery.lr_factor"), ("recovery.lr_factor=1.5", "recovery.lr_factor"),
    ("recovery.max_times=0", "recovery.max_times"),
    ("recovery.fid_rise_factor=0.9", "recovery.fid_rise_factor"),
])
def test_bad_recovery_settings_fail_at_load_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        load_config(None, [override])


@pytest.mark.unit
def test_the_fid_rule_needs_evaluations_that_score_fid():
    with pytest.raises(ConfigError, match=r"^recovery.fid_rise_factor=1.5 .*eval.every_kimg"):
        load_config(None, ["recovery.enabled=true", "recovery.fid_rise_factor=1.5"])


TWO_RANKS = """
import sys, torch
from bigan.config import load_config
from bigan.train import trainer

real, calls = trainer.gan_iteration, []

def nan_on_rank_1(*args, **kwargs):
    metrics = real(*args, **kwargs)
    calls.append(1)
    if len(calls) == 4 and torch.distributed.get_rank() == 1:  # only this rank sees it
        metrics = metrics | {"loss/D": torch.tensor(float("nan"))}
    return metrics

trainer.gan_iteration = nan_on_rank_1
trainer.train(load_config(sys.argv[1]))
"""


@pytest.mark.dist
def test_two_processes_agree_when_only_one_rank_sees_the_nan(tmp_path):
    """Without the agreement rank 1 would roll back alone and both would wait in different
    collectives (the subprocess timeout ends it); with it both go back to step 2 and finish."""
    config, script = tmp_path / "run.yaml", tmp_path / "nan_on_rank_1.py"
    config.write_text(dump_config(_cfg(tmp_path / "run", **{
        "train.steps": 6, "optim.eps": 1e-3, "speed.memory_format": "contiguous",
        "speed.optimizer": "for-loop"})))
    script.write_text(textwrap.dedent(TWO_RANKS))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "launch/accelerate/cpu_2proc.yaml"), "--num_processes", "2", str(script),
           str(config)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    # rank 0 (the one that logs) saw finite numbers: it went back because rank 1 did
    assert ("recovery 1/3: another rank's losses or weights became non-finite by step 4; rolled "
            "back to step-00000002 (step 2)") in done.stderr, done.stderr[-4000:]
    last = tmp_path / "run" / "checkpoints" / "step-00000006"
    assert _manifest(last)["recovery"] == {"count": 1, "lr_factor": 0.5}
