"""One job per run directory (`bigan/train/run_lock.py`), with real processes, real SIGKILLs and
the real lock file: a live holder refuses a second job with a line naming it (host, pid, start
time); a holder killed outright leaves the file but not the lock, so a restart takes over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigan.config import dump_config, load_config
from bigan.train.run_lock import LOCK_NAME, RunLock, RunLockError
from tests.helpers import ROOT, tiny_overrides

pytestmark = pytest.mark.unit
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}

# A process that takes the lock, optionally forks a child that outlives it, and waits.
HOLDER = """
import os, sys, time
from bigan.train.run_lock import RunLock
lock = RunLock(sys.argv[1])
if sys.argv[2] == "fork" and os.fork() == 0:
    time.sleep(120)  # a DataLoader-like child, still running after its parent is killed
    os._exit(0)
print("held", flush=True)
time.sleep(120)
"""


def _hold(run: Path, mode: str = "plain") -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), mode], stdout=subprocess.PIPE,
                         text=True, env=ENV, cwd=ROOT)
    assert p.stdout.readline().strip() == "held"  # the lock is taken before this line is printed
    return p


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)


def test_a_live_holder_refuses_a_second_lock_naming_it(tmp_path):
    run = tmp_path / "run"
    holder = _hold(run)
    try:
        record = json.loads((run / LOCK_NAME).read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        with pytest.raises(RunLockError) as e:
            RunLock(run)
        message = str(e.value)
        assert f"pid {holder.pid} on {socket.gethostname()}, started {record['started']}" in message
        assert str(run) in message and "\n" not in message
    finally:
        _kill(holder)


def test_a_killed_holder_leaves_a_stale_file_that_does_not_block(tmp_path, caplog):
    run = tmp_path / "run"
    holder = _hold(run)
    _kill(holder)
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid  # the file stays
    with caplog.at_level("INFO", logger="bigan.train.run_lock"):
        lock = RunLock(run)
    try:
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert f"from pid {holder.pid}" in caplog.text and "without releasing it" in caplog.text
    finally:
        lock.release()
    assert (run / LOCK_NAME).read_text() == ""  # a clean release says so
    caplog.clear()
    with caplog.at_level("INFO", logger="bigan.train.run_lock"):
        RunLock(run).release()  # released: taken again at once, nothing to take over
    assert "took over" not in caplog.text


def test_a_child_forked_by_the_holder_does_not_keep_the_lock(tmp_path):
    """Forked children share the lock's open file; the holder's death must still free it."""
    run = tmp_path / "run"
    holder = _hold(run, "fork")
    child = None
    try:
        child = int(subprocess.run(["pgrep", "-P", str(holder.pid)], capture_output=True,
                                   text=True).stdout.split()[0])
        _kill(holder)
        os.kill(child, 0)  # the child is still running
        RunLock(run).release()
    finally:
        if holder.poll() is None:
            _kill(holder)
        if child:
            os.kill(child, signal.SIGKILL)


def test_a_run_directory_that_cannot_be_made_is_one_line_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("")  # refused even to root, unlike a read-only directory
    run = tmp_path / "file" / "run"
    with pytest.raises(RunLockError, match=f"cannot lock the run directory: {run}: Not a directory"):
        RunLock(run)


def _bigan_train(config: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bigan.cli", "train", str(config), *args],
                            env=ENV, cwd=ROOT, text=True, **kw)


@pytest.mark.slow
def test_second_bigan_train_on_a_live_run_is_refused_and_a_restart_after_sigkill_proceeds(tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(dump_config(load_config(None, tiny_overrides(
        run, **{"train.steps": 100000, "train.ckpt_every_kimg": 0.032, "train.keep_ckpts": 2,
                "train.log_every_kimg": 16, "train.sample_every_kimg": 1600}))))
    first = _bigan_train(config, "--resume", "auto", stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list((run / "checkpoints").glob("step-*")):  # training, past its first save
            assert first.poll() is None and time.monotonic() < deadline, "the first job never saved"
            time.sleep(0.2)
        second = _bigan_train(config, "--resume", "auto", stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 2, err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("bigan train: error:")]
        assert len(lines) == 1 and f"in use by pid {first.pid} on {socket.gethostname()}" in lines[0]
        assert "started 20" in lines[0]
        assert first.poll() is None  # the first job is untouched and still training
        _kill(first)
        # Finished checkpoints only: the SIGKILL may leave a save's temporary folder behind
        # (step-00000018.tmp...), which resume skips and this count must too.
        step = max(int(p.name[5:]) for p in (run / "checkpoints").glob("step-*") if p.name[5:].isdigit())
        restart = _bigan_train(config, "--resume", "auto", f"train.steps={step + 2}",
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = restart.communicate(timeout=300)
        assert restart.returncode == 0, err[-3000:]
        assert f"trained {step + 2} steps" in out
        took_over = [line for line in err.splitlines() if "took over" in line]
        assert len(took_over) == 1 and f"pid {first.pid}" in took_over[0], err[-3000:]
        assert (run / LOCK_NAME).read_text() == ""  # released cleanly at the end
    finally:
        if first.poll() is None:
            _kill(first)
