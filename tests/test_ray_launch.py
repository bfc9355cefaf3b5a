"""`bigan launch` on a real two-node Ray cluster on loopback addresses, with a worker killed.

Two `ray start` nodes (127.0.0.2 head, 127.0.0.3 joining, one CPU each) in a private temp dir;
the 2-worker job is placed one worker per node. After the first checkpoint a worker process is
SIGKILLed: Ray must restart the group from the newest reported checkpoint and the run must
finish with every checkpoint intact. The cluster is stopped by PID (never `ray stop`, which
would kill every Ray process of the user). One Ray job costs ~3.4 GB: keep Ray tests few.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.train")
psutil = pytest.importorskip("psutil")

from bigan.checkpoint import store as ckpt  # noqa: E402
from bigan.checkpoint.loading import verify_checkpoint  # noqa: E402
from serving.client import free_port  # noqa: E402

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent
HEAD, NODE = "127.0.0.2", "127.0.0.3"


def _kill_cluster(temp_dir: str, address: str) -> None:
    """Every process of this cluster: its daemons name the temp dir or the GCS address."""
    roots = [p for p in psutil.process_iter(["cmdline"])
             if any(temp_dir in a or address in a for a in (p.info["cmdline"] or []))]
    procs = set(roots)
    for p in roots:
        try:
            procs.update(p.children(recursive=True))
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(procs), timeout=10)


TOKEN = secrets.token_hex(16)


def ray_env() -> dict[str, str]:
    """Token authentication with this session's token: a joining node and the driver must present
    the head's token, and nothing depends on a token file in the user's home."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


@pytest.fixture
def two_node_cluster():
    temp_dir = tempfile.mkdtemp(prefix="bigan-ray-", dir="/tmp")  # short: unix socket paths
    port = free_port(HEAD)
    address = f"{HEAD}:{port}"
    env = ray_env()
    common = ["--num-cpus=1", "--disable-usage-stats"]

    def ray_start(*args: str) -> None:
        done = subprocess.run([BIN / "ray", "start", *args, *common], env=env, text=True,
                              capture_output=True, timeout=180)
        assert done.returncode == 0, f"ray start {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    try:
        ray_start("--head", f"--node-ip-address={HEAD}", f"--port={port}", f"--temp-dir={temp_dir}",
                  "--include-dashboard=false")
        ray_start(f"--address={address}", f"--node-ip-address={NODE}")
        yield address
    finally:
        _kill_cluster(temp_dir, address)


def test_launch_two_nodes_survives_a_killed_worker(tmp_path, two_node_cluster):
    run = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {arch: biggan, resolution: 32, num_classes: 4, ch: 8, d_ch: 8, dim_z: 16,"
        " shared_dim: 8, attention: [16]}\n"
        "data: {source: synthetic, num_samples: 64}\n"
        "loss: {penalty: r1, penalty_weight: 1.0}\n"
        "train: {batch_size: 8, steps: 12, log_every_kimg: 0.032, sample_every_kimg: 0.192,"
        " ckpt_every_kimg: 0.032, grid_per_class: 2, keep_ckpts: 0}\n"  # 2, 12, 2 steps of 16 images
        "optim: {d_steps: 2}\n")
    log = (tmp_path / "launch.log").open("w")
    job = subprocess.Popen(
        [BIN / "bigan", "launch", str(config), "--address", two_node_cluster, "--workers", "2",
         "--spread", "--max-failures", "2", "--out", str(run)],
        stdout=log, stderr=subprocess.STDOUT, env=ray_env())
    try:
        # SIGKILL rank 1 (on the other node) once Ray holds a checkpoint. Our step directory
        # exists before `ray.train.report` registers it with the controller, so wait until two
        # later checkpoints are on disk: by then step 2 has certainly been registered.
        deadline = time.monotonic() + 800  # ~60 s on a quiet 2-core machine; slack for loaded CI
        while not ((run / "ray" / "bigan" / "step-00000002").is_dir()
                   and (run / "checkpoints" / "step-00000006").is_dir()):
            assert job.poll() is None, (tmp_path / "launch.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(1)
        workers = [json.loads((run / "workers" / f"rank-{r}.json").read_text()) for r in (0, 1)]
        assert {w["node_ip"] for w in workers} == {HEAD, NODE}  # one worker per node
        os.kill(workers[1]["pid"], signal.SIGKILL)
        rc = job.wait(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    text = (tmp_path / "launch.log").read_text()
    assert rc == 0, text[-3000:]
    assert "finished: 12 steps on 2 workers" in text
    restarted = json.loads((run / "workers" / "rank-1.json").read_text())
    assert restarted["pid"] != workers[1]["pid"]  # the group was restarted...
    assert Path(restarted["resumed_from"]).name.startswith("step-")  # ...from a reported checkpoint
    assert Path(restarted["resumed_from"]).parent == run / "ray" / "bigan"
    # every checkpoint, ours and Ray's copies, is complete; the final one is step 12
    steps = ckpt.list_checkpoints(run / "checkpoints")
    assert steps and steps[-1].name == "step-00000012"
    copies = sorted((run / "ray" / "bigan").glob("step-*"))  # what Ray persisted to storage
    assert copies and copies[-1].name == "step-00000012"
    for path in [*steps, *copies]:
        verify_checkpoint(path)
    assert json.loads((steps[-1] / "manifest.json").read_text())["step"] == 12
    # the metrics after the restart continue the step count instead of starting over
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == 12 and min(logged) == 2
