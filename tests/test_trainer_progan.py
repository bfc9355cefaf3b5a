"""ProGAN through the training loop: phases follow cur_nimg, a grid per phase, the phase in the
manifest, and a resume in the middle of a fade-in equal to an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bigan.config import load_config
from bigan.train.trainer import train

pytestmark = pytest.mark.unit

# 4 px for 16 images (4 steps of 4), fade in 8 px over 8 images (steps 5-8 at the new batch 2),
# then 8 px stable: 10 steps cross both boundaries; step 6 is in the middle of the fade-in.
PROGAN = {
    "model.arch": "progan", "model.resolution": 8, "model.start_resolution": 4, "model.num_classes": 2,
    "model.dim_z": 8, "model.shared_dim": 4, "model.fmap_base": 32, "model.fmap_max": 16,
    "model.mbstd_group_size": 2, "model.spectral_norm": "false", "model.attention": "[]",
    "data.source": "synthetic", "data.num_samples": 32, "loss.kind": "wasserstein",
    "loss.penalty": "wgan-gp", "loss.penalty_weight": 10.0, "loss.drift_weight": 0.001,
    "optim.d_steps": 1, "progressive.fade_kimg": 0.008, "progressive.stab_kimg": 0.016,
    "progressive.batch_size": "{4: 4, 8: 2}", "train.batch_size": 4, "train.steps": 10,
    "train.log_every_kimg": 0.004, "train.sample_every_kimg": 0.4, "train.ckpt_every_kimg": 0.4,
    "train.grid_per_class": 2, "train.deterministic": "true", "ema.start_kimg": 0.004, "ema.decay": 0.9,
}


def _cfg(out, **extra):
    return load_config(None, [f"{k}={v}" for k, v in {**PROGAN, "train.out_dir": out, **extra}.items()])


def _weights(path):
    return {name: load_file(str(path / f"{name}.safetensors")) for name in ("G", "G_ema", "D")}


@pytest.mark.slow
@pytest.mark.parametrize("class_cond, mbstd_groups", [("latent", "batch"), ("blocks", "batch"),
                                                     ("latent", "class")])
def test_progan_grows_and_resumes_mid_fade_in_bit_identically(tmp_path, class_cond, mbstd_groups):
    model = {"model.class_cond": class_cond, "model.mbstd_groups": mbstd_groups}
    straight = train(_cfg(tmp_path / "a", **model))
    assert straight.step == 10 and straight.cur_nimg == 4 * 4 + 4 * 2 + 2 * 2
    grids = sorted(p.name for p in (tmp_path / "a" / "grids").glob("phase-*.png"))
    assert grids == ["phase-00-4px-stable.png", "phase-01-8px-fade.png", "phase-02-8px-stable.png"]
    manifest = json.loads((straight.last_checkpoint / "manifest.json").read_text())
    assert manifest["phase"] == {"index": 2, "resolution": 8, "alpha": 1.0}
    logged = [json.loads(s) for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    # logged every 4 images: each 4 px step (batch 4), every other 8 px step (batch 2)
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 6, 8, 10]
    assert [m["progress/resolution"] for m in logged] == [4, 4, 4, 8, 8, 8, 8]  # after each step
    assert 0 < logged[4]["progress/alpha"] < 1  # step 6: mid fade-in

    train(_cfg(tmp_path / "b", **{"train.steps": 6, **model}))
    mid = json.loads((tmp_path / "b" / "checkpoints" / "step-00000006" / "manifest.json").read_text())
    assert mid["phase"]["index"] == 1 and 0 < mid["phase"]["alpha"] < 1
    resumed = train(_cfg(tmp_path / "b", **model), resume="auto")
    assert resumed.step == 10 and resumed.cur_nimg == straight.cur_nimg
    a, b = _weights(straight.last_checkpoint), _weights(resumed.last_checkpoint)
    for model in a:
        for key in a[model]:
            assert torch.equal(a[model][key], b[model][key]), f"{model}.{key} differs after resume"


def test_lr_decay_scales_each_phases_rates(tmp_path):
    # ProGAN rates per resolution; the decay multiplies whichever phase is running
    extra = {"progressive.g_lr": "{4: 0.002, 8: 0.001}", "progressive.d_lr": "{4: 0.004, 8: 0.003}",
             "optim.lr_decay": "linear", "optim.lr_decay_start_kimg": 0}
    result = train(_cfg(tmp_path / "run", **extra))
    opt_G = torch.load(result.last_checkpoint / "opt_G.pt", weights_only=True)
    opt_D = torch.load(result.last_checkpoint / "opt_D.pt", weights_only=True)
    # the last of 10 steps (8 px) ran at 1/10 of the 8 px rates
    assert opt_G["param_groups"][0]["lr"] == pytest.approx(0.001 / 10)
    assert opt_D["param_groups"][0]["lr"] == pytest.approx(0.003 / 10)
