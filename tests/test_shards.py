"""Packing shards (bigan/data/shards.py, sources.py, commands.py): sources, round trips,
byte-identical re-packs, the index, checksums, inspect, the CLI glue, and real data."""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bigan.data import shards
from bigan.data.commands import add_data_commands, parse_size
from bigan.data.loader import ShardLoader
from bigan.data.shards import DataError, make_synthetic, pack, read_index, verify_shards
from bigan.data.sources import square_resize

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real image sets not present at {DATA}")


def shard_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} read back with plain tarfile, in shard order."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in read_index(out)["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def load_all(out: Path, resolution: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every sample once (one epoch, in key order) through the streaming loader: uint8 NHWC."""
    loader = ShardLoader(out, batch_per_worker=1, resolution=resolution, num_workers=0,
                         shuffle_buffer=0)
    n, got = loader.num_samples, {}
    for batch in loader:
        if int(batch["epoch"][0]) > 0:
            break
        pixels = ((batch["image"][0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        got[batch["key"][0]] = (pixels, int(batch["label"][0]))
    assert len(got) == n
    keys = sorted(got)
    return np.stack([got[k][0] for k in keys]), np.array([got[k][1] for k in keys]), keys


def smooth_images(n: int, res: int, seed: int = 0) -> np.ndarray:
    """Random smooth colour gradients (JPEG-friendly, unlike noise)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, res)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    a = rng.uniform(0, 1, (n, 3, 3))
    a = a[:, None, None]  # [n, 1, 1, channel, term]
    img = a[..., 0] + a[..., 1] * xx[..., None] + a[..., 2] * yy[..., None]
    return (np.clip(img / 3, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def npz_source(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    images = smooth_images(30, 16)
    labels = np.arange(30) % 3
    path = tmp_path / "set.npz"
    np.savez(path, images=images, labels=labels, class_names=np.array(["a", "b", "c"]))
    return path, images, labels


def test_png_round_trip_is_exact_and_index_counts_match(npz_source, tmp_path):
    path, images, labels = npz_source
    index = pack(path, tmp_path / "out", 16, fmt="png", min_shards=3, progress=False)
    assert index["num_samples"] == 30 and index["class_names"] == ["a", "b", "c"]
    assert index["class_counts"] == [10, 10, 10] and len(index["shards"]) == 3
    assert sum(s["num_samples"] for s in index["shards"]) == 30
    assert read_index(tmp_path / "out") == index
    pixels, got_labels, keys = load_all(tmp_path / "out", 16)
    order = np.random.default_rng(0).permutation(30)  # key i is input order[i] (seeded shuffle)
    assert keys == [f"{i:08d}" for i in range(30)]
    np.testing.assert_array_equal(pixels, images[order])
    np.testing.assert_array_equal(got_labels, labels[order])
    # Every shard mixes classes: the loader only shuffles within a shard.
    first = shard_samples(tmp_path / "out")
    assert len({v["cls"] for k, v in list(first.items())[:10]}) > 1


def test_jpg_round_trip_is_close(npz_source, tmp_path):
    path, images, labels = npz_source
    pack(path, tmp_path / "out", 16, fmt="jpg", quality=95, progress=False)
    pixels, got_labels, _ = load_all(tmp_path / "out", 16)
    order = np.random.default_rng(0).permutation(30)
    err = np.abs(pixels.astype(float) - images[order]).mean()
    assert 0 < err < 2.0
    np.testing.assert_array_equal(got_labels, labels[order])


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_repacking_is_byte_identical_for_any_worker_count(npz_source, tmp_path, fmt):
    path = npz_source[0]
    runs = [(1, "a"), (1, "b"), (2, "c")]
    for workers, name in runs:
        pack(path, tmp_path / name, 16, fmt=fmt, shard_size_bytes=20 * 1024, workers=workers,
             progress=False)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len([f for f in files if f.endswith(".tar")]) > 1
    for _, name in runs[1:]:
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == files
        for f in files:
            assert (tmp_path / name / f).read_bytes() == (tmp_path / "a" / f).read_bytes(), f
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        m = tar.getmembers()[0]
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "bigan", "bigan")


def test_shards_respect_size_and_dataset_json_describes_them(npz_source, tmp_path):
    index = pack(npz_source[0], tmp_path / "out", 16, fmt="png", shard_size_bytes=20 * 1024,
                 progress=False)
    for s in index["shards"]:
        f = tmp_path / "out" / s["name"]
        assert s["bytes"] == f.stat().st_size <= 20 * 1024
        assert s["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert {"format", "version", "resolution", "image_format", "num_samples", "class_names",
            "class_counts", "shards", "source"} <= set(index)
    assert index["format"] == "bigan-shards" and index["version"] == 1
    # Re-packing to the same place with fewer shards leaves no stale shard behind.
    again = pack(npz_source[0], tmp_path / "out", 16, fmt="png", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["shard-000000.tar"]
    assert len(again["shards"]) == 1


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    (img.convert(mode) if mode else img).save(path)


def test_image_folder_source(tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    _save(root / "cat" / "a.JPG", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))  # wide
    _save(root / "cat" / "sub" / "b.png", rng.integers(0, 255, (8, 8, 4), np.uint8))  # RGBA, small
    _save(root / "dog" / "c.bmp", rng.integers(0, 255, (16, 16), dtype=np.uint8))  # grayscale
    _save(root / "dog" / "d.webp", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "ant").mkdir()
    _save(root / "ant" / "e.jpeg", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    index = pack(root, tmp_path / "out", 16, fmt="png", progress=False)
    assert index["class_names"] == ["ant", "cat", "dog"] and index["class_counts"] == [1, 2, 2]
    src = index["source"]
    flags = (src["kind"], src["upscaled"], src["cropped"], src["converted_to_rgb"])
    assert flags == ("imagefolder", 1, 1, 2)
    for sample in shard_samples(tmp_path / "out").values():
        with Image.open(__import__("io").BytesIO(sample["png"])) as im:
            assert im.mode == "RGB" and im.size == (16, 16)
    # A classes.json naming every folder renames the classes (Imagenette's layout).
    (root / "classes.json").write_text(json.dumps({"ant": "Ant", "cat": "Cat", "dog": "Dog"}))
    assert pack(root, tmp_path / "out2", 8, progress=False)["class_names"] == ["Ant", "Cat", "Dog"]


def test_files_already_in_shape_are_copied_byte_for_byte(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "folder" / "a" / "rgb.jpg"
    _save(root, rng.integers(0, 255, (16, 16, 3), np.uint8))
    _save(tmp_path / "folder" / "a" / "gray.jpg", rng.integers(0, 255, (16, 16), np.uint8))
    index = pack(tmp_path / "folder", tmp_path / "out", 16, fmt="jpg", progress=False)
    assert index["source"]["copied_as_is"] == 1 and index["source"]["converted_to_rgb"] == 1
    packed = [v["jpg"] for v in shard_samples(tmp_path / "out").values()]
    assert root.read_bytes() in packed
    again = pack(tmp_path / "folder", tmp_path / "re", 16, fmt="jpg", reencode=True, progress=False)
    assert again["source"]["copied_as_is"] == 0
    assert root.read_bytes() not in [v["jpg"] for v in shard_samples(tmp_path / "re").values()]


def test_center_crop_resize_is_antialiased():
    stripes = np.zeros((64, 96, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-px stripes: aliasing would give streaks, a low-pass gives grey
    out = np.asarray(square_resize(Image.fromarray(stripes), 16))
    assert out.shape == (16, 16, 3) and abs(out.mean() - 127.5) < 3 and out.std() < 3


def _cifar_dir(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = rng.integers(0, 255, (12, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, 12)]
    for i, sl in enumerate((slice(0, 6), slice(6, 12))):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({b"data": data[sl], b"labels": labels[sl]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data[:4], b"labels": labels[:4]}, f)
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                  "horse", "ship", "truck")]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f)
    return folder, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.array(labels)


def test_cifar_pickle_source(tmp_path):
    folder, images, labels = _cifar_dir(tmp_path)
    index = pack(folder, tmp_path / "out", 32, fmt="png", progress=False)
    assert index["num_samples"] == 12 and index["class_names"][9] == "truck"
    pixels, got_labels, _ = load_all(tmp_path / "out", 32)
    order = np.random.default_rng(0).permutation(12)
    np.testing.assert_array_equal(pixels, images[order])
    np.testing.assert_array_equal(got_labels, labels[order])
    test_only = pack(folder / "test_batch", tmp_path / "test", 32, fmt="png", progress=False)
    assert test_only["num_samples"] == 4 and test_only["source"]["kind"] == "cifar"


def test_npz_grayscale_without_class_names(tmp_path):
    path = tmp_path / "g.npz"
    np.savez(path, images=np.full((5, 8, 8), 200, np.uint8), labels=np.array([0, 1, 2, 1, 0]))
    index = pack(path, tmp_path / "out", 8, fmt="png", progress=False)
    assert index["class_names"] == ["0", "1", "2"] and index["class_counts"] == [2, 2, 1]
    pixels, _, _ = load_all(tmp_path / "out", 8)
    assert (pixels == 200).all()


def test_make_digits_and_make_synthetic(tmp_path):
    digits = shards.make_digits(tmp_path / "digits", 16)
    assert digits["num_samples"] == 1797 and len(digits["shards"]) == 16
    assert digits["class_counts"][:3] == [178, 182, 177] and digits["image_format"] == "png"
    synth = make_synthetic(tmp_path / "synth", classes=3, resolution=8, n=24, seed=2)
    assert synth["class_names"] == ["disc-0", "square-1", "triangle-2"]
    assert synth["class_counts"] == [8, 8, 8]


@pytest.mark.parametrize("case", ["missing_dir", "empty_dir", "empty_class", "no_index", "bad_fmt"])
def test_bad_inputs_are_clear_data_errors(tmp_path, case):
    root = tmp_path / "src"
    root.mkdir()
    if case == "missing_dir":
        call, word = lambda: pack(tmp_path / "nope", tmp_path / "o", 8), "nope"
    elif case == "empty_dir":
        call, word = lambda: pack(root, tmp_path / "o", 8), str(root)
    elif case == "empty_class":
        _save(root / "a" / "x.png", np.zeros((8, 8, 3), np.uint8))
        (root / "b").mkdir()
        (root / "b" / "readme.txt").write_text("-")
        call, word = lambda: pack(root, tmp_path / "o", 8), str(root / "b")
    elif case == "no_index":
        call, word = lambda: read_index(root), str(root / "dataset.json")
    else:
        call, word = lambda: pack(root, tmp_path / "o", 8, fmt="gif"), "gif"
    with pytest.raises(DataError) as info:
        call()
    assert word in str(info.value) and "\n" not in str(info.value)


def test_verify_and_inspect_find_missing_and_altered_shards(tmp_path):
    out = tmp_path / "out"
    make_synthetic(out, classes=3, resolution=8, n=30, min_shards=3)
    assert verify_shards(out) == []
    report = shards.inspect(out, tmp_path / "grid.png")
    assert report["ok"] and report["class_counts_read"] == report["class_counts"] == [10, 10, 10]
    with Image.open(tmp_path / "grid.png") as im:  # 3 rows x 8 columns of 8 px, upscaled
        assert im.size[0] > im.size[1] > 0
    data = bytearray((out / "shard-000001.tar").read_bytes())
    data[600] ^= 0xFF  # flip bits inside a member: same size, different checksum
    (out / "shard-000001.tar").write_bytes(bytes(data))
    (out / "shard-000002.tar").unlink()
    problems = verify_shards(out)
    assert any("shard-000001.tar" in p and "sha256" in p for p in problems)
    assert any("shard-000002.tar" in p and "missing" in p for p in problems)
    assert not shards.inspect(out)["ok"]


def test_cli_pack_and_inspect(tmp_path, npz_source, capsys):
    parser = argparse.ArgumentParser(prog="bigan")
    add_data_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "pack", str(npz_source[0]), str(tmp_path / "o"),
                              "--resolution", "8", "--format", "png", "--shard-size", "20KB",
                              "--quiet"])
    assert args.func(args) == 0
    assert "packed 30 images in 3 classes" in capsys.readouterr().out
    args = parser.parse_args(["data", "inspect", str(tmp_path / "o")])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 30
    args = parser.parse_args(["data", "make-synthetic", str(tmp_path / "s"), "--classes", "2",
                              "--resolution", "8", "--n", "8"])
    assert args.func(args) == 0 and read_index(tmp_path / "s")["num_samples"] == 8
    # Every option documents itself.
    data_parser = parser._subparsers._group_actions[0].choices["data"]
    for sub in data_parser._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            assert action.help, f"{sub.prog} {action.dest} has no --help text"


def test_parse_size():
    assert parse_size("256MB") == 256 << 20 and parse_size("1GB") == 1 << 30
    assert parse_size("500KB") == 500 << 10 and parse_size("1.5k") == 1536
    assert parse_size("4096") == 4096
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("12 parsecs")


# --- real data ----------------------------------------------------------------------------------

def _subset(src: Path, dst: Path, classes: int, per_class: int) -> Path:
    for d in sorted(p for p in src.iterdir() if p.is_dir())[:classes]:
        (dst / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:per_class]:
            (dst / d.name / f.name).symlink_to(f)
    return dst


@needs_data
def test_real_cifar10_subset_labels_match_folders(tmp_path):
    root = _subset(DATA / "cifar10-jpg" / "train", tmp_path / "c10", 2, 50)
    index = pack(root, tmp_path / "out", 32, fmt="png", progress=False)
    assert index["class_names"] == ["airplane", "automobile"] and index["class_counts"] == [50, 50]
    # At the native 32 px nothing is resampled: each packed image is its source, pixel for pixel.
    by_pixels = {}
    for k, name in enumerate(index["class_names"]):
        for f in (root / name).iterdir():
            by_pixels[np.asarray(Image.open(f).convert("RGB")).tobytes()] = k
    pixels, labels, _ = load_all(tmp_path / "out", 32)
    assert [by_pixels[p.tobytes()] for p in pixels] == labels.tolist()


@needs_data
def test_real_imagenette_subset_labels_match_folders(tmp_path):
    src = DATA / "imagenette-224"
    root = _subset(src / "val", tmp_path / "inet" / "val", 2, 50)
    (tmp_path / "inet" / "classes.json").symlink_to(src / "classes.json")
    index = pack(root, tmp_path / "out", 64, fmt="jpg", progress=False)
    assert index["class_names"] == ["tench", "English springer"]
    assert index["class_counts"] == [50, 50]
    expected, expected_labels = [], []
    for k, d in enumerate(sorted(root.iterdir())):
        for f in sorted(d.iterdir()):
            expected.append(np.asarray(square_resize(Image.open(f).convert("RGB"), 64), np.float32))
            expected_labels.append(k)
    expected = np.stack(expected)
    pixels, labels, _ = load_all(tmp_path / "out", 64)
    for p, label in zip(pixels.astype(np.float32), labels):
        err = np.abs(expected - p).mean(axis=(1, 2, 3))
        assert err.min() < 6.0 and expected_labels[int(err.argmin())] == label  # JPEG q95


@needs_data
@pytest.mark.slow
def test_real_imagenette_full_pack_at_64px(tmp_path):
    root = DATA / "imagenette-224" / "val"
    index = pack(root, tmp_path / "out", 64, fmt="jpg", workers=2, progress=False)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    assert index["num_samples"] == 3925
    assert index["class_counts"] == [len(list(d.iterdir())) for d in folders]
    assert index["class_names"][0] == "tench" and index["source"]["num_left_out"] == 0
    report = shards.inspect(tmp_path / "out")
    assert report["ok"] and report["class_counts_read"] == index["class_counts"]
