"""The training loop with augmentation, LeCam, RpGAN + R1/R2 and schedules: state in checkpoints,
bit-identical resume, logged p. Tiny models, a few steps (tests.helpers.tiny_overrides)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bigan.config import load_config
from bigan.train.hooks import TrainHooks
from bigan.train.trainer import train
from tests.helpers import tiny_overrides

pytestmark = pytest.mark.unit

# ADA moving fast enough to leave 0 in 6 steps, LeCam on from the start, RpGAN with R1 + R2 and a
# scheduled gamma and beta2: every piece of state a resume must restore.
EXTRA = {"train.steps": 4, "train.ckpt_every_kimg": 0.032, "train.deterministic": "true",
         "augment.kind": "ada", "augment.ada_kimg": 0.2, "augment.ada_interval": 2,
         "augment.lecam_weight": 0.3, "augment.lecam_start_kimg": 0.016, "augment.lecam_decay": 0.9,
         "loss.kind": "rpgan", "loss.penalty": "r1+r2", "loss.penalty_weight": 0.1}
SCHEDULES = {"loss.penalty_weight": {"start": 0.1, "end": 0.02, "kind": "cosine", "end_kimg": 0.1},
             "optim.betas.1": {"start": 0.9, "end": 0.99, "kind": "linear", "end_kimg": 0.1}}


def _cfg(out, **extra):
    from bigan.config import config_from_dict

    cfg = load_config(None, tiny_overrides(out, **{**EXTRA, **extra}))
    data = cfg.to_dict()
    data["schedules"] = SCHEDULES
    return config_from_dict(data)


def _files(ckpt) -> dict:
    return {name: load_file(str(ckpt / f"{name}.safetensors")) for name in ("G", "G_ema", "D")}


def test_resume_with_ada_lecam_rpgan_and_schedules_is_bit_identical(tmp_path):
    straight = train(_cfg(tmp_path / "a"))

    class StopAt2(TrainHooks):
        def should_stop(self, step):
            return step == 2

    assert train(_cfg(tmp_path / "b"), StopAt2()).step == 2
    resumed = train(_cfg(tmp_path / "b"), resume="auto")
    a, b = _files(straight.last_checkpoint), _files(resumed.last_checkpoint)
    for model in a:
        for key in a[model]:
            assert torch.equal(a[model][key], b[model][key]), f"{model}.{key} differs after resume"
    state_a = json.loads((straight.last_checkpoint / "manifest.json").read_text())["step_state"]
    state_b = json.loads((resumed.last_checkpoint / "manifest.json").read_text())["step_state"]
    assert state_a == state_b
    print(state_a)
    assert 0 < state_a["ada_p"] < 0.8 and state_a["lecam_real"] != 0.0
    opt_a = torch.load(straight.last_checkpoint / "opt_D.pt", weights_only=True)
    # the last step began at 48 images = 0.048 kimg: beta2 = 0.9 + 0.09 * 0.48 (linear schedule)
    assert opt_a["param_groups"][0]["betas"][1] == pytest.approx(0.9432)
    logged = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert any("augment/p" in row for row in logged) and any("lecam/ema_real" in row for row in logged)


def test_diffaugment_trains_under_progan(tmp_path):
    """ProGAN's D at each phase resolution sees augmented images; the run completes finite."""
    cfg = load_config(None, tiny_overrides(
        tmp_path / "p", **{"model.arch": "progan", "model.resolution": 8, "model.start_resolution": 4,
                           "model.fmap_base": 32, "model.fmap_max": 8, "model.attention": "[]",
                           "progressive.fade_kimg": 0.016, "progressive.stab_kimg": 0.016,
                           "augment.kind": "diffaugment", "augment.lecam_weight": 0.3}))
    result = train(cfg)
    assert result.step == 4 and all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())
