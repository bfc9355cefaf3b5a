"""Class names of imports (bigan/imports/class_names.py): the ImageNet-1k names shipped in the
package (and in its wheel) for 1,000-class models, `--class-names FILE` for both formats, the
count refused in one line, and the summary `bigan import` prints (docs/import.md). The hf-biggan
side, which needs pytorch-pretrained-BigGAN to make its fixture, is in tests/test_hf_biggan.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bigan.cli import main
from bigan.generation import load_ema_generator
from bigan.imports.class_names import imagenet_class_names, read_class_names
from bigan.imports.common import ImportFileError, read_state_dict

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).parent / "data" / "biggan_pytorch_tiny"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def g_1000(tmp_path_factory) -> Path:
    """The BigGAN-PyTorch fixture with 1,000 classes: with a shared embedding, `shared.weight`
    [classes, shared_dim] is the only tensor whose shape depends on the number of classes."""
    state = read_state_dict(FIXTURE / "G_ema.pth")
    state["shared.weight"] = torch.randn(1000, state["shared.weight"].shape[1],
                                         generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("g1000") / "G_ema.pth"
    torch.save(state, path)
    return path


def test_the_shipped_names_are_imagenet_1k_in_index_order():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert all(name == name.strip() and name for name in names)
    assert (names[0], names[1], names[207], names[281], names[999]) == (
        "tench", "goldfish", "golden retriever", "tabby", "toilet tissue")


def test_a_1000_class_import_is_named_and_summarised(g_1000, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["import", "biggan-pytorch", str(g_1000), "--out", str(out), "--bn-eps",
                 "1e-3"]) == 0
    assert load_ema_generator(out)[1] == imagenet_class_names()
    printed = [line.strip() for line in capsys.readouterr().out.strip().splitlines()]
    step = out / "checkpoints" / "step-00000000"
    assert printed[0] == f"imported biggan-pytorch {g_1000} -> {step}"
    assert printed[1].startswith("model      biggan 32px, ch 4, 1000 classes, dim_z 20, ")
    assert printed[2] == ("classes    ImageNet-1k names (imagenet_classes.txt): tench, "
                          "goldfish, great white shark, ...")
    assert printed[3] == "z sampling resample"
    assert printed[4] == (f"next       bigan export {out} --out model.onnx && "
                          "bigan serve model.onnx")


def test_a_wrong_count_is_refused_in_one_line(g_1000, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nowl\n")
    assert main(["import", "biggan-pytorch", str(g_1000), "--out", str(tmp_path / "run"),
                 "--class-names", str(names)]) == 2
    assert capsys.readouterr().err == (
        "bigan import: error: --class-names: 3 class names given but the model has 1000 "
        "classes (one name per class, one per line)\n")
    assert not (tmp_path / "run").exists()


def test_a_file_overrides_the_default_and_a_small_model_keeps_ids(tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("\ufeffcat\n dog \nowl\nfox\nelk\n\n\n")  # a BOM, spaces, trailing blanks
    assert main(["import", "biggan-pytorch", str(FIXTURE), "--out", str(tmp_path / "a"),
                 "--bn-eps", "1e-3", "--class-names", str(names)]) == 0
    assert load_ema_generator(tmp_path / "a")[1] == ["cat", "dog", "owl", "fox", "elk"]
    assert main(["import", "biggan-pytorch", str(FIXTURE), "--out", str(tmp_path / "b"),
                 "--bn-eps", "1e-3"]) == 0
    assert load_ema_generator(tmp_path / "b")[1] == ["0", "1", "2", "3", "4"]
    printed = capsys.readouterr().out
    assert f"classes    from {names}: cat, dog, owl, ..." in printed
    assert "classes    ids (name them with --class-names FILE): 0, 1, 2, ..." in printed


@pytest.mark.parametrize("text, match", [
    ("cat\n\ndog\n", "line 2 is empty"),
    ("cat\ndog\ncat\n", "line 3 repeats 'cat' from line 1; class names must be unique"),
    (b"cat\n\xff\n", "is not UTF-8 text")])
def test_a_names_file_that_would_misname_classes_is_refused(tmp_path, text, match):
    path = tmp_path / "names.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ImportFileError, match=f"--class-names {path}.*{match}"):
        read_class_names(path)
    with pytest.raises(FileNotFoundError, match="--class-names '.*nowhere.txt' does not exist"):
        read_class_names(tmp_path / "nowhere.txt")


@pytest.mark.slow
def test_the_wheel_ships_the_names_and_their_licence(tmp_path):
    """An installed bigan, not just this checkout, has the names (pyproject's package data)."""
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    src.mkdir()
    for rel in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / rel, src / rel)
    for rel in ("bigan", "serving", "launch"):
        shutil.copytree(ROOT / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode and "No module named" in done.stderr:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("bigan-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = z.read("bigan/imports/imagenet_classes.txt").decode()
        assert "BSD 3-Clause" in z.read("bigan/imports/imagenet_classes.LICENSE").decode()
    assert shipped.splitlines() == imagenet_class_names()
