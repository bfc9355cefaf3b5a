"""What `bigan launch` (launch/ray_job.py) refuses before Ray starts: a global batch that does not
split over the workers would otherwise fail inside every worker after the cluster is up. `ray` is
made unimportable here, so a check that came after Ray's start would show as an ImportError."""

from __future__ import annotations

import re
import sys

import pytest

from bigan.config import ConfigError, load_config
from launch.ray_job import LaunchConfig, launch

pytestmark = pytest.mark.unit

PROGAN = ["model.arch=progan", "train.batch_size=12"]  # phases 4..32 px, minibatch std groups of 4


@pytest.mark.parametrize("overrides, refused", [
    (["train.batch_size=10"], "train.batch_size=10"),
    ([*PROGAN, "progressive.batch_size.8=8"], "progressive.batch_size.8=8"),
])
def test_a_batch_that_does_not_split_over_the_workers_is_refused_before_ray(
        overrides, refused, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    cfg = load_config(None, [f"train.out_dir={tmp_path}", *overrides])
    message = rf"^{re.escape(refused)} must be divisible by --workers=3$"
    with pytest.raises(ConfigError, match=message):
        launch(cfg, LaunchConfig(workers=3))


@pytest.mark.parametrize("overrides", [
    [*PROGAN, "progressive.batch_size.8=24"],
    # not progan: progressive.batch_size is never trained with
    ["train.batch_size=12", "progressive.batch_size.8=8"],
])
def test_batches_that_split_or_are_unused_go_on_to_ray(overrides, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    cfg = load_config(None, [f"train.out_dir={tmp_path}", *overrides])
    with pytest.raises(ImportError, match="ray"):
        launch(cfg, LaunchConfig(workers=3))
