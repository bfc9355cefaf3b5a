"""Image folders as users have them (bigan/data/image_files.py, and `pack` of such folders):
EXIF orientation, high bit depths scaled not clipped, every mode, every format Pillow writes
and reads, first frames of animations, and files left out reported by cause. Every input is
generated here; expected pixels come from formulas (numpy rotations, v * 255 / 65535, alpha
over white), not from the code under test."""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bigan.data.image_files import readable_extensions, viewer_rgb
from bigan.data.shards import DECODE_CAUSES, pack, read_index
from bigan.data.sources import FOLDER_CAUSES, square_resize

pytestmark = pytest.mark.unit


def _packed_by_class(out: Path, index: dict, resolution: int, dtype) -> dict[str, np.ndarray]:
    """class name -> the one image packed for it (PNG members, RGB, resolution x resolution)."""
    images = {}
    for shard in index["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for member, data in members.items():
            key, _, ext = member.partition(".")
            if ext == "cls":
                with Image.open(io.BytesIO(members[f"{key}.png"])) as im:
                    assert im.mode == "RGB" and im.size == (resolution, resolution)
                    images[index["class_names"][int(data)]] = np.asarray(im, dtype)
    return images

def png16(pixels: np.ndarray) -> bytes:
    """uint16 [H, W, C] (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) -> a 16-bit PNG, by hand
    (Pillow cannot write 16-bit colour PNGs)."""
    h, w, c = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def gradient(h: int = 16, w: int = 16) -> np.ndarray:
    """A uint8 RGB ramp with every pixel different enough to see rotations."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 255 // (h + w - 2)],
                    -1).astype(np.uint8)


def packed_pixels(tmp_path: Path, files: dict[str, bytes | Image.Image], resolution: int = 16,
                  **save) -> tuple[dict[str, np.ndarray], dict]:
    """Pack one class folder per file (png, lossless) -> ({file name: uint8 HWC}, index)."""
    root = tmp_path / "src"
    for name, content in files.items():
        (root / name).mkdir(parents=True)
        if isinstance(content, bytes):
            (root / name / name).write_bytes(content)
        else:
            content.save(root / name / name, **save)
    index = pack(root, tmp_path / "out", resolution, fmt="png", progress=False)
    by_label = _packed_by_class(tmp_path / "out", index, resolution, np.uint8)
    return by_label, index


# --- EXIF orientation ---------------------------------------------------------------------------

# What a viewer shows for each EXIF orientation, as numpy operations on the stored HWC array
# (EXIF 2.32, tag 0x0112: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
# 7 transverse, 8 rotate 90 anticlockwise).
DISPLAYED = {
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_exif_orientation_is_applied(orientation):
    stored = gradient(12, 20)  # landscape as stored; 5-8 display it as portrait
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "PNG", exif=exif)
    with Image.open(buf) as im:
        im.load()
        rgb, notes = viewer_rgb(im)
    np.testing.assert_array_equal(np.asarray(rgb), DISPLAYED[orientation](stored))
    assert ("rotated_by_exif" in notes) == (orientation != 1)


def test_sideways_photo_in_target_shape_is_rotated_not_copied(tmp_path):
    # A phone photo already 16 px square and PNG used to be copied byte for byte, tag and all;
    # the loader then showed it sideways.
    stored = gradient()
    exif = Image.Exif()
    exif[0x0112] = 6
    got, index = packed_pixels(tmp_path, {"phone.png": Image.fromarray(stored)}, exif=exif)
    np.testing.assert_array_equal(got["phone.png"], np.rot90(stored, -1))
    assert index["source"]["rotated_by_exif"] == 1 and index["source"]["copied_as_is"] == 0


# --- high bit depths ----------------------------------------------------------------------------

def test_high_bit_depth_is_scaled_not_clipped(tmp_path):
    ramp16 = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(16, 16)
    want16 = np.rint(ramp16 / 257.0).astype(np.uint8)
    ramp_f = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    wide_f = np.linspace(-3, 5, 256, dtype=np.float32).reshape(16, 16)
    big_i = np.linspace(0, 1 << 20, 256).astype(np.int32).reshape(16, 16)
    rgb16 = (np.linspace(0, 65535, 768).round().astype(np.uint16).reshape(16, 16, 3))
    pgm10 = np.linspace(0, 1023, 256).round().astype(">u2").reshape(16, 16)
    files = {
        "grey16.png": Image.fromarray(ramp16),  # Pillow: mode I;16
        "grey16.tif": png16(ramp16[..., None]),  # written as PNG bytes: content, not extension
        "float.tif": Image.fromarray(ramp_f),  # mode F in 0..1
        "float_wide.tif": Image.fromarray(wide_f),  # F outside 0..1: stretched
        "int32.tif": Image.fromarray(big_i),  # I beyond 16 bits: stretched
        "rgb16.png": png16(rgb16),
        "grey10.pgm": b"P5\n16 16\n1023\n" + pgm10.tobytes(),  # Pillow scales to I 0..65535
    }
    got, index = packed_pixels(tmp_path, files)

    def grey(values: np.ndarray) -> np.ndarray:
        return np.repeat(values[..., None], 3, axis=-1)

    np.testing.assert_array_equal(got["grey16.png"], grey(want16))
    np.testing.assert_array_equal(got["grey16.tif"], grey(want16))
    np.testing.assert_array_equal(got["float.tif"], grey(np.rint(ramp_f * 255).astype(np.uint8)))
    stretched = np.rint((wide_f.astype(np.float64) + 3) / 8 * 255).astype(np.uint8)
    np.testing.assert_array_equal(got["float_wide.tif"], grey(stretched))
    np.testing.assert_array_equal(
        got["int32.tif"], grey(np.rint(big_i / float(big_i.max()) * 255).astype(np.uint8)))
    # 16-bit colour: Pillow keeps each channel's high byte (v >> 8, under one level from
    # v * 255 / 65535): scaled, never clipped.
    np.testing.assert_array_equal(got["rgb16.png"], (rgb16 >> 8).astype(np.uint8))
    np.testing.assert_allclose(got["grey10.pgm"], grey(pgm10 / 1023.0 * 255), atol=0.51)
    assert got["grey16.png"].mean() < 130  # today's clip gave 254: almost all white
    assert index["source"]["high_bit_depth_scaled"] == 6  # rgb16: Pillow already rounds


# --- modes --------------------------------------------------------------------------------------

def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Porter-Duff 'over' on a white page: a * c + (1 - a) * 255."""
    a = alpha.astype(np.float64)[..., None] / 255
    return rgb * a + 255 * (1 - a)


def test_every_mode_becomes_the_rgb_a_viewer_shows(tmp_path):
    rng = np.random.default_rng(0)
    rgb = gradient()
    alpha = np.tile(np.linspace(0, 255, 16).round().astype(np.uint8), (16, 1))
    grey = rgb[..., 1]
    palette = Image.new("P", (16, 16))
    palette.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200])
    indices = rng.integers(0, 3, (16, 16), dtype=np.uint8)
    palette.putdata(indices.ravel().tolist())
    cmyk = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    files = {
        "rgba.png": Image.fromarray(np.dstack([rgb, alpha])),
        "la.png": Image.fromarray(np.dstack([grey, alpha])),
        "palette_trns.png": encoded(palette, "PNG", transparency=0),
        "palette_trns.gif": encoded(palette, "GIF", transparency=0),
        "cmyk.tif": Image.fromarray(cmyk, mode="CMYK"),
        "bilevel.png": Image.fromarray(grey > 127),
        "grey.png": Image.fromarray(grey),
        "opaque_rgba.png": Image.fromarray(np.dstack([rgb, np.full_like(grey, 255)])),
    }
    got, index = packed_pixels(tmp_path, files)
    np.testing.assert_allclose(got["rgba.png"], over_white(rgb, alpha), atol=0.51)
    np.testing.assert_allclose(got["la.png"], over_white(np.dstack([grey] * 3), alpha), atol=0.51)
    colours = np.array([[255, 255, 255], [10, 200, 10], [10, 10, 200]], np.uint8)  # 0 = clear
    for name in ("palette_trns.png", "palette_trns.gif"):
        np.testing.assert_array_equal(got[name], colours[indices], err_msg=name)
    # CMYK -> RGB as Pillow (and the naive print formula) define it: (255 - C)(255 - K) / 255.
    c, k = cmyk[..., :3].astype(float), cmyk[..., 3:].astype(float)
    np.testing.assert_allclose(got["cmyk.tif"], (255 - c) * (255 - k) / 255, atol=1.01)
    np.testing.assert_array_equal(got["bilevel.png"], np.dstack([(grey > 127) * 255] * 3))
    np.testing.assert_array_equal(got["grey.png"], np.dstack([grey] * 3))
    np.testing.assert_array_equal(got["opaque_rgba.png"], rgb)
    src = index["source"]
    assert src["alpha_flattened"] == 4 and src["converted_to_rgb"] == 8


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "PA", "RGBA", "RGBX", "CMYK", "YCbCr",
                                  "LAB", "HSV", "I", "I;16", "I;16B", "I;16L", "F"])
def test_viewer_rgb_accepts_every_mode_pillow_opens(mode):
    image = Image.new(mode, (5, 3))
    rgb, _ = viewer_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (5, 3)


# --- formats and frames -------------------------------------------------------------------------

def _written_formats() -> list[tuple[str, str, str]]:
    """(format, extension, mode) for every format Pillow both writes and reads from a file
    extension we accept: each extension it registers for the format."""
    Image.init()
    cases = []
    for ext, fmt in sorted(Image.registered_extensions().items()):
        if ext not in readable_extensions() or fmt not in Image.SAVE:
            continue
        mode = {"MSP": "1", "XBM": "1", "BLP": "P"}.get(fmt, "RGB")
        cases.append((fmt, ext, mode))
    return cases


@pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")
def test_every_format_pillow_writes_is_packed(tmp_path):
    cases = _written_formats()
    assert {".tif", ".tiff", ".gif", ".jp2", ".qoi", ".tga", ".ppm", ".avif"} <= {
        e for _, e, _ in cases}
    source = Image.fromarray(gradient(32, 32))
    root = tmp_path / "src"
    expected, unwritable = {}, []
    for fmt, ext, mode in cases:
        image = source.convert(mode)
        try:
            data = encoded(image, fmt)
        except OSError as exc:
            unwritable.append((fmt, str(exc)))
            continue
        folder = root / f"{fmt}{ext}"
        folder.mkdir(parents=True)
        (folder / f"x{ext}").write_bytes(data)
        expected[folder.name] = np.asarray(square_resize(image.convert("RGB"), 16), np.float64)
    assert unwritable == []
    index = pack(root, tmp_path / "out", 16, fmt="png", progress=False)
    got = _packed_by_class(tmp_path / "out", index, 16, np.float64)
    left_out = {Path(e["path"]).parent.name: e for e in index["source"]["left_out"]}
    if shutil.which("gs") is None:  # Pillow reads EPS through Ghostscript: left out, with why
        for name in ("EPS.eps", "EPS.ps"):
            assert "Ghostscript" in left_out.pop(name)["error"]
        expected = {k: v for k, v in expected.items() if not k.startswith("EPS")}
    assert left_out == {}
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        # Lossy formats (JPEG, WebP, AVIF, GIF's 256 colours, BLP/DDS block coding) land within
        # a few levels of the source; lossless ones within resampling rounding.
        assert np.abs(got[name] - want).mean() < 8, name


@pytest.mark.parametrize("fmt,ext", [("GIF", ".gif"), ("PNG", ".apng"), ("WEBP", ".webp"),
                                     ("TIFF", ".tif")])
def test_animated_and_multipage_files_give_their_first_frame(tmp_path, fmt, ext):
    frames = [Image.new("RGB", (16, 16), c) for c in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    got, index = packed_pixels(tmp_path, {f"anim{ext}": buf.getvalue()})
    np.testing.assert_allclose(got[f"anim{ext}"].reshape(-1, 3).mean(0), [250, 0, 0], atol=3)
    assert index["source"]["first_frame"] == 1 and index["source"]["copied_as_is"] == 0


# --- files left out, by cause, and the report ---------------------------------------------------

def every_case_folder(root: Path) -> dict[str, int]:
    """A folder with every case above plus every way to be left out; returns the expected
    left-out counts by cause."""
    rgb = gradient(24, 40)
    cat, dog = root / "cat", root / "dog" / "nested"
    cat.mkdir(parents=True)
    dog.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(cat / "phone.jpg", exif=exif)
    (cat / "scan16.png").write_bytes(png16(np.linspace(0, 65535, 960).astype(np.uint16)
                                           .reshape(24, 40, 1)))
    Image.fromarray(np.dstack([rgb, rgb[..., 0]])).save(cat / "logo.png")
    Image.fromarray(rgb).convert("P").save(cat / "icon.gif", transparency=0)
    Image.fromarray(rgb).convert("CMYK").save(cat / "print.jpg")
    Image.fromarray(rgb[..., 0].astype(np.float32) / 255).save(cat / "float.tif")
    frames = [Image.fromarray(rgb), Image.fromarray(rgb[::-1])]
    frames[0].save(dog / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(dog / "anim.webp", save_all=True, append_images=frames[1:])
    Image.fromarray(rgb).save(dog / "photo.tiff")
    Image.fromarray(rgb).save(dog / "photo.qoi")
    Image.fromarray(rgb).save(dog / "photo.JPEG")
    (root / "README.txt").write_text("about this set")  # outside_class_folder
    (cat / "notes.txt").write_text("not an image")  # unsupported_extension
    (dog / "Thumbs.db").write_bytes(b"\0" * 64)  # unsupported_extension
    (dog / "gone.jpg").symlink_to(root / "missing.jpg")  # broken_link
    (cat / "empty.png").write_bytes(b"")  # not_image
    (cat / "text.jpg").write_text("<html>a web page saved as .jpg</html>")  # not_image
    jpeg = (cat / "phone.jpg").read_bytes()
    (dog / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated_image
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        png, "PNG")
    broken = bytearray(png.getvalue())
    start = broken.index(b"IDAT") + 20
    broken[start:start + 40] = bytes(b ^ 0x5A for b in broken[start:start + 40])
    (dog / "damaged.png").write_bytes(bytes(broken))  # undecodable_image
    return {"unsupported_extension": 2, "outside_class_folder": 1, "broken_link": 1,
            "not_image": 2, "truncated_image": 1, "undecodable_image": 1}


def test_files_left_out_are_counted_by_cause_and_listed(tmp_path, capsys):
    from bigan.cli import main

    expected = every_case_folder(tmp_path / "photos")
    assert main(["data", "pack", str(tmp_path / "photos"), str(tmp_path / "out"),
                 "--resolution", "16", "--quiet"]) == 0
    printed = capsys.readouterr().out
    src = read_index(tmp_path / "out")["source"]
    assert src["left_out_by_cause"] == expected
    assert list(src["left_out_by_cause"]) == [c for c in FOLDER_CAUSES + DECODE_CAUSES
                                              if c in expected]
    assert src["num_left_out"] == len(src["left_out"]) == sum(expected.values())
    listed = {Path(e["path"]).name: e["cause"] for e in src["left_out"]}
    assert listed["README.txt"] == "outside_class_folder" and listed["cut.jpg"] == "truncated_image"
    assert listed["gone.jpg"] == "broken_link" and listed["damaged.png"] == "undecodable_image"
    assert all(e["error"] for e in src["left_out"])
    assert src["num_inputs"] == 15 and read_index(tmp_path / "out")["num_samples"] == 11
    for note in ("rotated_by_exif", "high_bit_depth_scaled", "alpha_flattened", "first_frame"):
        assert src[note] >= 1, note
    assert f"{sum(expected.values())} files left out: 2 unsupported extension" in printed
    print(printed)
    print(json.dumps({k: v for k, v in src.items() if k != "left_out"}, indent=1))
