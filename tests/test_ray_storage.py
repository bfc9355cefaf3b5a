"""`bigan launch --storage s3://... --resume s3://.../step-N` against a loopback S3 server: Ray
Train persists every reported checkpoint into the bucket (through pyarrow's S3 file system, set
up from the same AWS_* variables), and the run starts from a checkpoint fetched from a URL.

One local Ray job (started by the `bigan launch` process itself, 2 workers of one CPU); the
checkpoint it starts from is a 2-step run trained in this process and uploaded to the bucket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.train")

from bigan.checkpoint.remote import fetch_checkpoint  # noqa: E402
from bigan.checkpoint.loading import verify_checkpoint  # noqa: E402
from bigan.config import load_config  # noqa: E402
from tests.helpers import tiny_overrides  # noqa: E402
from tests.object_store import s3_server  # noqa: E402

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent


def test_launch_keeps_checkpoints_in_a_bucket_and_resumes_from_a_checkpoint_url(tmp_path):
    import fsspec

    from bigan.train.trainer import train

    with s3_server("bigan-ray"):
        first = train(load_config(None, tiny_overrides(tmp_path / "first", **{
            "train.steps": 2, "train.sample_every_kimg": 1.6})))
        fs = fsspec.filesystem("s3")
        fs.put(str(first.last_checkpoint), "bigan-ray/start/", recursive=True)
        start = "s3://bigan-ray/start/step-00000002"

        config = tmp_path / "tiny.yaml"
        config.write_text(
            "model: {arch: biggan, resolution: 32, num_classes: 4, ch: 8, d_ch: 8, dim_z: 16,"
            " shared_dim: 8, attention: [16]}\n"
            "data: {source: synthetic, num_samples: 64}\n"
            "train: {batch_size: 8, steps: 4, log_every_kimg: 0.032, sample_every_kimg: 1.6,"
            " ckpt_every_kimg: 0.032, grid_per_class: 2, keep_ckpts: 0}\n"
            "optim: {d_steps: 2}\nema: {start_kimg: 0.016, decay: 0.9}\n")
        run = tmp_path / "run"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        done = subprocess.run(
            [BIN / "bigan", "launch", str(config), "--workers", "2", "--out", str(run),
             "--storage", "s3://bigan-ray/runs", "--resume", start, "--max-failures", "0"],
            capture_output=True, text=True, timeout=900, env=env)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        assert "finished: 4 steps on 2 workers" in done.stdout

        # the job started from the fetched checkpoint: every worker says so, and only step 4
        # was trained and reported (step 2 came from the URL)
        for rank in (0, 1):
            worker = json.loads((run / "workers" / f"rank-{rank}.json").read_text())
            assert worker["resumed_from"] == start
        persisted = sorted(p.rpartition("/")[2] for p in fs.ls("bigan-ray/runs/bigan")
                           if p.rpartition("/")[2].startswith("step-"))
        assert persisted == ["step-00000004"]
        copy = fetch_checkpoint("s3://bigan-ray/runs/bigan", tmp_path / "fetched")
        assert copy.name == "step-00000004"
        verify_checkpoint(copy)  # every file's size and sha256, as Ray uploaded them
        manifest = json.loads((copy / "manifest.json").read_text())
        assert manifest["step"] == 4 and manifest["world_size"] == 2
