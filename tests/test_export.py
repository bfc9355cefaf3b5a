"""ONNX export: parity with PyTorch at two batch sizes, the sampling contract, spectral-norm folding
that leaves the original alone, the metadata contract, failing exports that leave no file, one
self-contained file, DCGAN and fp16 exports, and the `bigan export` command."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from bigan.onnx_metadata import VERSION, MetadataError, ModelMetadata
from tests.helpers import tiny_overrides

pytestmark = pytest.mark.unit

SHA = "ab" * 32


def _meta(**changes) -> ModelMetadata:
    fields = dict(family="biggan", class_names=["cat", "dog"], num_classes=2, dim_z=16,
                  resolution=32, channels=3, training_step=7, source_checkpoint_sha256=SHA)
    fields.update(changes)
    return ModelMetadata(**fields)


# --- the metadata contract (no torch) -------------------------------------------------------------

def test_metadata_round_trips_through_string_props():
    meta = _meta(recommended_truncation=None, precision="fp16")
    props = meta.to_props()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())
    assert props["format"] == "bigan-onnx" and props["class_names"] == '["cat", "dog"]'
    assert props["recommended_truncation"] == "null" and props["version"] == str(VERSION)
    # Keys written by others (torch puts pkg.torch.* entries in files) are ignored.
    assert ModelMetadata.from_props({**props, "pkg.torch.x": "1"}) == meta
    assert _meta().recommended_truncation is None and _meta().output == "uint8 NHWC"  # no psi


@pytest.mark.parametrize("key", ["dim_z", "class_names", "source_checkpoint_sha256", "version"])
def test_metadata_names_the_missing_key(key):
    props = _meta().to_props()
    del props[key]
    with pytest.raises(MetadataError, match=f"missing the key '{key}'"):
        ModelMetadata.from_props(props)


@pytest.mark.parametrize("key, raw, why", [
    ("family", "mlp", "must be one of"),
    ("num_classes", "3", "has 2 names but num_classes is 3"),
    ("dim_z", "0", "must be an int >= 1"),
    ("dim_z", "16.5", "must be an int >= 1"),
    ("version", str(VERSION + 1), "upgrade"),
    ("format", "other", "not a bigan export"),
    ("precision", "int8", "must be one of"),
    ("recommended_truncation", "-1", r"in \[0.01, 4.0\] \(the psi a request may ask for\) or null"),
    ("recommended_truncation", "0.001", r"in \[0.01, 4.0\]"),  # below what a request may ask
    ("recommended_truncation", "NaN", r"in \[0.01, 4.0\]"),
    ("source_checkpoint_sha256", "xyz", "64 lowercase hex"),
    ("class_names", "[cat", "not JSON"),
])
def test_metadata_rejects_bad_values_naming_the_key(key, raw, why):
    props = {**_meta().to_props(), key: raw}
    named = "class_names" if key == "num_classes" else key  # a count mismatch names the list
    with pytest.raises(MetadataError, match=f"'{named}'.*{why}"):
        ModelMetadata.from_props(props)


def test_metadata_and_command_modules_import_neither_torch_nor_onnx():
    code = ("import sys, bigan.onnx_metadata, bigan.export.commands; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'onnxscript') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- exporting tiny checkpoints -------------------------------------------------------------------

def _checkpoint(tmp_path_factory, **extra):
    from bigan.config import load_config
    from bigan.train.trainer import train

    run = tmp_path_factory.mktemp("export") / "run"
    return train(load_config(None, tiny_overrides(run, **{"train.steps": 1, **extra}))).last_checkpoint


@pytest.fixture(scope="module")
def biggan_ckpt(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return _checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def dcgan_ckpt(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return _checkpoint(tmp_path_factory, **{"model.arch": "dcgan"})


@pytest.fixture(scope="module")
def biggan_export(biggan_ckpt, tmp_path_factory):
    from bigan.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return export_onnx(biggan_ckpt, out, parity_batch=5)


def _session(path):
    from bigan.export.onnx import make_session

    return make_session(path)


def test_export_is_one_self_contained_file(biggan_export):
    import onnx

    path = biggan_export.path
    assert biggan_export.files == [path]
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no .data, no temp dir
    assert biggan_export.bytes == path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    assert {o.domain: o.version for o in model.opset_import}[""] == biggan_export.opset >= 18
    assert set(biggan_export.max_abs_error) == {1, 5}
    assert max(biggan_export.max_abs_error.values()) <= 1e-4
    assert max(biggan_export.max_uint8_diff.values()) <= 1


def test_onnxruntime_matches_pytorch_at_two_batch_sizes(biggan_ckpt, biggan_export):
    import torch

    from bigan.pictures import to_uint8
    from bigan.generation import load_ema_generator
    from bigan.export.onnx import ServingGenerator

    G, _, _ = load_ema_generator(biggan_ckpt)
    session = _session(biggan_export.path)
    z_in, y_in = session.get_inputs()
    assert (z_in.name, z_in.type, z_in.shape) == ("z", "tensor(float)", ["batch", G.dim_z])
    assert (y_in.name, y_in.type, y_in.shape) == ("y", "tensor(int64)", ["batch"])
    assert [(o.name, o.type) for o in session.get_outputs()] == [
        ("images", "tensor(uint8)"), ("images_float", "tensor(float)")]
    gen = torch.Generator().manual_seed(0)
    for n in (1, 5):
        z = torch.randn(n, G.dim_z, generator=gen)
        y = torch.randint(0, G.num_classes, (n,), generator=gen)
        with torch.no_grad():
            ref_images, ref_float = ServingGenerator(G)(z, y)
        images, images_float = session.run(None, {"z": z.numpy(), "y": y.numpy()})
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        torch.testing.assert_close(torch.from_numpy(images_float), ref_float, atol=1e-4, rtol=0)
        assert np.abs(images.astype(int) - ref_images.numpy().astype(int)).max() <= 1
        # The uint8 output is the float output quantised as bigan.pictures.to_uint8 does.
        assert np.abs(images.astype(int) - to_uint8(images_float).astype(int)).max() <= 1


def test_image_for_class_seed_psi_matches_generate(biggan_ckpt, biggan_export):
    from bigan import sampling
    from bigan.generation import generate, load_ema_generator

    G, _, _ = load_ema_generator(biggan_ckpt)
    classes, seeds, psi = [0, 3, 1], [7, 11, 7], 0.7
    z = sampling.latents(seeds, G.dim_z, psi)
    _, images_float = _session(biggan_export.path).run(
        None, {"z": z, "y": np.asarray(classes, dtype=np.int64)})
    np.testing.assert_allclose(images_float, generate(G, classes, seeds, psi), atol=1e-4, rtol=0)


def test_metadata_is_readable_by_onnxruntime(biggan_ckpt, biggan_export):
    props = _session(biggan_export.path).get_modelmeta().custom_metadata_map
    meta = ModelMetadata.from_props(props)
    assert meta == biggan_export.metadata
    manifest = (biggan_ckpt / "manifest.json").read_bytes()
    assert meta.source_checkpoint_sha256 == hashlib.sha256(manifest).hexdigest()
    assert meta.training_step == json.loads(manifest)["step"] == 1
    assert meta.class_names == json.loads(manifest)["class_names"]
    assert (meta.family, meta.num_classes, meta.dim_z, meta.resolution, meta.channels,
            meta.precision) == ("biggan", 4, 16, 32, 3, "fp32")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_folding_leaves_the_original_untouched(biggan_ckpt, mode):
    import torch
    from torch.nn.utils import parametrize

    from bigan.config import config_from_dict
    from bigan.generation import load_ema_generator
    from bigan.export.onnx import fold_spectral_norm

    G, _, path = load_ema_generator(biggan_ckpt)
    cfg = config_from_dict(json.loads((path / "manifest.json").read_text())["config"]).model
    G.train(mode == "train")
    z, y = torch.randn(3, G.dim_z), torch.tensor([0, 1, 3])

    def outputs(model):
        was = model.training
        with torch.no_grad():
            out = model.eval()(z, y)
        model.train(was)
        return out

    before_state = {k: v.clone() for k, v in G.state_dict().items()}  # includes u, v
    before_out = outputs(G)
    n_sn = sum(parametrize.is_parametrized(m) for m in G.modules())
    rng = torch.get_rng_state()

    folded = fold_spectral_norm(G, cfg)

    assert n_sn > 0 and sum(parametrize.is_parametrized(m) for m in G.modules()) == n_sn
    assert G.training == (mode == "train")
    after_state = G.state_dict()
    assert after_state.keys() == before_state.keys()
    for k, v in before_state.items():
        assert torch.equal(after_state[k], v), k
    assert torch.equal(outputs(G), before_out)
    assert torch.equal(torch.get_rng_state(), rng)  # the fresh model's init used a forked RNG
    # The copy: no parametrizations, no shared storage, the same eval-mode function.
    assert not any(parametrize.is_parametrized(m) for m in folded.modules())
    g_ptrs = {t.data_ptr() for t in G.state_dict().values()}
    assert not g_ptrs & {t.data_ptr() for t in folded.state_dict().values()}
    torch.testing.assert_close(outputs(folded), before_out, atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("arch, previous", [("biggan", None), ("dcgan", b"an earlier export")])
def test_failing_parity_check_aborts_and_leaves_no_file(arch, previous, biggan_ckpt, dcgan_ckpt,
                                                        tmp_path, monkeypatch):
    import torch

    from bigan.export import onnx as export

    real_fold = export.fold_spectral_norm

    def corrupted_fold(G, cfg):
        plain = real_fold(G, cfg)
        with torch.no_grad():
            next(p for p in plain.parameters() if p.ndim == 4).add_(0.05)
        return plain

    monkeypatch.setattr(export, "fold_spectral_norm", corrupted_fold)
    out = tmp_path / "model.onnx"
    if previous is not None:
        out.write_bytes(previous)
    ckpt = biggan_ckpt if arch == "biggan" else dcgan_ckpt
    with pytest.raises(export.ExportError, match="parity check failed at batch 1"):
        export.export_onnx(ckpt, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if previous is None else ["model.onnx"])
    if previous is not None:
        assert out.read_bytes() == previous


@pytest.mark.slow
def test_dcgan_exports_through_the_command(dcgan_ckpt, tmp_path, capsys):
    from bigan.export.commands import add_export_command

    parser = argparse.ArgumentParser(prog="bigan")
    add_export_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "dcgan.onnx"
    args = parser.parse_args(["export", str(dcgan_ckpt), "--out", str(out), "--parity-batch", "3",
                              "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == [str(out)] and report["metadata"]["family"] == "dcgan"
    assert report["precision"] == "fp32" and set(report["max_abs_error"]) == {"1", "3"}
    assert max(report["max_abs_error"].values()) <= 1e-4
    images, _ = _session(out).run(None, {"z": np.zeros((2, 16), np.float32),
                                         "y": np.array([0, 3], np.int64)})
    assert images.shape == (2, 32, 32, 3)


def test_command_help_and_bad_options(capsys):
    from bigan.config import ConfigError
    from bigan.export.commands import add_export_command

    parser = argparse.ArgumentParser(prog="bigan")
    add_export_command(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--fp16", "--opset", "--parity-batch", "--json"):
        assert option in text
    args = parser.parse_args(["export", "ckpt", "--parity-batch", "0"])
    with pytest.raises(ConfigError, match="--parity-batch=0"):
        args.func(args)


@pytest.mark.slow
def test_fp16_export_keeps_the_interface_within_1e_2(biggan_ckpt, biggan_export, tmp_path):
    import onnx

    from bigan.export.onnx import export_onnx

    half = export_onnx(biggan_ckpt, tmp_path / "half.onnx", fp16=True, parity_batch=5)
    assert half.precision == half.metadata.precision == "fp16" and half.tolerance == 1e-2
    assert max(half.max_abs_error.values()) <= 1e-2
    assert half.bytes < biggan_export.bytes
    model = onnx.load(str(half.path))
    counts = {}
    for t in model.graph.initializer:
        counts[t.data_type] = counts.get(t.data_type, 0) + int(np.prod(t.dims))
    assert counts[onnx.TensorProto.FLOAT16] > 100 * counts.get(onnx.TensorProto.FLOAT, 0)
    session = _session(half.path)
    assert [i.type for i in session.get_inputs()] == ["tensor(float)", "tensor(int64)"]
    assert [o.type for o in session.get_outputs()] == ["tensor(uint8)", "tensor(float)"]


@pytest.mark.slow
def test_weights_above_the_inline_limit_go_to_one_side_file(dcgan_ckpt, tmp_path, monkeypatch):
    from bigan.export import onnx as export

    out = tmp_path / "big.onnx"
    monkeypatch.setattr(export, "INLINE_LIMIT_BYTES", 0)
    big = export.export_onnx(dcgan_ckpt, out)  # the parity check loads it through the side file
    assert big.files == [out, tmp_path / "big.onnx.data"]
    assert big.bytes == out.stat().st_size + (tmp_path / "big.onnx.data").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    monkeypatch.setattr(export, "INLINE_LIMIT_BYTES", 1536 * 2**20)
    small = export.export_onnx(dcgan_ckpt, out)  # re-export inline: the stale side file goes
    assert small.files == [out] and sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"]


def test_mlp_generators_are_refused(tmp_path_factory, tmp_path):
    pytest.importorskip("onnxruntime")
    from bigan.export.onnx import ExportError, export_onnx

    ckpt = _checkpoint(tmp_path_factory, **{"model.arch": "mlp", "data.source": "gaussian-ring",
                                                  "model.num_classes": 8})
    with pytest.raises(ExportError, match="'mlp' generator"):
        export_onnx(ckpt, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# --- ProGAN: the final phase --------------------------------------------------------------------

PROGAN_TINY = {"model.arch": "progan", "model.resolution": 16, "model.start_resolution": 4,
               "model.fmap_base": 64, "model.fmap_max": 8, "model.spectral_norm": "false",
               "loss.kind": "wasserstein", "loss.penalty": "wgan-gp", "loss.drift_weight": 0.001,
               # no fade-ins, one image per phase: the one training step ends in the 16 px phase
               "progressive.fade_kimg": 0, "progressive.stab_kimg": 0.001}


@pytest.fixture(scope="module")
def progan_ckpt(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return _checkpoint(tmp_path_factory, **PROGAN_TINY)


def test_progan_exports_its_final_phase(progan_ckpt, tmp_path):
    import torch

    from bigan.generation import load_ema_generator
    from bigan.export.onnx import ServingGenerator, export_onnx

    report = export_onnx(progan_ckpt, tmp_path / "progan.onnx", parity_batch=3)
    assert (report.metadata.family, report.metadata.resolution) == ("progan", 16)
    assert max(report.max_abs_error.values()) <= 1e-4
    G, _, _ = load_ema_generator(progan_ckpt)
    assert (G.current_resolution, G.alpha) == (16, 1.0)  # the phase came from the checkpoint
    z = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    y = np.array([0, 3], np.int64)
    images, images_float = _session(report.path).run(None, {"z": z, "y": y})
    assert images.shape == (2, 16, 16, 3) and np.abs(images_float).max() <= 1.0
    with torch.no_grad():
        _, ref = ServingGenerator(G)(torch.from_numpy(z), torch.from_numpy(y))
    np.testing.assert_allclose(images_float, ref.numpy(), atol=1e-4, rtol=0)


def test_progan_with_block_class_conditioning_exports_with_parity(tmp_path_factory, tmp_path,
                                                                   monkeypatch):
    """model.class_cond=blocks: the per-block class gains and biases reach the graph and match
    PyTorch. One training step moves only the 4 px maps off their zero init, so every map is set
    to random values here (as a trained G has them) before the export."""
    pytest.importorskip("onnxruntime")
    import torch

    from bigan import generation as samples
    from bigan.export.onnx import ServingGenerator, export_onnx

    ckpt = _checkpoint(tmp_path_factory, **PROGAN_TINY, **{"model.class_cond": "blocks"})
    real_build, built = samples.ema_generator, []

    def trained_maps(weights):
        G, names = real_build(weights)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in G.named_parameters():
                if ".cond" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        built.append(G)
        return G, names

    monkeypatch.setattr(samples, "ema_generator", trained_maps)
    report = export_onnx(ckpt, tmp_path / "progan-blocks.onnx", parity_batch=3)
    assert max(report.max_abs_error.values()) <= 1e-4
    G = built[-1]
    assert G.class_cond == "blocks" and G.current_resolution == 16
    z = np.repeat(np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32), 2, axis=0)
    y = np.array([0, 3], np.int64)  # one z, two classes
    _, images_float = _session(report.path).run(None, {"z": z, "y": y})
    assert np.abs(images_float[0] - images_float[1]).max() > 1e-3
    with torch.no_grad():
        _, ref = ServingGenerator(G)(torch.from_numpy(z), torch.from_numpy(y))
    np.testing.assert_allclose(images_float, ref.numpy(), atol=1e-4, rtol=0)


def test_progan_export_refuses_an_earlier_phase(progan_ckpt, tmp_path, monkeypatch):
    from bigan import generation as samples
    from bigan.export.onnx import ExportError, export_onnx

    real_build = samples.ema_generator

    def mid_fade(weights):
        G, names = real_build(weights)
        G.set_phase(8, 0.5)
        return G, names

    monkeypatch.setattr(samples, "ema_generator", mid_fade)
    with pytest.raises(ExportError, match="at the 8px phase with alpha 0.500, not at the final 16px"):
        export_onnx(progan_ckpt, tmp_path / "p.onnx")
    assert not (tmp_path / "p.onnx").exists()
