"""The training loop end to end on tiny models: outputs, bit-identical resume, stops, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bigan.config import ConfigError, load_config
from bigan.checkpoint import store as ckpt
from bigan.train.hooks import TrainHooks
from bigan.train.trainer import TrainingDiverged, train
from tests.helpers import CONFIGS, png_bytes, steps_kimg, tiny_overrides, write_pack

pytestmark = pytest.mark.unit


def _cfg(out, **extra):
    return load_config(None, tiny_overrides(out, **extra))


def test_run_writes_checkpoints_grids_tensorboard_and_metrics(tmp_path):
    result = train(_cfg(tmp_path / "run"))
    run = tmp_path / "run"
    assert result.step == 4 and result.cur_nimg == 4 * 8 * 2
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step-00000002", "step-00000004"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    assert (run / "grids" / "step-00000004.png").stat().st_size > 0
    assert (run / "grids" / "latest.png").exists() and (run / "config.yaml").exists()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4]
    assert {"loss/D", "loss/G", "D/real", "D/fake", "speed/img_per_sec"} <= set(lines[-1])
    manifest = json.loads((result.last_checkpoint / "manifest.json").read_text())
    assert manifest["data_position"] == {"kind": "memory", "position": 4 * 2 * 8}
    assert manifest["world_size"] == 1
    assert manifest["class_names"][0].startswith("disc")


def _weights(path):
    return {name: load_file(str(path / f"{name}.safetensors")) for name in ("G", "G_ema", "D")}


@pytest.mark.slow
def test_resume_from_step_3_is_bit_identical_to_a_straight_run(tmp_path):
    extra = {"train.steps": 6, "train.ckpt_every_kimg": steps_kimg(3), "train.deterministic": "true",
             "loss.penalty": "r1", "loss.penalty_weight": 1.0, "loss.penalty_interval": 2,
             "optim.lr_decay": "linear", "optim.lr_decay_start_kimg": steps_kimg(2)}
    straight = train(_cfg(tmp_path / "a", **extra))
    class StopAt3(TrainHooks):  # interrupted, not shortened: the lr curve spans train.steps
        def should_stop(self, step):
            return step == 3

    assert train(_cfg(tmp_path / "b", **extra), StopAt3()).step == 3
    resumed = train(_cfg(tmp_path / "b", **extra), resume="auto")
    assert resumed.step == 6 and resumed.cur_nimg == straight.cur_nimg
    a, b = _weights(straight.last_checkpoint), _weights(resumed.last_checkpoint)
    for model in a:
        assert a[model].keys() == b[model].keys()
        for key in a[model]:
            assert torch.equal(a[model][key], b[model][key]), f"{model}.{key} differs after resume"
    opt_a = torch.load(straight.last_checkpoint / "opt_D.pt", weights_only=True)
    opt_b = torch.load(resumed.last_checkpoint / "opt_D.pt", weights_only=True)
    torch.testing.assert_close(opt_a["state"], opt_b["state"], rtol=0, atol=0)
    # the last step (5 done, 6 total) ran at (6 - 5) / (6 - 2) of the configured lr
    d_lr = _cfg(tmp_path / "a").optim.d_lr
    assert opt_a["param_groups"][0]["lr"] == pytest.approx(d_lr / 4)
    assert opt_b["param_groups"][0]["lr"] == opt_a["param_groups"][0]["lr"]


def test_resume_auto_skips_a_corrupt_newest_checkpoint(tmp_path, caplog):
    run = tmp_path / "run"
    train(_cfg(run))
    newest = run / "checkpoints" / "step-00000004" / "G.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="step-00000004"):
        result = train(_cfg(run, **{"train.steps": 5}), resume="auto")
    assert result.step == 5  # continued from step 2, not from the corrupt step 4


def test_should_stop_hook_stops_and_checkpoints(tmp_path):
    seen = []

    class StopAt3(TrainHooks):
        def on_checkpoint(self, path, step):
            seen.append(step)

        def should_stop(self, step):
            return step == 3

    result = train(_cfg(tmp_path / "run", **{"train.steps": 10}), hooks=StopAt3())
    assert result.step == 3 and seen == [2, 3]
    assert result.last_checkpoint.name == "step-00000003"


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    from bigan import losses

    real_g_loss = losses.g_loss
    monkeypatch.setattr(losses, "g_loss",
                        lambda *args, **kwargs: real_g_loss(*args, **kwargs) * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss/G became non-finite by step .*Lower"):
        train(_cfg(tmp_path / "run"))


def test_resume_with_a_different_model_is_refused_naming_the_field(tmp_path):
    train(_cfg(tmp_path / "run", **{"train.steps": 2}))
    with pytest.raises(ConfigError, match="model.ch"):
        train(_cfg(tmp_path / "run", **{"model.ch": 16}), resume="auto")


@pytest.mark.parametrize("extra", [
    pytest.param({"train.precision": "bf16"}, marks=pytest.mark.slow),  # bf16 is emulated on most CPUs
    {"loss.kind": "nonsaturating", "loss.penalty": "wgan-gp", "optim.grad_clip": 1.0},
    {"loss.kind": "wasserstein", "loss.penalty": "dragan", "ema.standing_stats_batches": 2},
    {"model.arch": "dcgan", "model.attention": "[]", "loss.kind": "lsgan", "loss.ortho_weight": 1e-4},
], ids=["bf16", "ns-wgangp-clip", "wgan-dragan-standing", "dcgan-lsgan-ortho"])
def test_variants_train_with_finite_losses(tmp_path, extra):
    result = train(_cfg(tmp_path / "run", **{"train.steps": 2, **extra}))
    assert result.step == 2 and all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())


def test_toy_2d_config_trains_and_plots(tmp_path):
    cfg = load_config(CONFIGS / "toy_2d.yaml", ["train.steps=20", "train.sample_every_kimg=5.12",
                                                 f"train.out_dir={tmp_path}/toy", "data.num_samples=1000"])
    result = train(cfg)
    assert result.step == 20 and (tmp_path / "toy" / "grids" / "step-00000020.png").exists()


def _shard_cfg(out, path, **extra):
    return _cfg(out, **{"data.source": "shards", "data.path": str(path), "data.num_workers": 0,
                        "data.shuffle_buffer": 0, **extra})


def test_training_reads_shards_skips_bad_samples_and_resumes_the_position(tmp_path):
    good = [(f"g{i:03d}", {"cls": str(i % 3).encode(), "png": png_bytes(10 * i)}) for i in range(8)]
    bad = tmp_path / "bad"
    write_pack(bad, [good[:3] + [("corrupt", {"cls": b"1", "png": b"\x89PNG broken"}),
                                  ("badlabel", {"cls": b"one", "png": png_bytes(2)})] + good[3:4],
                      good[4:]])
    run = tmp_path / "run"
    extra = {"model.num_classes": 3, "train.batch_size": 2, "train.steps": 3,
             "train.ckpt_every_kimg": steps_kimg(3, batch=2), "train.log_every_kimg": steps_kimg(3, batch=2)}
    result = train(_shard_cfg(run, bad, **extra))
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    # 3 G steps x 2 D steps x 2 images = 12 good samples: more than the 8 good ones of an epoch.
    assert lines[-1]["data/skipped_not_image"] >= 1 and lines[-1]["data/skipped_bad_label"] >= 1
    manifest = json.loads((result.last_checkpoint / "manifest.json").read_text())
    pos = manifest["data_position"]
    assert pos["kind"] == "shards" and pos["position"]["complete_epochs"] >= 1
    resumed = train(_shard_cfg(run, bad, **{**extra, "train.steps": 5}), resume="auto")
    assert resumed.step == 5
    later = json.loads((resumed.last_checkpoint / "manifest.json").read_text())["data_position"]
    assert later["skipped"]["not_image"] >= pos["skipped"]["not_image"]


def test_shard_class_count_mismatch_is_a_clear_error(tmp_path):
    from bigan.data.shards import make_synthetic
    from bigan.data.sources import DataError

    make_synthetic(tmp_path / "shards", classes=3, resolution=16, n=24, min_shards=2)
    with pytest.raises(DataError, match="model.num_classes=4.*3 classes"):
        train(_shard_cfg(tmp_path / "run", tmp_path / "shards"))


def test_resume_applies_the_configs_new_optimizer_settings(tmp_path, caplog):
    # The divergence message says "lower optim.d_lr/g_lr ... then resume": the new values must
    # reach the restored optimizers (moments kept), and config.yaml and the manifest agree.
    run = tmp_path / "run"
    first = train(_cfg(run, **{"train.steps": 2}))
    before = torch.load(first.last_checkpoint / "opt_G.pt", weights_only=True)
    assert before["param_groups"][0]["lr"] == 1e-4
    new = {"optim.g_lr": 2.5e-5, "optim.d_lr": 5e-5, "optim.betas": "[0.5,0.9]", "optim.eps": 1e-8}
    with caplog.at_level("INFO", logger="bigan.train.train_state"):
        resumed = train(_cfg(run, **{"train.steps": 3, "train.ckpt_every_kimg": steps_kimg(3), **new}),
                        resume="auto")
    assert "optim.g_lr 0.0001 -> 2.5e-05" in caplog.text and "optim.betas" in caplog.text
    for name, lr in (("opt_G", 2.5e-5), ("opt_D", 5e-5)):
        saved = torch.load(resumed.last_checkpoint / f"{name}.pt", weights_only=True)
        group = saved["param_groups"][0]
        assert (group["lr"], tuple(group["betas"]), group["eps"]) == (lr, (0.5, 0.9), 1e-8)
        first_state = torch.load(first.last_checkpoint / f"{name}.pt", weights_only=True)
        # Adam continued its moments: step counts went on from the checkpoint's, not from 0.
        assert saved["state"][0]["step"] > first_state["state"][0]["step"]
    manifest = json.loads((resumed.last_checkpoint / "manifest.json").read_text())
    assert manifest["config"]["optim"]["g_lr"] == 2.5e-5
    assert load_config(run / "config.yaml", []).optim.d_lr == 5e-5


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # the grid
def test_weights_that_turn_non_finite_are_never_checkpointed(tmp_path, monkeypatch):
    # The update of step 4 (a checkpoint step) puts inf into G while the losses of that step,
    # computed before the update, are finite: the loss check cannot see it, the save must.
    from bigan.train import trainer

    real = trainer.gan_iteration
    calls = []

    def poisoned(G, *args, **kwargs):
        metrics = real(G, *args, **kwargs)
        calls.append(1)
        if len(calls) == 4:
            with torch.no_grad():
                next(G.parameters()).view(-1)[0] = float("inf")
        return metrics

    monkeypatch.setattr(trainer, "gan_iteration", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(_cfg(run))
    message = str(info.value)
    assert "non-finite by step 4 (G/" in message and "step-00000004 was not written" in message
    assert "last good checkpoint is" in message and message.count("step-00000002") == 1
    assert "new settings apply to the restored optimizers" in message
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step-00000002"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert not list((run / "checkpoints").glob("step-00000004*"))


def test_metrics_jsonl_holds_one_line_per_step_after_resumes(tmp_path):
    run = tmp_path / "run"
    extra = {"train.log_every_kimg": steps_kimg(1)}
    train(_cfg(run, **extra))  # steps 1-4 logged; checkpoints at 2 and 4
    # Interrupted after step 4's metrics but before its checkpoint was usable: resume from 2.
    newest = run / "checkpoints" / "step-00000004"
    (newest / "manifest.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss/D": 1.')  # a line torn by the kill
    with pytest.warns(UserWarning, match="step-00000004 has no manifest.json"):
        train(_cfg(run, **{**extra, "train.steps": 6}), resume="auto")
    steps = [json.loads(s)["step"] for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert not (run / "metrics.jsonl.tmp").exists()
