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
"""

from __future__ import annotations

from pathlib import Path

from bigan.config import ConfigError
from bigan.train import parallel

EXTRA = "trackers"  # pyproject.toml's optional extra with the trackers tested here
AXIS = "progress/kimg"  # W&B's x axis for every metric


def start(accelerator, run_dir: Path, hparams: dict | None, main: bool) -> None:
    """Start the Accelerate trackers of `accelerator` for the run in `run_dir` on the main
    process. Collective (every rank calls it): when one cannot start (no server, a refused
    store), every rank raises ConfigError naming train.log_with, as the others would otherwise
    train on and wait for the main process at the first all-reduce."""
    error = None
    if main:
        try:
            accelerator.init_trackers(run_dir.name, config=hparams,
                                      init_kwargs={"wandb": {"dir": str(run_dir)}})  # RUN/wandb
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


def log(accelerator, step: int, scalars: dict[str, float]) -> None:
    """`scalars` of training step `step` into every Accelerate tracker (main process)."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.log({**scalars, "train/step": step})  # no step: see the module's docstring
        else:
            tracker.log(scalars, step=step)
