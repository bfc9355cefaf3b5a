"""`bigan checkpoint list|verify|consolidate` and the consolidated weights file (checkpoint/weights.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bigan.cli import main
from bigan.checkpoint import store as ckpt
from bigan.checkpoint.weights import consolidate, read_weights

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def consolidated(tiny_checkpoint, tmp_path_factory):
    return consolidate(tiny_checkpoint, tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def test_consolidated_file_holds_the_checkpoint_weights_and_manifest(tiny_checkpoint, consolidated):
    c = ckpt.load_checkpoint(tiny_checkpoint)
    w = read_weights(consolidated)
    assert set(w.models) == {"G", "G_ema", "D"}
    for name, state in w.models.items():
        assert state.keys() == c.models[name].keys()
        for key, value in state.items():
            assert torch.equal(value, c.models[name][key]), f"{name}.{key}"
    assert w.manifest == c.manifest
    # the source is identified by the same hash from the directory and from the file
    assert w.source_sha256 == hashlib.sha256((tiny_checkpoint / "manifest.json").read_bytes()).hexdigest()
    assert read_weights(tiny_checkpoint).source_sha256 == w.source_sha256


def test_generator_from_the_file_draws_what_the_checkpoint_draws(tiny_checkpoint, consolidated):
    from bigan.generation import generate, load_ema_generator

    G_dir, names_dir, _ = load_ema_generator(tiny_checkpoint)
    G_file, names_file, path = load_ema_generator(consolidated)
    assert path == consolidated and names_file == names_dir
    a = generate(G_dir, [0, 1, 3], [5, 6, 7], psi=0.7)
    b = generate(G_file, [0, 1, 3], [5, 6, 7], psi=0.7)
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # an ONNX export, and the tiny_onnx one to compare with
def test_export_accepts_the_consolidated_file(tiny_checkpoint, consolidated, tiny_onnx, tmp_path):
    from bigan.onnx_metadata import ModelMetadata
    from bigan.export.onnx import export_onnx

    onnx = pytest.importorskip("onnx")
    report = export_onnx(consolidated, tmp_path / "from-file.onnx")
    from_dir = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props})
    # same step, classes and source checkpoint sha256; only the export time differs
    assert dataclasses.replace(report.metadata, exported_at=from_dir.exported_at) == from_dir


def test_cli_consolidate_list_and_verify(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    assert main(["checkpoint", "consolidate", str(tiny_checkpoint), str(out)]) == 0
    assert "step 1" in capsys.readouterr().out and out.is_file()
    assert main(["checkpoint", "list", str(tiny_checkpoint.parent.parent)]) == 0  # the run directory
    listing = capsys.readouterr().out
    assert "step-00000001" in listing and " 1 ddp" in listing
    assert main(["checkpoint", "verify", str(tiny_checkpoint)]) == 0
    assert ": ok (" in capsys.readouterr().out


def test_cli_verify_names_the_damaged_file(tiny_checkpoint, tmp_path, capsys):
    copy = tmp_path / tiny_checkpoint.name
    shutil.copytree(tiny_checkpoint, copy)
    with open(copy / "D.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    assert main(["checkpoint", "verify", str(copy)]) == 2
    assert "D.safetensors fails its sha256 check" in capsys.readouterr().err


def test_cli_consolidate_rejects_a_bad_output_name(tiny_checkpoint, tmp_path, capsys):
    assert main(["checkpoint", "consolidate", str(tiny_checkpoint), str(tmp_path / "w.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()


def test_read_weights_refuses_foreign_and_truncated_files(consolidated, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ckpt.CheckpointError, match="not bigan weights"):
        read_weights(foreign)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(consolidated.read_bytes()[:-100])
    with pytest.raises(ckpt.CheckpointError, match="not a readable safetensors file"):
        read_weights(truncated)
    with pytest.raises(FileNotFoundError):
        read_weights(tmp_path / "missing.safetensors")
