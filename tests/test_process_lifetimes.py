"""Processes die with whoever started them (`bigan/train/process_lifetime.py`): real launchers,
real SIGKILLs, real process tables. A SIGKILL gives the launcher no chance to stop anything, so
only the children's parent-death signal can: `accelerate launch` killed takes both training
workers with it, a `bigan train` killed (the OOM killer) takes its evaluator process, and a
`bigan launch` killed takes its Ray workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bigan.config import dump_config, load_config
from bigan.train.run_lock import LOCK_NAME
from tests.helpers import ROOT, eval_run_config, tiny_overrides

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
LONG = {"train.steps": 100000, "train.ckpt_every_kimg": 0.032, "train.keep_ckpts": 2,
        "train.log_every_kimg": 16, "train.sample_every_kimg": 1600}  # 2, 1000, 100000 steps


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_for(what: str, ready, job: subprocess.Popen, timeout_s: float = 600,
              log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while not (found := ready()):
        tail = log.read_text()[-3000:] if log else ""
        assert job.poll() is None, f"the job exited (code {job.returncode}) before {what}\n{tail}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(0.2)
    return found


def _clean_up(job: subprocess.Popen, pids: list[int]) -> None:
    """Kill what a failed test may have left running: the job and the processes it started."""
    if job.poll() is None:
        job.kill()
    for p in pids:
        if not _gone(p):
            os.kill(p, signal.SIGKILL)


def _assert_all_gone(pids: list[int], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(_gone(p) for p in pids):
        if time.monotonic() > deadline:
            alive = [p for p in pids if not _gone(p)]
            for p in alive:
                os.kill(p, signal.SIGKILL)  # leave nothing behind, then fail
            pytest.fail(f"still running {timeout_s:g} s after their parent was killed: {alive}")
        time.sleep(0.2)


@pytest.mark.dist
@pytest.mark.slow
def test_killing_accelerate_launch_kills_both_workers(tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(dump_config(load_config(None, tiny_overrides(run, **LONG))))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(ROOT / "launch/accelerate/cpu_2proc.yaml"), "-m", "bigan.cli", "train", str(config)],
        env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        # Both ranks are past train()'s start once a checkpoint exists (saving is collective).
        _wait_for("checkpoint", lambda: list((run / "checkpoints").glob("step-*")), launcher)
        workers = [p for p in _children(launcher.pid) if "bigan.cli" in _cmdline(p)]
        assert len(workers) == 2, [_cmdline(p) for p in _children(launcher.pid)]
        # Only one process (rank 0) holds the run's lock.
        assert json.loads((run / LOCK_NAME).read_text())["pid"] in workers
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        _assert_all_gone(workers)
    finally:
        _clean_up(launcher, workers)


@pytest.mark.e2e
@pytest.mark.slow
def test_killing_bigan_train_kills_its_evaluator(tmp_path, tiny_eval_shards, tiny_classifier):
    run = tmp_path / "run"
    cfg = eval_run_config(run, tiny_eval_shards, tiny_classifier, tmp_path / "cache",
                          **{**LONG, "eval.mode": "process"})
    config = tmp_path / "run.yaml"
    config.write_text(dump_config(cfg))
    trainer = subprocess.Popen([sys.executable, "-m", "bigan.cli", "train", str(config)],
                               env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    evaluator: list[int] = []
    try:
        evaluator = _wait_for("evaluator process", lambda: [
            p for p in _children(trainer.pid) if "spawn_main" in _cmdline(p)], trainer)
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=30)
        _assert_all_gone(evaluator)
    finally:
        _clean_up(trainer, evaluator)


def _processes_naming(text: str) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and text in _cmdline(int(p))]


@pytest.mark.ray
@pytest.mark.slow
def test_killing_bigan_launch_kills_its_workers(tmp_path):
    """No code of ours: Ray fate-shares a local cluster with the driver that started it (the
    same parent-death signal), and its workers exit with their raylet. Checked, not assumed."""
    pytest.importorskip("ray.train")
    run, temp = tmp_path / "run", tempfile.mkdtemp(prefix="bigan-ray-", dir="/tmp")  # short: sockets
    config = tmp_path / "run.yaml"
    config.write_text(dump_config(load_config(None, tiny_overrides(run, **LONG))))
    job = subprocess.Popen([Path(sys.executable).parent / "bigan", "launch", str(config),
                            "--workers", "2", "--out", str(run)],
                           env={**ENV, "RAY_TMPDIR": temp, "RAY_USAGE_STATS_ENABLED": "0"},
                           cwd=ROOT, stdout=(tmp_path / "launch.log").open("w"),
                           stderr=subprocess.STDOUT)
    try:
        _wait_for("checkpoint", lambda: list((run / "checkpoints").glob("step-*")), job,
                  log=tmp_path / "launch.log")
        workers = [json.loads((run / "workers" / f"rank-{r}.json").read_text())["pid"]
                   for r in (0, 1)]
        assert not any(_gone(p) for p in workers)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
        _assert_all_gone(workers, timeout_s=120)
    finally:
        _clean_up(job, _processes_naming(temp))  # whatever of this Ray is left, by its temp dir


ENDING = """
import atexit, json, os, sys, torch
from bigan.config import load_config
from bigan.train.trainer import train

def record():  # registered first, so it runs last: after the trainer's own atexit handler
    threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    path = f"{sys.argv[2]}/rank-{os.environ['RANK']}.json"
    with open(path, "w") as f:
        json.dump({"threads": threads, "group": torch.distributed.is_initialized()}, f)

atexit.register(record)
train(load_config(sys.argv[1]))
"""


@pytest.mark.dist
def test_a_finished_worker_ends_its_process_group_before_the_interpreter_does(tmp_path):
    """Gloo's threads outliving train() could abort a finished worker at exit (SIGABRT, torch PR
    179291): the group train() created is destroyed at exit, its threads joined, before Python
    finalizes. Determinism set after the group existed kept the threads alive (process_lifetime)."""
    config, script = tmp_path / "run.yaml", tmp_path / "ending.py"
    config.write_text(dump_config(load_config(None, tiny_overrides(
        tmp_path / "run", **{"train.steps": 2, "train.deterministic": True}))))
    script.write_text(ENDING)
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(ROOT / "launch/accelerate/cpu_2proc.yaml"), str(script), str(config), str(tmp_path)],
        env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert seen["group"] is False, seen
        assert not [t for t in seen["threads"] if "gloo" in t], seen
