"""bigan.train.lr_decay: the decay curves and their config."""

from __future__ import annotations

import pytest

from bigan.config import ConfigError, load_config
from bigan.train.lr_decay import lr_scale

pytestmark = pytest.mark.unit


def test_no_decay_keeps_the_lr():
    assert [lr_scale(s, 10, "none", 5) for s in (0, 5, 9, 10)] == [1.0] * 4


def test_linear_and_cosine_fall_from_the_start_step_to_zero():
    assert [lr_scale(s, 10, "linear", 5) for s in (0, 5, 6, 8, 10)] == pytest.approx(
        [1.0, 1.0, 0.8, 0.4, 0.0])
    assert [lr_scale(s, 10, "cosine", 5) for s in (5, 7.5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_scale(0, 10, "linear", 0) == 1.0 and lr_scale(1, 10, "linear", 0) == 0.9
    curve = [lr_scale(s, 100, "cosine", 20) for s in range(101)]
    assert all(a >= b for a, b in zip(curve, curve[1:]))  # never rises


@pytest.mark.parametrize("override, field", [("optim.lr_decay=step", "optim.lr_decay"),
                                             ("optim.lr_decay_start_kimg=128", "optim.lr_decay_start_kimg"),
                                             ("optim.lr_decay_start_kimg=-0.1", "optim.lr_decay_start_kimg"),
                                             ("optim.lr_decay_start_kimg=0.1", "optim.lr_decay_start_kimg")])
def test_bad_decay_settings_are_refused_naming_the_field(override, field):
    # the default run: 1000 steps of 64 x 2 images = 128 kimg; 0.1 kimg is not whole steps
    with pytest.raises(ConfigError, match=field):
        load_config(None, ["optim.lr_decay=linear", override])
