"""Experiment trackers (`bigan/train/trackers.py`), tested for real: short training runs log to a
local MLflow file store and to W&B in offline mode, and the test reads back what each tracker
stored. The run is made to diverge after logging step 6 and rolls back to step 4
(`recovery:`), so its steps go back (5, 6 again): W&B given those steps drops the repeats
("Steps must be monotonically increasing"; passing `step=step` to W&B makes
`test_a_run_whose_steps_go_back_keeps_every_record[wandb]` fail with steps 5 and 6 missing).
Skipped, with the reason, where the `trackers` extra is not installed."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigan.config import ConfigError, load_config
from bigan.train.trainer import train
from tests.helpers import ROOT, steps_kimg, tiny_overrides
from tests.test_recovery import _poison  # makes G's update at a step put inf into G

pytestmark = pytest.mark.unit

# Log every step, checkpoint every 4: the inf put in at step 7 is seen at step 7, after steps 5
# and 6 were logged, and the run goes back to step 4.
ROLLBACK = {"train.steps": 8, "train.log_every_kimg": steps_kimg(1),
            "train.ckpt_every_kimg": steps_kimg(4), "train.keep_ckpts": 0,
            "recovery.enabled": "true", "recovery.lr_factor": 0.5}
LOGGED = [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]  # what the tracker must hold, in order


def _metrics_jsonl(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _mlflow_history(store: Path, run: Path, key: str) -> list[tuple[int, float]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store.as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name(run.name).experiment_id])
    history = sorted(client.get_metric_history(found.info.run_id, key), key=lambda m: m.timestamp)
    return [(m.step, m.value) for m in history]


def _wandb_history(run: Path) -> list[dict]:
    """The history records of the offline W&B run under RUN/wandb, in the order logged, once the
    file ends in its `exit` record: W&B's core process writes the file and may still be flushing
    its last block when `finish()` has returned (seen: the one history record of a 2-step run
    missing about one read in three), so this polls, with a deadline."""
    deadline = time.monotonic() + 60
    while True:
        records = _wandb_records(run)
        if records and records[-1].WhichOneof("record_type") == "exit":
            break
        assert time.monotonic() < deadline, "the W&B run file has no exit record after 60 s"
        time.sleep(0.2)
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def _wandb_records(run: Path) -> list:
    """The records of the offline W&B run file under RUN/wandb. The .wandb file is LevelDB's log
    format (32 KiB blocks of records, each with a 7-byte header: crc32, length, kind 1 full /
    2 first / 3 middle / 4 last) after a 7-byte file header; W&B's Python package no longer ships
    a reader (its Go core reads it). A record cut short at the end is left out."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    data, block = path.read_bytes(), 32768
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), "not a W&B transaction log"
    pos, chunks, out = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (n, kind) == (0, 0):  # the zero padding at a block's end
            pos += left
            continue
        if pos + 7 + n > len(data):  # still being written
            break
        chunks, pos = chunks + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            out.append(record)
    return out


@pytest.fixture
def tracker_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store otherwise
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path / "mlruns"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # the grid
@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_run_whose_steps_go_back_keeps_every_record(tracker, tracker_env, tmp_path, monkeypatch):
    pytest.importorskip(tracker, reason=f"{tracker} is not installed (the `trackers` extra)")
    _poison(monkeypatch, at_step=7)
    run = tmp_path / "run"
    result = train(load_config(None, tiny_overrides(run, **ROLLBACK,
                                                    **{"train.log_with": f"[{tracker}]"})))
    assert result.step == 8
    final = _metrics_jsonl(run)  # the rollback left one line per step, the retrained ones
    assert sorted(final) == list(range(1, 9))
    if tracker == "mlflow":
        history = _mlflow_history(tracker_env, run, "loss/D")
        assert [s for s, _ in history] == LOGGED
        kimg = _mlflow_history(tracker_env, run, "progress/kimg")
    else:
        history = [(r["train/step"], r["loss/D"]) for r in _wandb_history(run) if "loss/D" in r]
        assert [s for s, _ in history] == LOGGED
        kimg = [(r["train/step"], r["progress/kimg"]) for r in _wandb_history(run) if "loss/D" in r]
    for step, value in history[-4:]:  # the retrained steps: the values metrics.jsonl holds
        assert value == pytest.approx(final[step]["loss/D"], rel=1e-6)
    # the x axis goes back with the rollback: kimg of steps 5, 6 twice
    assert [k for _, k in kimg] == [pytest.approx(steps_kimg(s)) for s in LOGGED]


def test_wandb_plots_every_metric_against_kimg(tracker_env, tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (the `trackers` extra)")
    run = tmp_path / "run"
    train(load_config(None, tiny_overrides(run, **{"train.steps": 2, "train.log_with": "[wandb]"})))
    (record,) = [r for r in _wandb_history(run) if "loss/D" in r]
    assert record["train/step"] == 2 and record["progress/kimg"] == pytest.approx(steps_kimg(2))
    # the W&B steps are its own count, not ours: nothing for W&B to refuse
    assert record["_step"] == 0


def test_a_tracker_that_cannot_start_is_one_line_naming_the_field(monkeypatch, tmp_path):
    pytest.importorskip("mlflow", reason="mlflow is not installed (the `trackers` extra)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses the file store
    cfg = load_config(None, tiny_overrides(tmp_path / "run", **{"train.log_with": "[mlflow]"}))
    with pytest.raises(ConfigError, match=r"^train\.log_with: a tracker could not start "
                                          r"\(MlflowException: .*file") as e:
        train(cfg)
    assert "\n" not in str(e.value)


def test_a_tracker_not_installed_is_refused_naming_the_extra(tmp_path):
    """A real `bigan train` whose Python cannot import wandb (`sys.modules["wandb"] = None` makes
    every import of it fail, as where it is not installed): exit 2 and one line on stderr."""
    code = ("import sys; sys.modules['wandb'] = None\n"
            "from bigan.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    args = [*tiny_overrides(tmp_path / "run"), "train.log_with=[tensorboard,wandb]"]
    out = subprocess.run([sys.executable, "-c", code, "train", str(config), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "train.log_with" in lines[0] and "wandb is not installed" in lines[0]
    assert "pip install 'bigan[trackers]'" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()
