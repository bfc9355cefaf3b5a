"""The `bigan` command: dry run, readable errors, sampling grids reproducibly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bigan.cli import main
from tests.helpers import CONFIGS, tiny_overrides

pytestmark = pytest.mark.e2e

DEMO = str(CONFIGS / "demo.yaml")


def test_help_needs_no_torch():
    out = subprocess.run([sys.executable, "-m", "bigan.cli", "export", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--fp16" in out
    code = "import sys; from bigan.cli import build_parser; build_parser(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "bigan.cli", "sample", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--truncation" in out and "--classes" in out


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["train", DEMO, "model.ch=40", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ch: 40" in out and "source: shards" in out


def test_bad_override_is_one_line_naming_the_field(capsys):
    assert main(["train", DEMO, "train.batch_size=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.batch_size=-1" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", DEMO, *tiny_overrides(run, **{"train.steps": 2}), "--out", str(run)]) == 0
    return run


def test_train_then_sample_is_reproducible(trained_run, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    args = ["sample", str(trained_run), "--classes", "0,disc-0,1", "--n", "4", "--truncation", "0.5", "--seed", "7"]
    assert main([*args, "--out", str(a)]) == 0
    assert main([*args, "--out", str(b)]) == 0
    pa, pb = np.asarray(Image.open(a)), np.asarray(Image.open(b))
    np.testing.assert_array_equal(pa, pb)
    assert pa.shape == (3 * 34 + 2, 4 * 34 + 2, 3) or pa.shape == (312, 414, 3)  # 3x4 grid of 32 px, x3 to >= 256 px
    c = tmp_path / "c.png"
    assert main([*args[:-1], "8", "--out", str(c)]) == 0
    assert not np.array_equal(np.asarray(Image.open(c)), pa)  # another seed, other images


@pytest.mark.parametrize("extra, words", [
    (["--classes", "zebra"], "zebra"),
    (["--classes", "9"], "outside"),
    (["--truncation", "0"], "must be a truncation psi in [0.01, 4]"),
])
def test_sample_rejects_bad_arguments(trained_run, tmp_path, capsys, extra, words):
    assert main(["sample", str(trained_run), *extra, "--out", str(tmp_path / "x.png")]) == 2
    assert words in capsys.readouterr().err


def test_sample_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_overrides_may_follow_options(capsys):
    assert main(["train", DEMO, "--dry-run", "model.ch=24", "train.steps=5"]) == 0
    out = capsys.readouterr().out
    assert "ch: 24" in out and "steps: 5" in out
    with pytest.raises(SystemExit):
        main(["sample", "x", "model.ch=3"])


def test_an_error_during_a_progress_bar_starts_its_own_line(monkeypatch, capsys):
    """A command that fails while its tqdm bar is open (a full disk at a save) prints its error
    on a line of its own, not after the bar's last carriage-return redraw."""
    import tqdm

    from bigan import cli
    from bigan.config import ConfigError

    def failing(args):
        # disable=False: tqdm reads TQDM_DISABLE once, at import, so unsetting it here is too late
        bar = tqdm.tqdm(total=4, desc="train", file=sys.stderr, disable=False)
        bar.update(2)
        raise ConfigError("could not write checkpoint X: no space left on device")

    monkeypatch.setattr(cli, "_train", failing)
    assert main(["train", str(CONFIGS / "demo.yaml")]) == 2
    err = capsys.readouterr().err
    assert "\nbigan train: error: could not write checkpoint X" in err, repr(err)
