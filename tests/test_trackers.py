"""Experiment trackers (`bigan/train/trackers.py`), tested for real: short training runs log to a
local MLflow file store and to W&B in offline mode, and the test reads back what each tracker
stored. A run stopped and resumed goes on in the same tracker run (RUN/trackers.json). The run
is made to diverge after logging step 6 and rolls back to step 4 (`recovery:`), so its steps go
back (5, 6 again): W&B given those steps drops the repeats
("Steps must be monotonically increasing"; passing `step=step` to W&B makes
`test_a_run_whose_steps_go_back_keeps_every_record[wandb]` fail with steps 5 and 6 missing).
Skipped, with the reason, where the `trackers` extra is not installed."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigan.config import ConfigError, load_config
from bigan.train.hooks import TrainHooks
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


def _mlflow_run(store: Path, run: Path):
    """The one MLflow run of the experiment named for the run directory."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store.as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name(run.name).experiment_id])
    return found


def _mlflow_history(store: Path, run: Path, key: str) -> list[tuple[int, float]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store.as_uri())
    history = client.get_metric_history(_mlflow_run(store, run).info.run_id, key)
    return [(m.step, m.value) for m in sorted(history, key=lambda m: m.timestamp)]


def _wandb_history(run: Path) -> list[dict]:
    """The history records of the one offline W&B run file under RUN/wandb, in the order logged."""
    (path,) = _wandb_files(run)
    return _history(_wandb_finished(path))


def _wandb_files(run: Path) -> list[Path]:
    """The offline W&B run files under RUN/wandb, oldest first (one per start: offline, a resumed
    run writes a new file, under the same run id)."""
    return sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))


def _history(records: list) -> list[dict]:
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def _wandb_finished(path: Path) -> list:
    """The records of the W&B run file `path` once it ends in its `exit` record: W&B's core
    process writes the file and may still be flushing its last block when `finish()` has
    returned (seen: the one history record of a 2-step run missing about one read in three),
    so this polls, with a deadline."""
    deadline = time.monotonic() + 60
    while True:
        records = _wandb_records(path)
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        assert time.monotonic() < deadline, "the W&B run file has no exit record after 60 s"
        time.sleep(0.2)


def _wandb_records(path: Path) -> list:
    """The records of the offline W&B run file `path`. The .wandb file is LevelDB's log
    format (32 KiB blocks of records, each with a 7-byte header: crc32, length, kind 1 full /
    2 first / 3 middle / 4 last) after a 7-byte file header; W&B's Python package no longer ships
    a reader (its Go core reads it). A record cut short at the end is left out."""
    from wandb.proto import wandb_internal_pb2 as pb

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


class _StopAt(TrainHooks):
    def __init__(self, step: int):
        self.step = step

    def should_stop(self, step: int) -> bool:
        return step == self.step


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_resumed_run_continues_its_tracker_run(tracker, tracker_env, tmp_path):
    """Stopped at step 2 of 4, then resumed with train.steps raised to 6 (a changed param, which
    MLflow refuses to log again): one tracker run holds the steps from before and after."""
    pytest.importorskip(tracker, reason=f"{tracker} is not installed (the `trackers` extra)")
    run, extra = tmp_path / "run", {"train.log_with": f"[{tracker}]"}  # logs every 2 steps
    assert train(load_config(None, tiny_overrides(run, **extra)), _StopAt(2)).step == 2
    ids = json.loads((run / "trackers.json").read_text())
    assert list(ids) == [tracker]
    resumed = load_config(None, tiny_overrides(run, **extra, **{"train.steps": 6}))
    assert train(resumed, resume="auto").step == 6
    assert json.loads((run / "trackers.json").read_text()) == ids
    if tracker == "mlflow":
        found = _mlflow_run(tracker_env, run)  # the only run of the experiment
        assert found.info.run_id == ids["mlflow"] and found.info.status == "FINISHED"
        assert [s for s, _ in _mlflow_history(tracker_env, run, "loss/D")] == [2, 4, 6]
        assert "'steps': 4," in found.data.params["train"]  # MLflow keeps a param's first value
    else:
        files = _wandb_files(run)
        assert len(files) == 2  # offline, each start writes a file: both of the one run id
        records = [_wandb_finished(path) for path in files]
        assert [r.run.run_id for f in records for r in f
                if r.WhichOneof("record_type") == "run"] == [ids["wandb"]] * 2
        assert [[h["train/step"] for h in _history(f) if "loss/D" in h] for f in records] == [
            [2], [4, 6]]


def test_a_resume_whose_mlflow_run_is_gone_logs_to_a_new_run(tracker_env, tmp_path, caplog,
                                                             monkeypatch):
    """The resume finds an empty MLflow store (wiped, or MLFLOW_TRACKING_URI changed): a one-line
    warning, and the resumed steps go to a new MLflow run, recorded in RUN/trackers.json for the
    next resume. (The store is a new directory: MLflow caches the file store of a URI, which
    fails on its directory removed under it, as no new process would.)"""
    pytest.importorskip("mlflow", reason="mlflow is not installed (the `trackers` extra)")
    run, extra = tmp_path / "run", {"train.log_with": "[mlflow]"}
    train(load_config(None, tiny_overrides(run, **extra, **{"train.steps": 2})))
    old = json.loads((run / "trackers.json").read_text())["mlflow"]
    store = tmp_path / "mlruns-new"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    with caplog.at_level(logging.WARNING, logger="bigan.train.trackers"):
        assert train(load_config(None, tiny_overrides(run, **extra)), resume="auto").step == 4
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "bigan.train.trackers"]
    assert old in warning and "new MLflow run" in warning and "\n" not in warning
    new = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert new != old and _mlflow_run(store, run).info.run_id == new
    assert [s for s, _ in _mlflow_history(store, run, "loss/D")] == [4]


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
