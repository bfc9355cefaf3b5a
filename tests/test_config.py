"""Config loading: YAML + dotted overrides, and errors that name the field."""

from __future__ import annotations

import pytest

from bigan.config import ConfigError, config_from_dict, dump_config, load_config, parse_overrides
from tests.helpers import CONFIGS

pytestmark = pytest.mark.unit

SHIPPED = sorted(CONFIGS.glob("*.yaml"))
DEMO = CONFIGS / "demo.yaml"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert config_from_dict(cfg.to_dict()) == cfg  # the dump round-trips


def test_overrides_change_fields_and_parse_types():
    cfg = load_config(DEMO, ["model.ch=48", "optim.betas=[0.5, 0.9]",
                             "train.precision=bf16", "optim.g_lr=1e-3"])
    assert cfg.model.ch == 48 and cfg.optim.betas == [0.5, 0.9]
    assert cfg.train.precision == "bf16" and cfg.optim.g_lr == pytest.approx(1e-3)
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


@pytest.mark.parametrize("override, field, words", [
    ("train.batch_size=0", "train.batch_size", "must be > 0"),
    ("model.resolution=48", "model.resolution", "32, 64, 128, 256, 512"),
    ("loss.kind=hinj", "loss.kind", "must be one of"),
    ("optim.betas=[0.5, 1.5]", "optim.betas", "[0, 1)"),
    ("ema.decay=1.0", "ema.decay", "[0, 1)"),
    ("model.attention=[12]", "model.attention", "power-of-two"),
    ("train.precision=fp16", "train.precision", "fp32, bf16"),
    ("model.ch=abc", "model.ch", "integer"),
    ("train.deterministic=3", "train.deterministic", "true or false"),
    ("loss.label_smoothing=0.1", "loss.kind", "probabilistic"),
    ("model.num_classes=7", "model.num_classes", "digits"),
    ("data.path=", "data.path", "needs the shard directory"),
])
def test_bad_values_name_the_field(override, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override] + (["data.source=digits"] if "num_classes" in override else []))
    assert field in str(err.value) and words in str(err.value)


def test_unknown_keys_are_errors_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'model.chh'.*did you mean 'ch'"):
        load_config(None, ["model.chh=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian:\n  steps: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'trian'.*'train'"):
        load_config(bad)


@pytest.mark.parametrize("override, field", [
    ("optim.g_lr=1e39", "optim.g_lr"),  # beyond float32: inf in every tensor it touches
    ("optim.d_lr=1.0e+39", "optim.d_lr"),
    ("optim.eps=1e-50", "optim.eps"),  # below float32: 0, a division by zero in Adam
    ("optim.g_lr=.nan", "optim.g_lr"),
    ("loss.penalty_weight=.inf", "loss.penalty_weight"),
    ("optim.betas=[0.0, 1e39]", "optim.betas[1]"),
    ("progressive.g_lr.8=1e39", "progressive.g_lr.8"),
    ("train.steps=99999999999999999999", "train.steps"),
])
def test_numbers_out_of_float32_or_int64_range_name_the_field(override, field, tmp_path):
    from bigan.cli import main

    with pytest.raises(ConfigError) as err:
        load_config("configs/demo.yaml", [override])
    message = str(err.value)
    assert message.startswith(f"{field}=") and "\n" not in message
    assert "float32" in message or "64-bit" in message
    edge = load_config("configs/demo.yaml", ["optim.g_lr=3.4e38", "optim.eps=1.2e-38",
                                              "loss.drift_weight=0"])
    assert (edge.optim.g_lr, edge.optim.eps, edge.loss.drift_weight) == (3.4e38, 1.2e-38, 0)
    # The CLI: one line naming the field, exit code 2, no traceback.
    assert main(["train", "configs/demo.yaml", "--dry-run", override]) == 2


def test_malformed_files_and_overrides():
    with pytest.raises(ConfigError, match="not found"):
        load_config(CONFIGS / "nope.yaml")
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["train.steps"])


def test_dump_is_yaml_that_loads_back(tmp_path):
    cfg = load_config(CONFIGS / "toy_2d.yaml", ["train.steps=7"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
