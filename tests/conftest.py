"""Shared fixtures: tiny configs that train in a second on CPU."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from bigan.config import Config, load_config


def tiny_overrides(out_dir, **extra) -> list[str]:
    """A BigGAN at 32 px with width 8 on 8 synthetic classes: ~0.1 s per step on one core."""
    base = {
        "model.arch": "biggan", "model.resolution": 32, "model.num_classes": 4, "model.ch": 8,
        "model.d_ch": 8, "model.dim_z": 16, "model.shared_dim": 8, "model.attention": "[16]",
        "data.source": "synthetic", "data.num_samples": 64, "train.batch_size": 8,
        "train.steps": 4, "train.log_every": 2, "train.sample_every": 4, "train.ckpt_every": 2,
        "train.grid_per_class": 2, "optim.d_steps": 2, "ema.start_step": 1,
        "ema.decay": 0.9, "train.out_dir": str(out_dir),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_cfg(tmp_path) -> Config:
    return load_config(None, tiny_overrides(tmp_path / "run"))
