"""Training with 2 ranks (`accelerate launch`, gloo on 127.0.0.1) from shards in a bucket of a
loopback S3 server, SIGKILLed mid-run and resumed: it must end where an uninterrupted 2-rank run
from the same shards on local disk ends, the same data position (every sample position of the
3 epochs consumed exactly once) and the same weights.

The tolerance (1e-4, with Adam eps 1e-3) is test_multiprocess_train.py's, whose docstring says
why; here both sides even run the same world size. A sample read twice or lost across the kill
changes the position (checked exactly) and the gradients of that step (far beyond 1e-4).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bigan.checkpoint.loading import load_checkpoint
from bigan.config import dump_config, load_config
from bigan.data.shards import make_synthetic, pack, read_index
from bigan.data.sources import ImageSource
from tests.helpers import ROOT, steps_kimg, tiny_overrides
from tests.object_store import s3_server

pytestmark = [pytest.mark.dist, pytest.mark.slow]
TOL = 1e-4
STEPS, EVERY = 12, 4  # 16 real images per step (batch 8 x 2 D steps), 64 per epoch: 3 epochs
EXTRA = {"train.steps": STEPS, "train.ckpt_every_kimg": steps_kimg(EVERY), "train.sample_every_kimg": 1.6,
         "train.keep_ckpts": 0, "optim.eps": 1e-3, "data.source": "shards",
         "data.num_workers": 1, "data.shuffle_buffer": 4}


def _command(run: Path, data: str, *args: str) -> list[str]:
    config = Path(str(run) + ".yaml")
    config.write_text(dump_config(load_config(None, tiny_overrides(run, **EXTRA,
                                                                   **{"data.path": data}))))
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "launch/accelerate/cpu_2proc.yaml"), "--num_processes", "2",
            "-m", "bigan.cli", "train", str(config), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(run: Path, data: str, *args: str) -> None:
    done = subprocess.run(_command(run, data, *args), capture_output=True, text=True,
                          timeout=600, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]


def _final(run: Path):
    return load_checkpoint(run / "checkpoints" / f"step-{STEPS:08d}")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(local directory, bucket URL) of the same 64 images in 8 shards, packed twice."""
    from bigan.data import synthetic

    local = tmp_path_factory.mktemp("data") / "synth"
    make_synthetic(local, classes=4, resolution=32, n=64, seed=0, min_shards=8)
    with s3_server("bigan-train"):
        images, labels = synthetic.synthetic(64, 4, 32, 3, seed=0)
        names = [f"{synthetic.SHAPES[k % len(synthetic.SHAPES)]}-{k}" for k in range(4)]
        pack(ImageSource("synthetic", "bigan.data.synthetic(seed=0)", names, labels,
                         images=images), "s3://bigan-train/synth", 32, fmt="png", seed=0,
             min_shards=8, progress=False)
        assert read_index("s3://bigan-train/synth")["shards"] == read_index(local)["shards"]
        yield local, "s3://bigan-train/synth"


def test_two_ranks_from_a_bucket_killed_and_resumed_match_an_uninterrupted_local_run(
        shards, tmp_path):
    local, bucket = shards
    straight = tmp_path / "straight"
    _run(straight, str(local))

    run = tmp_path / "streamed"
    job = subprocess.Popen(_command(run, bucket), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env=_env(), cwd=ROOT, start_new_session=True)
    first = run / "checkpoints" / f"step-{EVERY:08d}" / "manifest.json"
    deadline = time.monotonic() + 300
    while not first.is_file() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "the run ended before it could be killed: " + job.stderr.read()[-3000:].decode()
    os.killpg(job.pid, signal.SIGKILL)  # every rank and loader worker, mid-run
    job.wait()
    job.stderr.close()
    assert not (run / "checkpoints" / f"step-{STEPS:08d}").exists()

    _run(run, bucket, "--resume", "auto")
    want, got = _final(straight), _final(run)
    assert got.manifest["data_position"] == want.manifest["data_position"]
    position = got.manifest["data_position"]["position"]
    assert position["complete_epochs"] == 3 and position["epochs"] == {}
    for name in ("G", "G_ema", "D"):
        for key, value in want.models[name].items():
            torch.testing.assert_close(got.models[name][key], value, rtol=TOL, atol=TOL,
                                       msg=lambda m: f"{name}.{key}: {m}")
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == STEPS
