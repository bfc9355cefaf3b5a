"""Evaluation beside training at the edges of a crash (issue 35, items 3-6): real `bigan train`
processes, real SIGKILLs, real files.

Where a kill lands is made certain, never left to timing: a FIFO that nobody reads stands where
the evaluator writes its curves (`eval/metrics.png.tmp`), after its history line and before it
releases its hold and hands the record back, so it stops there until the test reads the FIFO;
a SIGSTOP keeps the trainer from collecting meanwhile. What must hold:
- a kill after the evaluator recorded a step but before the trainer collected it loses nothing:
  the resume logs the record to metrics.jsonl and TensorBoard, once (item 3);
- a kill before the evaluator released its hold records the step once (item 4);
- a SIGKILL of the trainer alone ends its evaluator at once (item 5);
- a resume from an older step moves the newer checkpoints aside, says so, and takes `best` and the history off
  the steps it retrains (item 6).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from bigan.checkpoint import best as best_pointer
from bigan.config import dump_config
from bigan.eval.run_evaluator import make_evaluator, read_history
from bigan.train.evaluation import HOLDER
from bigan.train.trainer import train
from tests.helpers import ROOT
from tests.helpers import eval_run_config as _cfg

DEADLINE_S = 300  # a cold start of two torch processes on one busy core takes tens of seconds


def _command(run, shards, clf, cache, **over) -> list[str]:
    config = run.with_name(run.name + ".yaml")
    config.write_text(dump_config(_cfg(run, shards, clf, cache, **over)))
    return [sys.executable, "-m", "bigan.cli", "train", str(config)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _start(cmd, log_file):
    """`bigan train` in a session of its own, so the whole job can be killed as a crash would."""
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for(what, proc, log_path, until):
    """Poll `until()` (every 50 ms, up to DEADLINE_S); fail with the log if `proc` ends first."""
    deadline = time.monotonic() + DEADLINE_S
    while not until():
        assert proc.poll() is None, f"ended before {what}:\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {DEADLINE_S} s"
        time.sleep(0.05)


def _kill_job(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its evaluator, as a node failure would
    proc.wait()


def _resume(cmd, *over: str) -> None:
    done = subprocess.run([*cmd, "--resume", "auto", *over], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def _history_steps(run) -> Counter:
    """Steps of eval/history.jsonl as written, line by line (read_history would hide repeats);
    a last line still being written is not counted yet."""
    path = run / "eval" / "history.jsonl"
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    return Counter(json.loads(line)["step"] for line in lines if line.endswith("\n"))


def _logged(run) -> list[tuple[int, dict]]:
    """(step, eval scalars) of each metrics.jsonl line with an evaluation."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "eval/fid" in r:
            out.append((r["step"], {k: v for k, v in r.items() if k.startswith("eval/")}))
    return sorted(out, key=lambda x: x[0])


def _tensorboard_steps(run, tag="eval/fid") -> list[int]:
    """The steps TensorBoard shows for `tag`, purges after resumes applied as it applies them."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(run / "tb"))
    acc.Reload()
    return sorted(e.step for e in acc.Scalars(tag)) if tag in acc.Tags()["scalars"] else []


def _assert_logged_once(run, steps) -> None:
    history = {r["step"]: r["metrics"] for r in read_history(run)}
    logged = _logged(run)
    assert [s for s, _ in logged] == steps  # each evaluated step once in metrics.jsonl
    for step, scalars in logged:
        assert scalars == history[step]  # the numbers the evaluator recorded
    assert _tensorboard_steps(run) == steps  # and once in TensorBoard


@pytest.mark.e2e
@pytest.mark.slow
def test_a_kill_before_the_trainer_collects_a_result_loses_no_log_line(
        tmp_path, tiny_eval_shards, tiny_classifier):
    """The evaluator stops at step 2's curves, its history line written; the trainer is stopped
    (SIGSTOP) before the evaluator can hand the record back; the curves are read, so the evaluator
    finishes step 2 (best, hold released, record queued); then the whole job is SIGKILLed."""
    run = tmp_path / "run"
    cmd = _command(run, tiny_eval_shards, tiny_classifier, tmp_path / "cache",
                   **{"eval.mode": "process"})
    (run / "eval").mkdir(parents=True)
    curves = run / "eval" / "metrics.png.tmp"
    os.mkfifo(curves)
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log_file:
        proc = _start(cmd, log_file)
        try:
            _wait_for("step 2 recorded", proc, log_path, lambda: _history_steps(run)[2] == 1)
            os.kill(proc.pid, signal.SIGSTOP)
            os.waitpid(proc.pid, os.WUNTRACED)  # returns once the trainer is stopped
            with open(curves, "rb") as f:  # lets the evaluator's draw finish
                f.read()
            _wait_for("step 2 released", proc, log_path,
                      lambda: "step-00000002" not in best_pointer.held(run / "checkpoints"))
        finally:
            _kill_job(proc)
    assert 2 not in [s for s, _ in _logged(run)]  # recorded by the evaluator, never logged

    _resume(cmd, "eval.mode=blocking")
    assert _history_steps(run) == Counter({2: 1, 4: 1})
    _assert_logged_once(run, [2, 4])
    _resume(cmd, "eval.mode=blocking", "train.steps=6")  # a plain resume logs nothing again
    _assert_logged_once(run, [2, 4, 6])
    assert best_pointer.held(run / "checkpoints") == []


@pytest.mark.e2e
@pytest.mark.slow
def test_a_kill_before_the_hold_is_released_records_the_step_once(
        tmp_path, tiny_eval_shards, tiny_classifier):
    """The evaluator has written step 2's history line and stops at its curves, still holding
    step 2; the job is killed. The resume hands step 2 over again: it must not be appended twice."""
    run = tmp_path / "run"
    cmd = _command(run, tiny_eval_shards, tiny_classifier, tmp_path / "cache",
                   **{"eval.mode": "process", "train.keep_ckpts": 3})
    (run / "eval").mkdir(parents=True)
    os.mkfifo(run / "eval" / "metrics.png.tmp")
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log_file:
        proc = _start(cmd, log_file)
        try:
            _wait_for("step 2 recorded", proc, log_path, lambda: _history_steps(run)[2] == 1)
        finally:
            _kill_job(proc)
    assert "step-00000002" in best_pointer.held(run / "checkpoints", HOLDER)  # the window
    first = read_history(run)[0]
    (run / "eval" / "metrics.png.tmp").unlink()

    _resume(cmd, "eval.mode=blocking", "train.steps=6")
    assert _history_steps(run) == Counter({2: 1, 4: 1, 6: 1})
    assert read_history(run)[0] == first  # the line written before the kill stands
    _assert_logged_once(run, [2, 4, 6])
    assert best_pointer.held(run / "checkpoints") == []
    best = best_pointer.read_best(run / "checkpoints")
    assert best["value"] == min(r["metrics"]["eval/fid"] for r in read_history(run))


@pytest.mark.e2e
@pytest.mark.slow
def test_the_evaluator_dies_with_a_killed_trainer(tmp_path, tiny_eval_shards, tiny_classifier):
    """SIGKILL of the trainer alone (the OOM killer's way): its evaluator process must not go on
    scoring, writing the history and moving `best`, nor wait forever for the next job."""
    psutil = pytest.importorskip("psutil")
    run = tmp_path / "run"
    cmd = _command(run, tiny_eval_shards, tiny_classifier, tmp_path / "cache",
                   **{"eval.mode": "process", "train.steps": 2000, "train.log_every_kimg": 1.6})
    log_path = tmp_path / "train.log"
    evaluator = []

    def evaluator_scoring() -> bool:
        """Its first record is written: past its start-up, with a backlog of jobs to go."""
        evaluator[:] = [c for c in psutil.Process(proc.pid).children()
                        if "spawn_main" in " ".join(c.cmdline())]
        return bool(evaluator) and sum(_history_steps(run).values()) > 0

    with open(log_path, "w") as log_file:
        proc = _start(cmd, log_file)
        try:
            _wait_for("an evaluator writing the history", proc, log_path, evaluator_scoring)
            os.kill(proc.pid, signal.SIGKILL)  # the trainer only
            proc.wait()
            gone = psutil.wait_procs(evaluator, timeout=10)[0]
            alive = [p for p in evaluator if p not in gone
                     and p.status() != psutil.STATUS_ZOMBIE]  # dead, not yet reaped by init
            assert not alive, "the evaluator outlived its trainer by 10 s"
        finally:
            for p in evaluator:  # by pid: only what this test started
                try:
                    p.kill()
                except psutil.Error:
                    pass
            if proc.poll() is None:
                _kill_job(proc)


@pytest.mark.unit
@pytest.mark.slow
def test_a_resume_from_an_older_step_retracts_best_and_history(
        tmp_path, tiny_eval_shards, tiny_classifier, caplog, capsys):
    run = tmp_path / "run"
    root = run / "checkpoints"
    over = {"eval.mode": "blocking", "train.keep_ckpts": 3}
    cfg = _cfg(run, tiny_eval_shards, tiny_classifier, tmp_path / "cache", **over)
    train(cfg, evaluator=make_evaluator(cfg))
    old = {r["step"]: r for r in read_history(run)}
    assert sorted(old) == [2, 4]
    # `best` on the newest step by its real score: a state any run reaches when step 4 scores best.
    best_pointer.write_best(root, {"checkpoint": "step-00000004", "step": 4, "kimg": old[4]["kimg"],
                                   "metric": "eval/fid", "value": old[4]["metrics"]["eval/fid"],
                                   "direction": "min"})

    cfg = _cfg(run, tiny_eval_shards, tiny_classifier, tmp_path / "cache",
               **{**over, "train.steps": 3})
    with caplog.at_level(logging.WARNING, logger="bigan"):
        result = train(cfg, resume=str(root / "step-00000002"), evaluator=make_evaluator(cfg))
    assert result.step == 3
    said = [r.getMessage() for r in caplog.records if "step-00000004" in r.getMessage()]
    assert len(said) == 1, caplog.text  # one line says it all
    assert "moved step-00000004 to" in said[0] and "best was step-00000004" in said[0]
    assert "now step-00000002" in said[0]

    # step 4's old weights are kept out of `--resume auto`'s reach, and nothing vouches for them
    assert not (root / "step-00000004").exists()
    assert (root / "superseded" / "step-00000004" / "manifest.json").is_file()
    assert _history_steps(run) == Counter({2: 1, 3: 1})
    assert [s for s, _ in _logged(run)] == [2, 3]
    best = best_pointer.read_best(root)
    history = {r["checkpoint"]: r for r in read_history(run)}
    assert best["checkpoint"] in ("step-00000002", "step-00000003")
    assert best["value"] == min(r["metrics"]["eval/fid"] for r in history.values())
    assert best_pointer.best_checkpoint(root) == root / best["checkpoint"]  # export --best's

    # retrained, step 4 is scored afresh; `best` never carries its old score
    cfg = _cfg(run, tiny_eval_shards, tiny_classifier, tmp_path / "cache",
               **{**over, "optim.g_lr": 0.01})  # another line of training than the first
    train(cfg, resume=str(root / "step-00000003"), evaluator=make_evaluator(cfg))
    assert _history_steps(run) == Counter({2: 1, 3: 1, 4: 1})
    history = {r["checkpoint"]: r for r in read_history(run)}
    best = best_pointer.read_best(root)
    assert best["value"] == history[best["checkpoint"]]["metrics"]["eval/fid"]


@pytest.mark.unit
def test_retract_after_picks_the_best_earlier_record_or_removes_best(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        (root / f"step-{step:08d}").mkdir(parents=True)
    records = [{"step": s, "kimg": s / 10, "checkpoint": f"step-{s:08d}",
                "metrics": {"eval/fid": v}} for s, v in ((1, 5.0), (2, float("nan")), (3, 1.0))]
    best_pointer.write_best(root, {"checkpoint": "step-00000003", "metric": "eval/fid",
                                   "value": 1.0, "direction": "min"})
    assert best_pointer.retract_after(root, 3, records) is None  # best is not after the start
    old, new = best_pointer.retract_after(root, 2, records)
    assert old["checkpoint"] == "step-00000003"
    assert (new["checkpoint"], new["value"]) == ("step-00000001", 5.0)  # NaN never wins
    assert best_pointer.read_best(root) == new
    assert best_pointer.retract_after(root, 0, records) == (new, None)
    assert not (root / best_pointer.BEST).exists()
