"""DeepSpeed's JIT-built ops at a ZeRO start (`bigan/train/deepspeed_ops.py`), with real files and
real processes: a ZeRO start builds nothing and so ignores a build lock a killed process left
(it used to wait for it for ever), and torch's wait for another build reports a stale lock,
naming it, while still waiting for a live builder."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from bigan.train.deepspeed_ops import STALE_AFTER_S, DeepSpeedOpsError, held_open, no_endless_build_wait
from serving.client import free_port
from tests.helpers import ROOT

pytest.importorskip("deepspeed")
FileBaton = pytest.importorskip("torch.utils.file_baton").FileBaton

# One process, a one-rank gloo group, ZeRO-1 over a tiny BigGAN: what every ZeRO worker does.
ZERO_START = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo", rank=0, world_size=1)
from bigan import models
from bigan.config import ModelConfig
from bigan.train import parallel
G, D = models.build(ModelConfig(arch="biggan", resolution=32, num_classes=4, ch=4, d_ch=4,
                                dim_z=16, shared_dim=8, attention=[16]))
p = parallel.prepare("zero1", G, D, torch.optim.SGD(G.parameters(), lr=0.1),
                     torch.optim.SGD(D.parameters(), lr=0.1), 0.0, torch.device("cpu"))
print("prepared", p.strategy, flush=True)
os._exit(0)
"""


def _wait_in_thread(path) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run():
        try:
            with no_endless_build_wait():
                FileBaton(str(path)).wait()
            outcome.append("returned")
        except DeepSpeedOpsError as e:
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)  # a hang must not hang pytest
    thread.start()
    return thread, outcome


@pytest.mark.unit
def test_a_stale_build_lock_is_reported_naming_it(tmp_path):
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.write_text("")  # what a builder killed while holding the baton leaves
    thread, outcome = _wait_in_thread(lock)
    thread.join(timeout=STALE_AFTER_S + 30)
    assert outcome, "still waiting for a lock nobody holds"
    assert isinstance(outcome[0], DeepSpeedOpsError)
    assert str(lock) in str(outcome[0]) and f"rm {lock}" in str(outcome[0])


@pytest.mark.unit
def test_a_live_builders_lock_is_waited_for(tmp_path):
    """A builder holds the baton open for longer than STALE_AFTER_S, then releases it."""
    lock = tmp_path / "lock"
    builder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom torch.utils.file_baton import FileBaton\n"
         "b = FileBaton(sys.argv[1]); assert b.try_acquire(); print('held', flush=True)\n"
         f"time.sleep({STALE_AFTER_S + 3}); b.release()", str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "held"
        assert held_open(lock)
        thread, outcome = _wait_in_thread(lock)
        thread.join(timeout=STALE_AFTER_S + 60)
        assert outcome == ["returned"]
        assert builder.wait(timeout=30) == 0
    finally:
        builder.kill()


@pytest.mark.dist
@pytest.mark.slow
def test_a_zero_start_builds_no_op_and_ignores_a_stale_build_lock(tmp_path):
    """Before: DeepSpeed's comm backend loaded the shm op, found this lock and waited for ever."""
    extensions = tmp_path / "torch_extensions"
    lock = extensions / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
           "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    done = subprocess.run([sys.executable, "-c", ZERO_START], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "prepared zero1" in done.stdout
    assert sorted(p.name for p in lock.parent.iterdir()) == ["lock"]  # nothing was built
