"""`schedules:` (config.ScheduleConfig, config.with_scheduled) and how the curriculum applies them."""

from __future__ import annotations

import math

import pytest
import torch

from bigan.config import ConfigError, ScheduleConfig, config_from_dict, with_scheduled
from bigan.train.curriculum import curriculum

pytestmark = pytest.mark.unit


def test_value_follows_the_linear_and_cosine_formulas():
    lin = ScheduleConfig(start=1.0, end=3.0, kind="linear", start_kimg=2.0, end_kimg=6.0)
    cos = ScheduleConfig(start=1.0, end=3.0, kind="cosine", start_kimg=2.0, end_kimg=6.0)
    assert [lin.value(k) for k in (0, 2, 3, 6, 9)] == [1.0, 1.0, 1.5, 3.0, 3.0]
    for k in (2.0, 3.0, 4.0, 5.5):
        t = (k - 2) / 4
        assert cos.value(k) == pytest.approx(1 + 2 * (1 - math.cos(math.pi * t)) / 2)


def test_with_scheduled_substitutes_values_and_leaves_the_config_alone():
    cfg = config_from_dict({"schedules": {
        "optim.betas.1": {"start": 0.9, "end": 0.99, "kind": "linear", "end_kimg": 10},
        "loss.penalty_weight": {"start": 1.0, "end": 0.1, "kind": "linear", "end_kimg": 10},
        "ema.decay": {"start": 0.9, "end": 0.999, "kind": "linear", "end_kimg": 10}}})
    now = with_scheduled(cfg, 5.0)
    assert now.optim.betas == pytest.approx([0.0, 0.945])
    assert now.loss.penalty_weight == pytest.approx(0.55) and now.ema.decay == pytest.approx(0.9495)
    assert cfg.optim.betas == [0.0, 0.999] and cfg.loss.penalty_weight == 10.0  # untouched
    plain = config_from_dict({})
    assert with_scheduled(plain, 5.0) is plain


@pytest.mark.parametrize("schedules, match", [
    ({"model.ch": {"start": 1, "end": 2}}, "schedules key 'model.ch' is invalid"),
    ({"optim.g_rl": {"start": 1e-4, "end": 1e-5}}, "did you mean 'g_lr'"),
    ({"optim.betas.2": {"start": 0.1, "end": 0.2}}, "has no float entry 2"),
    ({"optim.d_steps": {"start": 1, "end": 2}}, "not a float field"),
    ({"optim.betas.1": {"start": 0.9, "end": 1.5}}, r"schedules.optim.betas.1.end: optim.betas"),
    ({"loss.penalty_weight": {"start": 1, "end": 0, "kind": "step"}}, "kind='step' is invalid"),
    ({"ema.decay": {"start": 0.9, "end": 0.99, "start_kimg": 5, "end_kimg": 5}}, "end_kimg=5.0"),
])
def test_bad_schedules_are_refused_at_load_time_naming_the_field(schedules, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"schedules": schedules})


def test_curriculum_sets_scheduled_lrs_and_betas_every_step():
    cfg = config_from_dict({"optim": {"g_lr": 1e-3, "d_lr": 2e-3}, "schedules": {
        "optim.d_lr": {"start": 2e-3, "end": 1e-3, "kind": "linear", "end_kimg": 1.0},
        "optim.betas.1": {"start": 0.9, "end": 0.99, "kind": "linear", "end_kimg": 1.0}}})
    p = torch.nn.Parameter(torch.zeros(1))
    opt_G, opt_D = torch.optim.Adam([p]), torch.optim.Adam([p])
    course = curriculum(cfg, [], opt_G, opt_D, 0)
    course.begin_step(0, 500)
    assert opt_D.param_groups[0]["lr"] == pytest.approx(1.5e-3)
    assert opt_G.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert opt_D.param_groups[0]["betas"] == pytest.approx((0.0, 0.945))
    assert course.now.optim.d_lr == pytest.approx(1.5e-3)
    course.begin_step(1, 2000)
    assert opt_D.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert opt_G.param_groups[0]["betas"] == pytest.approx((0.0, 0.99))
