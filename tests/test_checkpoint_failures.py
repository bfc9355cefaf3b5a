"""What an operator sees when a run's checkpoints or directories are damaged (issue 35, items
7-11): `bigan train --resume auto`, `bigan checkpoint list|verify` and `bigan sample` run through
the CLI's `main` on a real tiny run whose files are then cut, swapped or made read-only. Each
failure is one line naming the path (exit 2), never a traceback, and `--resume auto` never
silently starts over checkpoints it could not use."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bigan.checkpoint.resume import find_resume
from bigan.checkpoint.store import list_checkpoints
from bigan.cli import main
from tests.helpers import CONFIGS, tiny_overrides

pytestmark = pytest.mark.e2e

DEMO = str(CONFIGS / "demo.yaml")
STEP2, STEP4 = "step-00000002", "step-00000004"
as_root = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes, so chmod cannot "
                                                       "make a directory read-only for it")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run trained for 4 steps: checkpoints step-2 and step-4."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", DEMO, *tiny_overrides(run), "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of `trained` to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _train(run: Path, *args: str, steps: int = 6) -> int:
    return main(["train", DEMO, *tiny_overrides(run, **{"train.steps": steps}), "--out", str(run),
                 *args])


def _one_line(err: str) -> str:
    """The CLI's error line; fails on a traceback or on more than one line of error."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("bigan ")]
    assert len(lines) == 1, err
    return lines[0]


def _reseal(step: Path, fname: str) -> None:
    """Make the manifest agree with `fname` as it now is: damage that checksums cannot see."""
    manifest = json.loads((step / "manifest.json").read_text())
    data = (step / fname).read_bytes()
    manifest["files"][fname] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (step / "manifest.json").write_text(json.dumps(manifest))


def _swap_in_wrong_shape(step: Path, fname: str) -> str:
    """Replace the first weight matrix of `fname` with one a row larger, resealed; its key."""
    weights = load_file(str(step / fname))
    key = next(k for k, v in weights.items() if v.dim() >= 2)
    weights[key] = torch.zeros(weights[key].shape[0] + 1, *weights[key].shape[1:])
    save_file(weights, str(step / fname))
    _reseal(step, fname)
    return key


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- 7. weights of the wrong shape behind a consistent manifest -----------------------------------

def test_verify_refuses_weights_that_do_not_fit_the_config(run, capsys):
    key = _swap_in_wrong_shape(run / "checkpoints" / STEP4, "G_ema.safetensors")
    assert main(["checkpoint", "verify", str(run / "checkpoints" / STEP4)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"G_ema/{key} has shape" in line and "the model's is" in line and STEP4 in line


def test_resume_auto_skips_a_wrong_shape_checkpoint_to_the_previous_good_one(run, capsys, caplog):
    key = _swap_in_wrong_shape(run / "checkpoints" / STEP4, "G.safetensors")
    with caplog.at_level(logging.INFO):
        assert _train(run, "--resume", "auto") == 0
    assert f"skipping checkpoint {run / 'checkpoints' / STEP4}" in caplog.text
    assert f"G/{key} has shape" in caplog.text
    assert f"resumed from {run / 'checkpoints' / STEP2} at step 2" in caplog.text
    # the run went on from step 2 and rewrote step 4 whole
    assert main(["checkpoint", "verify", str(run / "checkpoints" / STEP4)]) == 0
    assert "trained 6 steps" in capsys.readouterr().out


def test_auto_after_a_resume_from_an_older_step_stays_on_its_line(run, capsys, caplog):
    # Resumed from step 2 past an intact step 4, the run saves step 3 and ends (or dies); a later
    # `--resume auto` must continue from step 3, not jump to step 4 of the line it left.
    root = run / "checkpoints"
    old_step4 = (root / STEP4 / "manifest.json").read_bytes()
    with caplog.at_level(logging.WARNING):
        assert _train(run, "--resume", str(root / STEP2), steps=3) == 0
    assert f"moved {STEP4} to {root / 'superseded'}" in caplog.text
    assert find_resume(root, "auto") == root / "step-00000003"
    assert [p.name for p in list_checkpoints(root)] == [STEP2, "step-00000003"]
    kept = root / "superseded" / STEP4  # moved whole, not deleted, still verifiable
    assert (kept / "manifest.json").read_bytes() == old_step4
    assert main(["checkpoint", "verify", str(kept)]) == 0
    # the same step abandoned a second time is kept beside the first
    assert _train(run, "--resume", "auto", steps=4) == 0
    assert _train(run, "--resume", str(root / STEP2), steps=3) == 0
    assert (root / "superseded" / f"{STEP4}-2" / "manifest.json").is_file()


# --- 8. every checkpoint damaged ------------------------------------------------------------------

def _damage_both(run: Path) -> None:
    """step-4 keeps usable weights but its G optimizer state is cut; step-2's EMA G altered."""
    opt = run / "checkpoints" / STEP4 / "opt_G.pt"
    opt.write_bytes(opt.read_bytes()[:-64])
    g = run / "checkpoints" / STEP2 / "G_ema.safetensors"
    data = bytearray(g.read_bytes())
    data[-8:] = bytes(8)
    g.write_bytes(bytes(data))


def test_resume_auto_refuses_when_no_checkpoint_is_usable(run, capsys):
    _damage_both(run)
    before = _tree(run / "checkpoints")
    assert _train(run, "--resume", "auto") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"--resume auto found 2 checkpoint(s) in {run / 'checkpoints'} and none" in err
    assert f"\n  {STEP4}: " in err and "opt_G.pt has" in err and "truncated" in err
    assert f"\n  {STEP2}: " in err and "G_ema.safetensors fails its sha256 check" in err
    assert "--resume auto-or-fresh" in err
    assert _tree(run / "checkpoints") == before  # nothing overwritten, nothing deleted


def test_resume_auto_or_fresh_starts_over_unusable_checkpoints(run, capsys, caplog):
    _damage_both(run)
    with caplog.at_level(logging.INFO):
        assert _train(run, "--resume", "auto-or-fresh", steps=4) == 0
    assert "none can be resumed from; starting from step 0 as asked" in caplog.text
    assert f"resumed from {run / 'checkpoints'}" not in caplog.text
    for step in (STEP2, STEP4):  # rewritten by the fresh run
        assert main(["checkpoint", "verify", str(run / "checkpoints" / step)]) == 0


# --- 9. read-only directories ---------------------------------------------------------------------

@as_root
def test_a_read_only_run_directory_is_one_line(run, capsys):
    # The job died after logging step 5, past checkpoint 4: the resume cuts metrics.jsonl back
    # through a new file and a rename, which a read-only directory forbids.
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5}) + "\n")
    run.chmod(0o555)
    try:
        assert _train(run, "--resume", "auto") == 2
    finally:
        run.chmod(0o755)
    line = _one_line(capsys.readouterr().err)
    assert str(run) in line and "Permission denied" in line


@as_root
def test_checkpoints_made_read_only_mid_run_is_one_line(run, capsys, monkeypatch):
    from bigan.train.train_state import TrainCheckpoints

    save = TrainCheckpoints.save
    root = run / "checkpoints"

    def save_then_lock(self, *args, **kwargs):  # the operator's chmod, right after a save
        path = save(self, *args, **kwargs)
        root.chmod(0o555)
        return path

    monkeypatch.setattr(TrainCheckpoints, "save", save_then_lock)
    try:
        assert _train(run, "--resume", "auto", steps=8) == 2
    finally:
        root.chmod(0o755)
    line = _one_line(capsys.readouterr().err)
    assert f"could not write checkpoint {root / 'step-00000008'}: cannot write {root}" in line
    assert "Permission denied" in line and "(step-00000006) and" in line and "intact" in line


# --- 10. list and sample on damaged files --------------------------------------------------------

def test_list_shows_a_checkpoint_with_a_cut_manifest_as_damaged(run, capsys):
    manifest = run / "checkpoints" / STEP2 / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:40])
    assert main(["checkpoint", "list", str(run)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert f"warning: {manifest} cannot be read" in captured.err
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:]}
    assert "damaged" in rows[STEP2] and rows[STEP4].split()[1] == "4"


def test_list_ignores_a_latest_that_is_not_utf8(run, capsys, caplog):
    (run / "checkpoints" / "latest").write_bytes(b"step-\xff\xfe\x00")
    assert main(["checkpoint", "list", str(run)]) == 0
    out = capsys.readouterr().out
    assert STEP2 in out and STEP4 in out and "latest" not in out.split("pointers", 1)[1]
    assert "latest is not UTF-8 text" in caplog.text


def test_sample_names_weights_the_manifest_config_does_not_fit(run, tmp_path, capsys):
    step = run / "checkpoints" / STEP4
    manifest = json.loads((step / "manifest.json").read_text())
    manifest["config"]["model"]["ch"] = 16  # the manifest is not sealed: verify still passes
    (step / "manifest.json").write_text(json.dumps(manifest))
    assert main(["sample", str(step), "--out", str(tmp_path / "s.png")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(step) in line and "has shape" in line and "do not fit" in line
    assert not (tmp_path / "s.png").exists()


# --- 11. messages that said the wrong thing -----------------------------------------------------

def test_a_truncated_optimizer_file_is_called_truncated(run, capsys):
    step = run / "checkpoints" / STEP4
    (step / "opt_G.pt").write_bytes((step / "opt_G.pt").read_bytes()[:-100])
    _reseal(step, "opt_G.pt")
    assert main(["checkpoint", "verify", str(step)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "opt_G.pt is not a readable torch file" in line and "truncated" in line
    assert "something other than tensors" not in line


def test_a_full_disk_at_the_first_save_claims_no_earlier_checkpoint(tmp_path, capsys):
    """`bigan train` into a 512 KiB tmpfs: the config, lock, log and grid fit, the first
    checkpoint (about 1.5 MB) does not. Needs permission to mount (root in a container)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        assert _train(disk / "run", steps=2) == 2
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    line = _one_line(capsys.readouterr().err)
    assert f"could not write checkpoint {disk / 'run' / 'checkpoints' / STEP2}: no space" in line
    assert "No earlier checkpoint exists" in line and "intact" not in line
