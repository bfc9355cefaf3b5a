"""Experiment trackers beside metrics.jsonl and TensorBoard (`train.log_with`): MLflow, Weights &
Biases and the other trackers Accelerate runs, started with the run's directory and fed so that
none drops a record.

Records do not arrive in step order: an evaluation is logged at the step of the checkpoint it
scored, which is behind the training step by then, and a recovery's rollback (`recovery.py`)
trains the steps after the last good checkpoint again. MLflow keeps a metric at any step.
W&B refuses a step lower than one it has seen ("Steps must be monotonically increasing, so this
data will be ignored"), so W&B gets no step of ours: its own `_step` counts the records, each
record carries `train/step`, and every metric is plotted against `progress/kimg` (`define_metric`
with a custom step metric, which may go back). Every record of the run log has `progress/kimg`
(`RunLog.write`, and evaluations with the kimg of the checkpoint they scored).

The tested trackers come with the `trackers` extra (`pip install 'bigan[trackers]'`: mlflow-skinny,
wandb). Where they write is theirs to say: MLflow's `MLFLOW_TRACKING_URI` (a local file store
needs `MLFLOW_ALLOW_FILE_STORE=true` since MLflow 3), W&B's `WANDB_MODE` (`offline` keeps the run
in RUN/wandb for `wandb sync`).

One run directory is one tracker run: the first start records each tracker's run id in
RUN/trackers.json (MLflow's run id, W&B's run id) and every later start in that directory (a
`--resume auto` after a failure, a resume with more steps) continues those runs, so their curves
are not split over several. Trackers without an id recorded here (aim, comet_ml, ...) start a
new run each time, as Accelerate does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bigan.checkpoint.durable import write_atomically
from bigan.config import ConfigError
from bigan.train import parallel

logger = logging.getLogger(__name__)  # `log` is the function below

EXTRA = "trackers"  # pyproject.toml's optional extra with the trackers tested here
AXIS = "progress/kimg"  # W&B's x axis for every metric
RUNS = "trackers.json"  # RUN/trackers.json: {"mlflow": run id, "wandb": run id}, for resumes


def start(accelerator, run_dir: Path, hparams: dict | None, main: bool) -> None:
    """Start the Accelerate trackers of `accelerator` for the run in `run_dir` on the main
    process. Collective (every rank calls it): when one cannot start (no server, a refused
    store), every rank raises ConfigError naming train.log_with, as the others would otherwise
    train on and wait for the main process at the first all-reduce."""
    error = None
    if main:
        try:
            _start_main(accelerator, run_dir, hparams)
        except Exception as e:  # the trackers' own errors (MlflowException, wandb.Error, OSError)
            error = e
    if parallel.any_rank(error is not None, accelerator.device):
        if error is None:
            raise ConfigError("train.log_with: a tracker could not start on the main process "
                              "(its message there says why)")
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"train.log_with: a tracker could not start ({type(error).__name__}: "
                          f"{first})") from error
    if not main:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.run.define_metric(AXIS)
            tracker.run.define_metric("*", step_metric=AXIS)


def _start_main(accelerator, run_dir: Path, hparams: dict | None) -> None:
    """Start the trackers, continuing the runs RUN/trackers.json names; record their ids there."""
    names = {str(t) for t in accelerator.log_with}
    recorded = _recorded_runs(run_dir)
    runs = {name: run_id for name, run_id in recorded.items() if name in names}
    if "mlflow" in runs and not _mlflow_run_exists(runs["mlflow"]):
        # The store was wiped or is another one now (MLFLOW_TRACKING_URI): a run of days is not
        # stopped for its curves; they go to a new MLflow run, recorded in place of the old one.
        logger.warning("MLflow run %s of %s is not in the tracking store any more; logging to "
                       "a new MLflow run", runs.pop("mlflow"), run_dir / RUNS)
    init_kwargs = {"wandb": {"dir": str(run_dir)}}  # RUN/wandb
    if "mlflow" in runs:
        init_kwargs["mlflow"] = {"run_id": runs["mlflow"]}
    if "wandb" in runs:  # "allow": a W&B run of that id goes on, or starts if there is none
        init_kwargs["wandb"] |= {"id": runs["wandb"], "resume": "allow"}
    # The config is stored below, tracker by tracker: MLflow refuses a param whose value changed.
    accelerator.init_trackers(run_dir.name, config=None, init_kwargs=init_kwargs)
    started = {}
    for tracker in accelerator.trackers:
        if tracker.name == "mlflow":
            started["mlflow"] = tracker.tracker.info.run_id
        elif tracker.name == "wandb":
            started["wandb"] = tracker.run.id
    if recorded | started != recorded:  # kept: the ids of trackers left out of log_with this time
        write_atomically(run_dir / RUNS, (json.dumps(recorded | started, indent=1) + "\n").encode())
    if hparams is None:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "mlflow" and "mlflow" in runs:
            tracker.store_init_configuration(_new_params(tracker.tracker, hparams))
        else:  # W&B updates a changed value (allow_val_change): its config shows the latest
            tracker.store_init_configuration(hparams)


def _recorded_runs(run_dir: Path) -> dict[str, str]:
    """The tracker run ids in RUN/trackers.json; none where there is no such file (a first start)
    or it cannot be read (new runs then, as for ids the trackers no longer know)."""
    path = run_dir / RUNS
    if not path.is_file():
        return {}
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        logger.warning("%s cannot be read (%s); the trackers start new runs", path, e)
        return {}
    if not isinstance(runs, dict):
        logger.warning("%s is not a mapping of tracker names to run ids; the trackers start "
                       "new runs", path)
        return {}
    return {k: v for k, v in runs.items() if isinstance(v, str) and v}


def _mlflow_run_exists(run_id: str) -> bool:
    """Whether the MLflow tracking store holds run `run_id`, not deleted. Other errors (no
    server, a refused store) are raised: the tracker could not start either."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return run.info.lifecycle_stage != "deleted"


def _new_params(run, hparams: dict) -> dict:
    """The `hparams` that the continued MLflow `run` lacks. MLflow keeps a param's first value
    and refuses another one for the same key (INVALID_PARAMETER_VALUE), and a resume may change
    the config (more train.steps, the lower lrs DIVERGENCE_ADVICE asks for): those keep their
    first value in MLflow and the resume trains on; RUN/config.yaml holds the config in force."""
    stored = run.data.params
    changed = sorted(k for k, v in hparams.items() if k in stored and str(v) != stored[k])
    if changed:
        logger.info("MLflow run %s keeps the params it was started with; changed since: %s "
                    "(RUN/config.yaml holds the new values)", run.info.run_id, ", ".join(changed))
    return {k: v for k, v in hparams.items() if k not in stored}


def log(accelerator, step: int, scalars: dict[str, float]) -> None:
    """`scalars` of training step `step` into every Accelerate tracker (main process)."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.log({**scalars, "train/step": step})  # no step: see the module's docstring
        else:
            tracker.log(scalars, step=step)
