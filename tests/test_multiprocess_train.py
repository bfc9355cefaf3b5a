"""The trainer in 2 real processes (`accelerate launch`, gloo on 127.0.0.1) and elastic resume.

With in-memory data keyed by global position and cross-replica batch norm, 2 processes on
halves of the global batch compute what 1 process computes on the whole batch; only the order of
floating-point reductions differs (gradient all-reduce, cross-replica BN statistics, thread
count): ~1e-7 relative per gradient. Adam with its usual eps (1e-8) would turn that rounding noise
into +-lr steps wherever a gradient is ~0 (conv biases in front of batch norm: measured 2e-4 on
a few elements), so these runs use eps 1e-3, which keeps updates proportional to such gradients.
Then every weight, EMA weight and buffer agrees within 2.2e-5 (measured, 2 threads in the
reference process, as `make test` runs it); the tolerance is 1e-4. A real bug (a missing
all-reduce, a rank training alone, a wrong data split, per-rank BN statistics, a lost optimizer
state) changes the gradients themselves, not their rounding; checked once by disabling the
gradient all-reduce: the first test fails (on G.attention.16.gamma).

A failure at the start on the main process alone (a tracker of train.log_with) must stop every
rank: checked in 2 spawned ranks (`tests/process_group.py`) with a timeout, as the other rank
would otherwise wait at its first all-reduce for good (measured before the fix: killed at the
timeout, both ranks still running).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bigan.config import dump_config, load_config
from bigan.checkpoint.loading import load_checkpoint
from bigan.train.trainer import train
from tests.helpers import ROOT, tiny_overrides
from tests.process_group import spawn

pytestmark = pytest.mark.dist
TOL = 1e-4
# Spectral norm's power-iteration vectors: D's one call on the concatenated real and fake batch
# (speed.d_call auto) gives GEMMs of other heights under 2 processes than under 1, and u follows
# the weights' rounding through R1's double backward: measured 2.1e-4 on one element of 32 of a
# G u after the 2 -> 1 resume (the weights themselves stay within TOL; 2.2e-5 with d_call
# separate).
TOL_UV = 1e-3
# One execution path for every strategy (ZeRO's `auto` is contiguous + torch's Adam; ddp's would
# be channels_last + fused): a resume across strategies would otherwise add that path's other
# rounding to the strategies' (measured: the zero2 -> 1 resume then differed by 1.7e-4 on a few
# elements, over the tolerance). tests/test_speed.py checks the two paths against each other.
EXTRA = {"train.steps": 4, "train.ckpt_every_kimg": 0.032, "train.sample_every_kimg": 1.6, "loss.penalty": "r1",
         "loss.penalty_weight": 1.0, "train.keep_ckpts": 0, "optim.eps": 1e-3,
         "speed.memory_format": "contiguous", "speed.optimizer": "for-loop"}


def _overrides(out, **extra) -> list[str]:
    return tiny_overrides(out, **{**EXTRA, **extra})


def _launch(out, *args: str, procs: int = 2, **extra) -> None:
    """`accelerate launch` with the shipped 2-process CPU config; OMP_NUM_THREADS=1 per process."""
    config = Path(str(out) + ".yaml")  # the resolved config: exactly what 1 process trains
    config.write_text(dump_config(load_config(None, _overrides(out, **extra))))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "launch/accelerate/cpu_2proc.yaml"), "--num_processes", str(procs),
           "-m", "bigan.cli", "train", str(config), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]


def _weights(ckpt: Path) -> dict[str, dict[str, torch.Tensor]]:
    models = load_checkpoint(ckpt).models  # merges the parts each rank wrote
    return {name: models[name] for name in ("G", "G_ema", "D")}


def _assert_written_by_both_ranks(ckpt: Path) -> None:
    """Each rank wrote its own part of every model and optimizer, about half of the bytes."""
    assert _manifest(ckpt)["shards"] == 2 and not (ckpt / "G.safetensors").exists()
    for name in ("G", "G_ema", "D"):
        parts = [load_file(str(ckpt / f"{name}-0000{r}-of-00002.safetensors")) for r in (0, 1)]
        sizes = [sum(v.numel() for v in part.values()) for part in parts]
        assert not parts[0].keys() & parts[1].keys() and min(sizes) > 0.3 * sum(sizes), (name, sizes)
    for name in ("opt_G", "opt_D"):
        assert all((ckpt / f"{name}-0000{r}-of-00002.pt").is_file() for r in (0, 1))


def _manifest(ckpt: Path) -> dict:
    return json.loads((ckpt / "manifest.json").read_text())


def _assert_close(a: dict, b: dict, what: str) -> None:
    for model in a:
        for key, value in a[model].items():
            tol = TOL_UV if key.endswith(("._u", "._v")) else TOL
            torch.testing.assert_close(b[model][key], value, rtol=tol, atol=tol,
                                       msg=lambda m: f"{what}: {model}.{key}: {m}")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """1 process, 8 steps: the reference (checkpoints at 2, 4, 6, 8)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    return train(load_config(None, _overrides(out, **{"train.steps": 8}))).last_checkpoint.parent


def _at(straight_run: Path, step: int) -> dict:
    return _weights(straight_run / f"step-{step:08d}")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """2 processes (ddp), 4 steps."""
    out = tmp_path_factory.mktemp("ddp2") / "run"
    _launch(out)
    return out


def test_two_processes_train_like_one_and_record_it(two_process_run, straight_run):
    ckpt = two_process_run / "checkpoints" / "step-00000004"
    m = _manifest(ckpt)
    assert (m["world_size"], m["strategy"], m["cur_nimg"]) == (2, "ddp", 4 * 8 * 2)
    _assert_written_by_both_ranks(ckpt)
    _assert_close(_at(straight_run, 4), _weights(ckpt), "2 processes vs 1 at step 4")


def test_resume_two_processes_onto_one(two_process_run, straight_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_process_run, run)
    result = train(load_config(None, _overrides(run, **{"train.steps": 6})), resume="auto")
    assert result.step == 6 and _manifest(result.last_checkpoint)["world_size"] == 1
    _assert_close(_at(straight_run, 6), _weights(result.last_checkpoint), "2 -> 1 resume")


def test_resume_one_process_onto_two_with_zero2_and_back(straight_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight_run.parent, run)  # the 1-process run, resumed from step 4
    for step in (6, 8):
        shutil.rmtree(run / "checkpoints" / f"step-{step:08d}")
    (run / "checkpoints" / "latest").write_text("step-00000004\n")
    _launch(run, "--resume", "auto", **{"train.steps": 6, "train.strategy": "zero2"})
    final = run / "checkpoints" / "step-00000006"
    assert (_manifest(final)["world_size"], _manifest(final)["strategy"]) == (2, "zero2")
    _assert_written_by_both_ranks(final)
    _assert_close(_at(straight_run, 6), _weights(final), "1 (ddp) -> 2 (zero2) resume")
    # The ZeRO-2 ranks' parts, optimizer states included, carry on in 1 process.
    result = train(load_config(None, _overrides(run, **{"train.steps": 8})), resume="auto")
    assert result.step == 8
    _assert_close(_at(straight_run, 8), _weights(result.last_checkpoint), "2 (zero2) -> 1 resume")


def test_progan_two_processes_through_a_phase_change(tmp_path):
    out = tmp_path / "run"
    _launch(out, **{"model.arch": "progan", "model.resolution": 8, "model.start_resolution": 4,
                    "model.fmap_base": 32, "model.fmap_max": 16, "model.mbstd_group_size": 2,
                    "model.spectral_norm": "false", "model.attention": "[]", "loss.kind": "wasserstein",
                    "loss.penalty": "wgan-gp", "loss.penalty_weight": 10.0, "loss.drift_weight": 0.001,
                    "progressive.fade_kimg": 0.016, "progressive.stab_kimg": 0.016, "train.steps": 4,
                    "optim.d_steps": 1, "train.ckpt_every_kimg": 0.016})
    final = out / "checkpoints" / "step-00000004"
    assert _manifest(final)["phase"]["resolution"] == 8 and _manifest(final)["world_size"] == 2
    assert sorted(p.name for p in (out / "grids").glob("phase-*.png"))[:2] == [
        "phase-00-4px-stable.png", "phase-01-8px-fade.png"]
    for model in _weights(final).values():
        assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


@pytest.mark.parametrize("strategy,batch_norm,d_arch", [("ddp", False, "projected"), ("zero2", False, "projected"),
                                                        ("ddp", True, "projected"),
                                                        ("ddp", True, "native+projected")])
def test_projected_d_two_processes_train_like_one(strategy, batch_norm, d_arch, tmp_path):
    """The projected D (a frozen ImageNet network outside D's parameters) under both data-parallel
    kinds: 2 processes equal 1, and each rank's part of D holds only the trainable heads. With
    batch norms in the heads, their statistics are the global batch's (cross-replica) and the
    frozen network's stay ImageNet's. Beside BigGAN's own D (the ensemble) the same holds.

    With the non-saturating loss, not hinge: the projected D separates real from fake within one
    update, so some logits land near hinge's kink at +-1, where a rounding difference (batch 4
    vs 8 through the pretrained convolutions) switches a sample's gradient on or off. Measured:
    hinge 6.4e-4 on D's weights, non-saturating 2.2e-7 (the native D with hinge: 3e-7)."""
    projected = {"model.d_arch": d_arch, "model.projected_res": 64, "model.attention": "[]",
                 "train.steps": 2, "augment.kind": "diffaugment", "loss.kind": "nonsaturating",
                 "model.projected_batch_norm": str(batch_norm).lower()}
    one = train(load_config(None, _overrides(tmp_path / "one", **projected))).last_checkpoint
    _launch(tmp_path / "two", **projected, **{"train.strategy": strategy})
    two = tmp_path / "two" / "checkpoints" / "step-00000002"
    assert (_manifest(two)["world_size"], _manifest(two)["strategy"]) == (2, strategy)
    _assert_written_by_both_ranks(two)
    d_keys = [k for r in (0, 1) for k in load_file(str(two / f"D-0000{r}-of-00002.safetensors"))]
    trainable = ("heads.",) if d_arch == "projected" else ("members.0.", "members.1.heads.")
    assert d_keys and all(k.startswith(trainable) for k in d_keys)
    assert any(k.endswith("running_var") for k in d_keys) == batch_norm
    _assert_close(_weights(one), _weights(two), f"projected D, 2 processes ({strategy}) vs 1")


def _refused_tracker_rank(rank: int, world: int, out: str, store: str) -> None:
    """One rank of a 2-process run logging to an MLflow file store that MLflow 3 refuses (no
    MLFLOW_ALLOW_FILE_STORE): records what this rank's train() ended with."""
    os.environ["MLFLOW_TRACKING_URI"] = Path(store).as_uri()
    os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    try:
        train(load_config(None, tiny_overrides(out, **{"train.log_with": "[mlflow]"})))
        outcome = "trained"
    except Exception as e:
        outcome = f"{type(e).__name__}: {e}"
    Path(f"{out}.rank{rank}").write_text(outcome)


def test_a_tracker_that_cannot_start_stops_every_rank(tmp_path):
    """Only the main process starts the trackers; its failure must stop the other rank too, which
    would otherwise train on and wait for it at the first all-reduce (killed at the timeout)."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (the `trackers` extra)")
    out = tmp_path / "run"
    spawn(_refused_tracker_rank, (str(out), str(tmp_path / "mlruns")), world=2, timeout=150)
    main, other = (Path(f"{out}.rank{r}").read_text() for r in (0, 1))
    assert main.startswith("ConfigError: train.log_with: a tracker could not start "
                           "(MlflowException: "), main
    assert other == ("ConfigError: train.log_with: a tracker could not start on the main "
                     "process (its message there says why)"), other
    assert not (out / "checkpoints" / "step-00000002").exists()  # nobody trained a step
