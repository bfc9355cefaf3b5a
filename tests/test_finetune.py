"""Fine-tuning to a new class set (`bigan/train/finetune.py`): the BigGAN-PyTorch generator of
tests/data/biggan_pytorch_tiny (5 classes "0".."4", no D) imported, then fine-tuned to the
digits' 10 classes ("0".."9"): rows kept by name, new rows the mean (or the model's own), a fresh
D, frozen blocks that do not move, a run that checkpoints and resumes without its source."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bigan import models
from bigan.checkpoint.loading import load_checkpoint
from bigan.cli import main
from bigan.config import ConfigError, load_config
from bigan.imports import biggan_pytorch
from bigan.train import finetune
from bigan.train.trainer import train
from tests.helpers import ROOT, tiny_overrides

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).parent / "data" / "biggan_pytorch_tiny"


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("import") / "biggan"
    biggan_pytorch.convert(FIXTURE, out, bn_eps=1e-3)
    return out


def _source_G(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "step-00000000").models["G_ema"]


def _digits_cfg(out, source, **extra):
    cfg = load_config(None, tiny_overrides(out, **{"data.source": "digits", "model.num_classes": 10,
                                                   "train.grid_classes": 2, **extra}))
    return finetune.for_source(cfg, str(source))


def _loaded(cfg, names):
    torch.manual_seed(0)
    G, D = models.build(cfg.model)
    G_ema = models.build(cfg.model)[0]
    finetune.load_source(cfg, G, D, G_ema, names)
    return G, D, G_ema


def test_the_model_is_the_sources_with_the_configs_classes(imported, tmp_path):
    cfg = _digits_cfg(tmp_path / "run", imported)
    assert (cfg.model.ch, cfg.model.num_classes, cfg.model.bn_eps, cfg.model.out_bn_eps) == (4, 10, 1e-3, 1e-5)
    assert cfg.model.d_ch == 8  # the source has no D: D's width is the run's
    assert cfg.finetune.source == str(imported)


def test_classes_of_the_same_name_keep_their_rows_new_ones_start_from_the_mean(imported, tmp_path):
    cfg = _digits_cfg(tmp_path / "run", imported)
    source = _source_G(imported)["shared.weight"]
    assert source.shape == (5, 8)
    G, D, G_ema = _loaded(cfg, [str(i) for i in range(10)])
    for net in (G, G_ema):
        rows = net.state_dict()["shared.weight"]
        assert rows.shape == (10, 8)
        torch.testing.assert_close(rows[:5], source, rtol=0, atol=0)
        torch.testing.assert_close(rows[5:], source.mean(0).expand(5, 8), rtol=0, atol=0)
    # every other tensor of G is the source's, unchanged
    for key, value in _source_G(imported).items():
        if key != "shared.weight":
            torch.testing.assert_close(G.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_rows_follow_the_names_not_the_order_and_random_keeps_the_models_own(imported, tmp_path):
    cfg = _digits_cfg(tmp_path / "run", imported, **{"finetune.new_classes": "random"})
    source = _source_G(imported)["shared.weight"]
    torch.manual_seed(0)
    fresh = models.build(cfg.model)[0].state_dict()["shared.weight"]
    G, _, _ = _loaded(cfg, ["3", "zebra", "0"])  # a 3-class run: "3", a new class, "0"
    rows = G.state_dict()["shared.weight"]
    torch.testing.assert_close(rows[0], source[3], rtol=0, atol=0)
    torch.testing.assert_close(rows[2], source[0], rtol=0, atol=0)
    torch.testing.assert_close(rows[1], fresh[1], rtol=0, atol=0)
    assert not torch.allclose(rows[1], source.mean(0))


def _params(net: torch.nn.Module, prefix: str) -> set[str]:
    return {n for n, _ in net.named_parameters() if n.startswith(prefix)}


def test_a_finetune_run_trains_freezes_checkpoints_and_resumes_without_its_source(imported, tmp_path):
    source_copy = tmp_path / "source"
    shutil.copytree(imported, source_copy)
    run = tmp_path / "run"
    cfg = _digits_cfg(run, source_copy, **{"finetune.freeze_g_blocks": 1,
                                           "finetune.freeze_d_blocks": 2})
    first = train(cfg)
    G, D = models.build(cfg.model)
    frozen_G, frozen_D = _params(G, "blocks.0."), _params(D, "blocks.0.") | _params(D, "blocks.1.")
    moving_G, moving_D = _params(G, "blocks.1."), _params(D, "blocks.2.")
    assert frozen_G and frozen_D and moving_G and moving_D
    ckpts = run / "checkpoints"
    at2, at4 = (load_checkpoint(ckpts / f"step-0000000{s}").models for s in (2, 4))
    source = _source_G(source_copy)
    for key in frozen_G:  # G's frozen block is still the source's, bit for bit
        torch.testing.assert_close(at4["G"][key], source[key], rtol=0, atol=0, msg=key)
    for key in frozen_D:  # D's frozen blocks have not moved since the first checkpoint
        torch.testing.assert_close(at4["D"][key], at2["D"][key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(at4["G"][k], source[k]) for k in moving_G)
    assert any(not torch.equal(at4["D"][k], at2["D"][k]) for k in moving_D)
    assert load_checkpoint(first.last_checkpoint).manifest["class_names"] == [str(i) for i in range(10)]

    shutil.rmtree(source_copy)  # a resume needs only the run's own checkpoint
    resumed = train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=6)),
                    resume="auto")
    assert resumed.step == 6
    at6 = load_checkpoint(resumed.last_checkpoint).models
    for key in frozen_G:
        torch.testing.assert_close(at6["G"][key], source[key], rtol=0, atol=0, msg=key)
    for key in frozen_D:
        torch.testing.assert_close(at6["D"][key], at2["D"][key], rtol=0, atol=0, msg=key)


def test_a_model_that_differs_from_the_source_is_refused_naming_the_field(imported, tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path / "run", **{
        "data.source": "digits", "model.num_classes": 10, "finetune.source": str(imported)}))
    G, D = models.build(cfg.model)
    with pytest.raises(ConfigError, match=r"^finetune.source: the model differs .*model.ch=8 \(the source: 4\)"):
        finetune.load_source(cfg, G, D, G, [str(i) for i in range(10)])


def test_freezing_more_blocks_than_the_model_has_fails_naming_the_field(imported, tmp_path):
    cfg = _digits_cfg(tmp_path / "run", imported, **{"finetune.freeze_d_blocks": 9})
    G, D = models.build(cfg.model)
    with pytest.raises(ConfigError, match=r"^finetune.freeze_d_blocks=9 is invalid: .*D has \d blocks"):
        finetune.freeze(cfg, G, D)


def test_bad_finetune_settings_fail_at_load_naming_the_field():
    with pytest.raises(ConfigError, match=r"^finetune.new_classes="):
        load_config(None, ["finetune.new_classes=zero"])
    with pytest.raises(ConfigError, match=r"^finetune.freeze_g_blocks="):
        load_config(None, ["finetune.freeze_g_blocks=-1"])


def test_cli_finetune_from_resolves_the_sources_model(imported, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data: {source: digits}\nmodel: {num_classes: 10}\n")
    assert main(["train", str(config), "--finetune-from", str(imported), "--dry-run"]) == 0
    printed = load_config_text(capsys.readouterr().out)
    assert printed.model.ch == 4 and printed.model.num_classes == 10
    assert printed.finetune.source == str(imported)
    assert main(["train", str(config), "--finetune-from", str(tmp_path / "nowhere"), "--dry-run"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("source, says", [("missing", "does not exist"),
                                           ("notes.txt", "is not a readable safetensors file")])
def test_a_bad_finetune_source_is_one_line_naming_the_flag(tmp_path, source, says):
    """`bigan train` as a real process: exit 2 and one stderr line that names the flag and the path."""
    config = tmp_path / "c.yaml"
    config.write_text("data: {source: digits}\nmodel: {num_classes: 10}\n")
    (tmp_path / "notes.txt").write_text("not weights\n")
    path = tmp_path / source
    out = subprocess.run([sys.executable, "-m", "bigan.cli", "train", str(config),
                          "--finetune-from", str(path), f"train.out_dir={tmp_path / 'run'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"bigan train: error: --finetune-from {path}: ") and says in line, line
    assert not (tmp_path / "run").exists()


def load_config_text(text: str):
    import yaml

    from bigan.config import config_from_dict

    return config_from_dict(yaml.safe_load(text))
