"""huggingface pytorch-pretrained-BigGAN import (`bigan.imports.hf_biggan`): a model built by the
package itself (from a BigGANConfig, random weights and random per-psi batch-norm statistics,
saved as it publishes them) gives the same images after import, in PyTorch and after ONNX export
with the psi input (tests/test_hf_biggan_serving.py, which serves that export), at several psi and
with mixed psi in one batch (max abs error <= 1e-4, fp32); and each kind of mismatched file is
refused naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bigan.config import BIGGAN_G_WIDTHS
from bigan.imports import hf_biggan
from bigan.imports.common import ImportFileError

pytestmark = pytest.mark.unit
biggan_pkg = pytest.importorskip("pytorch_pretrained_biggan")

Z_DIM, CLASSES = 16, 5
PSIS = (0.37, 0.61, 0.83, 1.0)  # between grid points of the 51-set table, and its end


def make_hf_model(out: Path, resolution: int = 128, ch: int = 4, seed: int = 0,
                  num_classes: int = CLASSES):
    """The package's BigGAN at `resolution` (TF-Hub's layout) with width `ch`, random weights and
    statistics, saved to `out` as pytorch_model.bin + config.json; returns it in eval mode."""
    w = BIGGAN_G_WIDTHS[resolution]
    layers = [x for i in range(len(w) - 1) for x in ((False, w[i], w[i]), (True, w[i], w[i + 1]))]
    cfg = biggan_pkg.BigGANConfig(output_dim=resolution, z_dim=Z_DIM, class_embed_dim=Z_DIM,
                                  channel_width=ch, num_classes=num_classes, layers=layers,
                                  attention_layer_position=len(layers) - 2, eps=1e-4, n_stats=51)
    torch.manual_seed(seed)
    model = biggan_pkg.BigGAN(cfg)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_means"):
                buf.normal_(0.0, 0.5)
            elif name.endswith("running_vars"):
                buf.uniform_(0.5, 2.0)
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.7)  # attention on (it starts at 0)
            elif name in ("generator.bn.weight", "generator.bn.bias"):
                p.normal_()  # the package leaves these uninitialised
        model.train()  # its spectral norm starts from random u, v: power-iterate them first
        for _ in range(5):
            model(torch.zeros(1, Z_DIM), torch.zeros(1, num_classes), 1.0)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / hf_biggan.WEIGHTS)
    (out / hf_biggan.CONFIG).write_text(cfg.to_json_string())
    return model


def reference(model, z: torch.Tensor, y: torch.Tensor, psi: float) -> torch.Tensor:
    """The package's images: one psi per call (its forward takes a Python float)."""
    with torch.no_grad():
        return model(z, F.one_hot(y, CLASSES).float(), psi)


def inputs(n: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, Z_DIM, generator=gen).clamp(-2, 2), torch.arange(n) % CLASSES


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    src = tmp_path_factory.mktemp("hf") / "biggan-deep-tiny"
    model = make_hf_model(src)
    step = hf_biggan.convert(src, src.parent / "imported").checkpoint
    return model, src, step


def test_imported_generator_draws_the_packages_images(hf):
    from bigan.generation import load_ema_generator

    model, _, step = hf
    G, names, _ = load_ema_generator(step.parent.parent)  # the run directory, as `bigan sample`
    assert names == [str(k) for k in range(CLASSES)] and G.psi_stats == 51
    z, y = inputs()
    for psi in PSIS:
        with torch.no_grad():
            got = G(z * psi, y, torch.full((4,), psi))
        torch.testing.assert_close(got, reference(model, z * psi, y, psi), rtol=0, atol=1e-4)
    mixed = torch.tensor([0.37, 1.0, 0.61, 0.83])  # one batch, each sample its own psi
    with torch.no_grad():
        got = G(z, y, mixed)
    for i, psi in enumerate(mixed.tolist()):
        torch.testing.assert_close(got[i:i + 1], reference(model, z[i:i + 1], y[i:i + 1], psi),
                                   rtol=0, atol=1e-4)


def test_metadata_of_files_without_psi_input_reads_as_false():
    from bigan.onnx_metadata import ModelMetadata

    meta = ModelMetadata(family="biggan-deep", class_names=["a"], num_classes=1, dim_z=4,
                         resolution=32, channels=3, training_step=0,
                         source_checkpoint_sha256="0" * 64)
    props = meta.to_props()
    assert props["psi_input"] == "false"
    del props["psi_input"]  # as every file exported before the field existed
    assert ModelMetadata.from_props(props).psi_input is False


# --- refusals ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(hf):
    _, src, _ = hf
    return torch.load(src / hf_biggan.WEIGHTS, weights_only=True), json.loads(
        (src / hf_biggan.CONFIG).read_text())


def _write(dir_: Path, state=None, config=None, raw: bytes | None = None) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        (dir_ / hf_biggan.WEIGHTS).write_bytes(raw)
    elif state is not None:
        torch.save(state, dir_ / hf_biggan.WEIGHTS)
    (dir_ / hf_biggan.CONFIG).write_text(config if isinstance(config, str) else json.dumps(config))
    return dir_


def _refused(src: Path, out: Path, match: str) -> None:
    with pytest.raises(ImportFileError, match=match):
        hf_biggan.convert(src, out)
    assert not out.exists()  # nothing written


def test_a_missing_key_is_named_with_its_shape(saved, tmp_path):
    state, config = saved
    state = {k: v for k, v in state.items() if k != "generator.layers.3.bn_2.scale.weight_orig"}
    _refused(_write(tmp_path / "src", state, config), tmp_path / "out",
             r"no key 'generator.layers.3.bn_2.scale.weight_orig' \(expected shape \[16, 32\]")


def test_a_wrong_shape_is_named_with_both_shapes(saved, tmp_path):
    state, config = saved
    _refused(_write(tmp_path / "src", state, {**config, "z_dim": 8}), tmp_path / "out",
             r"key 'embeddings.weight' has shape \[16, 5\], but config.json implies \[8, 5\]")


def test_an_unexpected_key_is_named(saved, tmp_path):
    state, config = saved
    _refused(_write(tmp_path / "src", {**state, "discriminator.w": torch.zeros(2, 3)}, config),
             tmp_path / "out", r"a key 'discriminator.w' \(shape \[2, 3\]\)")


def test_a_file_that_needs_code_is_refused_with_the_reason(saved, tmp_path):
    state, config = saved
    _refused(_write(tmp_path / "src", {**state, "act": torch.nn.ReLU()}, config),
             tmp_path / "out", r"needs pickled code to load \(.*ReLU.*\); bigan never runs code")


@pytest.mark.parametrize("raw, match", [
    (b"not a torch file", "is not a readable PyTorch file"),
    (None, "not a state dict")])
def test_files_that_are_not_state_dicts(saved, tmp_path, raw, match):
    _, config = saved
    src = tmp_path / "src"
    if raw is None:
        _write(src, [torch.zeros(2)], config)
    else:
        _write(src, config=config, raw=raw)
    _refused(src, tmp_path / "out", match)


@pytest.mark.parametrize("change, match", [
    ({"n_stats": None}, "has no 'n_stats'"),
    ({"output_dim": 32}, "output_dim=32 has no BigGAN-deep layout"),
    ({"output_dim": 64}, "output_dim=64 has no BigGAN-deep layout"),
    ({"layers": [[False, 16, 16]]}, "is not the BigGAN-deep layout at 128 px"),
    ({"attention_layer_position": 3}, "attention_layer_position=3 must be an even block index"),
    ({"n_stats": 1}, "model.psi_stats=1 is invalid")])
def test_config_mismatches_are_named(saved, tmp_path, change, match):
    state, config = saved
    config = {k: v for k, v in {**config, **change}.items() if v is not None}
    _refused(_write(tmp_path / "src", state, config), tmp_path / "out", match)


def test_bad_json_and_missing_files(saved, tmp_path):
    state, _ = saved
    _refused(_write(tmp_path / "src", state, "{not json"), tmp_path / "out", "is not valid JSON")
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        hf_biggan.convert(tmp_path / "nowhere", tmp_path / "out")


def test_an_existing_output_is_never_overwritten(hf, tmp_path):
    _, src, _ = hf
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)
    with pytest.raises(ImportFileError, match="already exists and is not empty"):
        hf_biggan.convert(src, out)
    assert [p.name for p in out.iterdir()] == ["keep"]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines()]


def test_a_1000_class_import_gets_the_imagenet_names_and_prints_its_summary(tmp_path, capsys):
    """TF-Hub's BigGAN-deep has ImageNet-1k's 1,000 classes: without --class-names they are
    named (not "0".."999"), so the server's and the page's class search work."""
    from bigan.cli import main
    from bigan.generation import load_ema_generator

    make_hf_model(tmp_path / "src", num_classes=1000)
    out = tmp_path / "run"
    assert main(["import", "hf-biggan", str(tmp_path / "src"), "--out", str(out)]) == 0
    names = load_ema_generator(out)[1]
    assert len(names) == 1000 and len(set(names)) == 1000
    assert (names[0], names[207], names[999]) == ("tench", "golden retriever", "toilet tissue")
    printed = _lines(capsys.readouterr().out)
    assert printed[0].startswith(f"imported hf-biggan {tmp_path / 'src' / hf_biggan.WEIGHTS} -> ")
    assert printed[1].startswith("model      biggan-deep 128px, ch 4, 1000 classes, dim_z 16, "
                                 "shared_dim 16, attention [64], ")
    assert printed[1].endswith(" parameters")
    assert printed[2] == ("classes    ImageNet-1k names (imagenet_classes.txt): tench, "
                          "goldfish, great white shark, ...")
    assert printed[3] == "z sampling tfhub-scaled"
    assert printed[4] == (f"next       bigan export {out} --out model.onnx && "
                          "bigan serve model.onnx")


def test_class_names_are_taken_and_counted_for_hf_biggan(hf, tmp_path, capsys):
    from bigan.cli import main
    from bigan.generation import load_ema_generator

    _, src, _ = hf
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nowl\nfox\nelk\n")
    assert main(["import", "hf-biggan", str(src), "--out", str(tmp_path / "run"),
                 "--class-names", str(names)]) == 0
    assert load_ema_generator(tmp_path / "run")[1] == ["cat", "dog", "owl", "fox", "elk"]
    assert f"classes    from {names}: cat, dog, owl, ..." in _lines(capsys.readouterr().out)
    names.write_text("cat\ndog\nowl\n")
    assert main(["import", "hf-biggan", str(src), "--out", str(tmp_path / "other"),
                 "--class-names", str(names)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("bigan import: error: --class-names: 3 class names given but the model has 5 "
                   "classes (one name per class, one per line)")
    assert not (tmp_path / "other").exists()
