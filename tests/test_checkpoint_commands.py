"""`bigan checkpoint list|verify|consolidate` and the consolidated weights file (checkpoint/weights.py)."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bigan.cli import main
from bigan.checkpoint import store as ckpt
from bigan.checkpoint.loading import load_checkpoint
from bigan.checkpoint.weights import consolidate, read_weights

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def consolidated(tiny_checkpoint, tmp_path_factory):
    return consolidate(tiny_checkpoint, tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def test_consolidated_file_holds_the_checkpoint_weights_and_manifest(tiny_checkpoint, consolidated):
    c = load_checkpoint(tiny_checkpoint)
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


def _copy(tiny_checkpoint, tmp_path):
    copy = tmp_path / "checkpoints" / tiny_checkpoint.name
    shutil.copytree(tiny_checkpoint, copy)
    return copy


def _reseal(path, fname):
    import json

    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / fname).read_bytes()
    manifest["files"][fname] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_cli_verify_loads_what_it_verifies(tiny_checkpoint, tmp_path, capsys):
    copy = _copy(tiny_checkpoint, tmp_path)
    assert main(["checkpoint", "verify", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "loaded G, G_ema, D" in out and "all finite" in out
    # Checksums that match files torch.load(weights_only=True) refuses: verify must say so.
    torch.save({"state": collections.deque([1])}, copy / "opt_D.pt")
    _reseal(copy, "opt_D.pt")
    assert main(["checkpoint", "verify", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "opt_D.pt was refused by torch.load(weights_only=True)" in err
    assert "collections.deque" in err and "weights_only=False" not in err


def test_cli_verify_finds_non_finite_weights(tiny_checkpoint, tmp_path, capsys):
    from safetensors.torch import load_file

    copy = _copy(tiny_checkpoint, tmp_path)
    weights = load_file(str(copy / "G_ema.safetensors"))
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first].view(-1)[0] = float("nan")
    save_file(weights, str(copy / "G_ema.safetensors"))
    _reseal(copy, "G_ema.safetensors")
    assert main(["checkpoint", "verify", str(copy)]) == 2
    assert f"NaN or infinite values (G_ema/{first})" in capsys.readouterr().err


def test_cli_verify_and_list_on_a_step_without_manifest(tiny_checkpoint, tmp_path, capsys):
    copy = _copy(tiny_checkpoint, tmp_path)
    bare = copy.with_name("step-00000007")
    shutil.copytree(copy, bare)
    (bare / "manifest.json").unlink()
    assert main(["checkpoint", "verify", str(bare)]) == 2
    err = capsys.readouterr().err
    assert f"{bare} is not a complete checkpoint (no manifest.json)" in err
    assert "holds no checkpoint" not in err
    assert main(["checkpoint", "list", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "step-00000001" in captured.out and "step-00000007" not in captured.out
    assert "step-00000007 has no manifest.json" in captured.err
