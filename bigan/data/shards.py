"""Writing WebDataset shards and their `dataset.json` index: `bigan data pack` and friends.

`pack` turns an image collection (see `bigan.data.sources`) into `OUT/shard-000000.tar ...`:
one sample per image, members `KEY.cls` (the label as ASCII digits) and `KEY.jpg|png|webp`
(centre-cropped, anti-aliased to the target resolution, RGB), where KEY is the sample's
zero-padded global index. Samples are written in a seeded shuffle of all inputs, so every shard
mixes classes (the loader only shuffles within a shard). Encoding runs in a process pool, but
the output is byte-identical for any worker count and any re-run on the same inputs: tar
members carry fixed mtime/uid/gid/owner names, and `dataset.json` holds no timestamps.

`dataset.json` lists the shards with their sample counts, sizes and SHA-256; it is written last,
so a directory with an index is a complete pack. `read_index`, `verify_shards` and `inspect`
read it back. The tars are written with `tarfile` directly (the same USTAR layout as
webdataset's `TarWriter` with a fixed mtime) so packing needs neither torch nor webdataset.
OUT and the paths read back may be URLs (`bigan.data.locations`): shards are then uploaded as
they are written and read back as streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bigan.data.locations import INDEX_NAME, ShardLocation, open_for_writing, remove
# Reading a pack back lives in pack_index.py; re-exported, as callers know these names from here.
from bigan.data.pack_index import (FORMAT_NAME, FORMAT_VERSION, index_file, inspect,
                                   missing_shards, read_index, verify_shards)
from bigan.data.sources import (FOLDER_CAUSES, DataError, ImageSource, read_source,
                                square_resize)

__all__ = ["DataError", "pack", "make_digits", "make_synthetic", "read_index", "verify_shards",
           "inspect", "missing_shards", "index_file", "INDEX_NAME", "FORMATS"]

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
MB = 1 << 20
_BLOCK = tarfile.BLOCKSIZE


# --- encoding (runs in pool workers) -------------------------------------------------------------

# What `_encode` notes about an input (counted in dataset.json `source`), and why an input that
# could not be packed was left out (with the folder causes of `sources.FOLDER_CAUSES`).
NOTES = ("copied_as_is", "upscaled", "cropped", "converted_to_rgb", "rotated_by_exif",
         "first_frame", "high_bit_depth_scaled", "alpha_flattened")
DECODE_CAUSES = (
    "not_image",  # Pillow does not recognise the content (text, empty file, another format)
    "truncated_image",  # the file ends before its pixels do
    "undecodable_image",  # recognised, but the pixels do not decode (damaged data, EPS without
    # Ghostscript, more pixels than Pillow's decompression-bomb limit)
)


def _open_file(path: str, resolution: int, fmt: str, reencode: bool):
    """(PIL image, None) for a file to convert, or (None, bytes) for one to copy byte for byte."""
    from PIL import Image

    from bigan.data.image_files import exif_orientation, frame_count

    image = Image.open(path)
    image.load()  # reads (so checks) the pixels of frame 0 and closes a single-frame file
    # A file already in the target format, RGB and size, upright, opaque and with one frame
    # goes in byte for byte: no second generation of JPEG loss, and it decodes exactly as the
    # source does (the loader applies no EXIF rotation, alpha or frame choice).
    if (not reencode and image.format == FORMATS[fmt] and image.mode == "RGB"
            and image.size == (resolution, resolution) and not image.has_transparency_data
            and frame_count(image) == 1 and exif_orientation(image) == 1):
        image.close()
        with open(path, "rb") as f:
            return None, f.read()
    return image, None


def _encode(task: tuple) -> tuple[bytes | None, tuple[str, ...], str, str]:
    """(item, resolution, fmt, quality, reencode) -> (encoded bytes, notes, cause, error).

    Never raises: an input that cannot be packed comes back as (None, (), cause, error) with a
    cause from `DECODE_CAUSES`. The notes are names from `NOTES` (`image_files.viewer_rgb`'s,
    plus upscaled: smaller than the target, cropped: not square, copied_as_is).
    """
    from PIL import Image, UnidentifiedImageError

    from bigan.data.image_files import viewer_rgb

    item, resolution, fmt, quality, reencode = task
    try:
        if isinstance(item, np.ndarray):
            gray = item.ndim == 3 and item.shape[-1] == 1
            image = Image.fromarray(item[..., 0] if gray else item)
        else:
            image, raw = _open_file(item, resolution, fmt, reencode)
            if raw is not None:
                return raw, ("copied_as_is",), "", ""
        # jpg keeps full-resolution chroma (4:4:4): at 32-128 px, 4:2:0 visibly blurs colour
        # edges (it doubles the mean error at q95) for ~30% smaller files.
        options = {"jpg": {"quality": quality, "subsampling": 0}, "webp": {"quality": quality},
                   "png": {}}[fmt]
        buf = io.BytesIO()
        with image:  # closes a multi-frame file, which Pillow keeps open after load()
            rgb, notes = viewer_rgb(image)
            w, h = rgb.size
            notes += (("upscaled",) if min(w, h) < resolution else ()) + (
                ("cropped",) if w != h else ())
            square_resize(rgb, resolution).save(buf, format=FORMATS[fmt], **options)
        return buf.getvalue(), notes, "", ""
    except UnidentifiedImageError as exc:
        return None, (), "not_image", str(exc)
    except Exception as exc:  # an unreadable input is reported and left out, not fatal
        cause = "truncated_image" if "truncated" in str(exc).lower() else "undecodable_image"
        return None, (), cause, f"{type(exc).__name__}: {exc}"


class _ShardTar:
    """One shard being written: a USTAR stream with fixed member metadata, hashed as written."""

    def __init__(self, url: str):
        self.url, self.num_samples, self.planned_bytes = url, 0, 2 * _BLOCK  # end-of-archive
        self._file = open_for_writing(url)  # a bucket URL: uploaded in parts as it grows
        self._sha, self._bytes = hashlib.sha256(), 0
        self._tar = tarfile.open(fileobj=self, mode="w|", format=tarfile.USTAR_FORMAT)

    def write(self, data: bytes) -> None:  # tarfile writes through this
        self._file.write(data)
        self._sha.update(data)
        self._bytes += len(data)

    @staticmethod
    def member_bytes(members: dict[str, bytes]) -> int:
        return sum(_BLOCK + -(-len(v) // _BLOCK) * _BLOCK for v in members.values())

    def add(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):  # fixed member order, as webdataset's TarWriter does
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = "bigan"
            self._tar.addfile(info, io.BytesIO(data))
        self.num_samples += 1
        self.planned_bytes += self.member_bytes(members)

    def close(self) -> dict:
        self._tar.close()
        self._file.close()
        return {"name": self.url.rpartition("/")[2], "num_samples": self.num_samples,
                "sha256": self._sha.hexdigest(), "bytes": self._bytes}


def _records(size: int) -> int:
    """Bytes of a tar stream of `size` bytes once closed: padded to whole 10 KiB records."""
    return -(-size // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _clear_previous(out: ShardLocation) -> None:
    """Remove our own files from an earlier pack (index first: no index = incomplete pack)."""
    remove(out.index_url)
    for name in sorted(out.list_names() or ()):
        if re.fullmatch(r"shard-\d+\.tar", name):
            remove(out.url(name))


def _write_index(out: ShardLocation, index: dict) -> None:
    """dataset.json, last: locally written aside and renamed into place; on a store, one PUT
    (an object appears whole or not at all)."""
    text = json.dumps(index, indent=1) + "\n"
    if out.kind != "local":
        with open_for_writing(out.index_url) as f:
            f.write(text.encode())
        return
    final = Path(out.index_url)
    tmp = final.with_name(INDEX_NAME + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, final)


def pack(src: str | Path | ImageSource, out: str | Path, resolution: int,
         shard_size_bytes: int = 256 * MB, fmt: str = "jpg", quality: int = 95, workers: int = 1,
         seed: int = 0, progress: bool = True, min_shards: int = 1,
         reencode: bool = False) -> dict:
    """Pack images into WebDataset shards under `out`; returns the `dataset.json` index.

    Shards stay within `shard_size_bytes` (file bytes; a single larger sample gets a shard of
    its own). `min_shards` caps samples per shard at ceil(N / min_shards), so a small set still
    yields enough shards for many data streams (the loader needs a shard per rank at least).
    jpg keeps full-resolution chroma (4:4:4). Each image is stored as a photo viewer shows
    it (`bigan.data.image_files.viewer_rgb`; what was done is counted under `source`, one count
    per name in `NOTES`). Image files already in the target format, RGB, `resolution` px
    square, upright, opaque and single-frame are copied byte for byte unless `reencode`
    (`source.copied_as_is`). Files left out (by the source: their extension, their place; or
    here: not decodable) are listed under `source.left_out` with cause and error, counted by
    cause in `source.left_out_by_cause`. The same inputs, arguments and `src` spelling give
    byte-identical files, whatever `workers`.
    """
    _check_pack_args(resolution, shard_size_bytes, fmt, quality, workers, min_shards)
    source = src if isinstance(src, ImageSource) else read_source(src)
    n = len(source)
    order = np.random.default_rng(seed).permutation(n)
    out = _pack_target(out)
    tasks = ((source.item(int(i)), resolution, fmt, quality, reencode) for i in order)
    with _encoding(tasks, workers) as results:
        shards, counts, note_counts, left_out = _write_shards(
            source, zip(order, results), out, fmt, math.ceil(n / min_shards), shard_size_bytes,
            progress)
    if not shards:
        first = next((e for e in left_out if e["cause"] in DECODE_CAUSES), None)
        raise DataError(f"{source.path}: none of the {n} inputs could be decoded (first: "
                        f"{first['path']}: {first['error']})" if first else
                        f"{source.path}: none of the {n} inputs could be decoded")
    index = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "resolution": resolution,
        "image_format": fmt, "quality": quality if fmt != "png" else None,
        "num_samples": int(counts.sum()), "class_names": list(source.class_names),
        "class_counts": counts.tolist(), "shards": shards,
        "source": {"kind": source.kind, "path": source.path, "num_inputs": n, "seed": seed,
                   **note_counts, "num_left_out": len(left_out),
                   "left_out_by_cause": _count_causes(left_out), "left_out": left_out},
    }
    _write_index(out, index)
    return index


def _check_pack_args(resolution: int, shard_size_bytes: int, fmt: str, quality: int, workers: int,
                     min_shards: int) -> None:
    """DataError naming the first of `pack`'s arguments out of its range."""
    if fmt not in FORMATS:
        raise DataError(f"image format {fmt!r} is not supported: use one of {', '.join(FORMATS)}")
    for name, value, low in (("resolution", resolution, 1), ("quality", quality, 1),
                             ("workers", workers, 1), ("min_shards", min_shards, 1),
                             ("shard_size_bytes", shard_size_bytes, tarfile.RECORDSIZE)):
        if value < low:
            raise DataError(f"{name}={value} is invalid: must be >= {low}")
    if quality > 100:
        raise DataError(f"quality={quality} is invalid: must be <= 100")


def _pack_target(out: str | Path) -> ShardLocation:
    """Where `pack` writes: a directory (made) or a bucket prefix, cleared of an earlier pack."""
    out = ShardLocation.parse(out)
    if out.names is not None or out.index_name != INDEX_NAME or out.kind == "pipe":
        raise DataError(f"{out.root}: pack writes into a directory or a bucket prefix, not to "
                        "shard names or a pipe")
    if out.kind == "local":
        Path(out.root).mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    return out


@contextlib.contextmanager
def _encoding(tasks: Iterator[tuple], workers: int) -> Iterator[Iterator[tuple]]:
    """The `_encode` results of `tasks`, in order; in a pool of `workers` processes when > 1."""
    # fork: the children only run PIL/NumPy, and spawn would re-import __main__ (which breaks,
    # and respawns forever, when the caller is a REPL or stdin script).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = multiprocessing.get_context(method).Pool(workers) if workers > 1 else None
    try:
        yield pool.imap(_encode, tasks, chunksize=16) if pool else map(_encode, tasks)
    finally:
        if pool is not None:
            pool.terminate()


def _write_shards(source: ImageSource, encoded: Iterator[tuple], out: ShardLocation, fmt: str,
                  cap: int, shard_size_bytes: int, progress: bool
                  ) -> tuple[list[dict], np.ndarray, dict[str, int], list[dict]]:
    """Write `encoded` ((source index, `_encode` result) in packing order) as shards of at most
    `cap` samples and `shard_size_bytes` bytes under `out`; (the shards' index entries, samples
    per class, counts of each of `NOTES`, the inputs left out, sorted)."""
    from tqdm import tqdm

    n = len(source)
    shards: list[dict] = []
    counts = np.zeros(len(source.class_names), np.int64)
    note_counts = dict.fromkeys(NOTES, 0)
    left_out: list[dict] = list(source.left_out)
    key_width = max(8, len(str(n)))
    written = 0
    writer: _ShardTar | None = None
    for idx, (data, notes, cause, error) in tqdm(encoded, total=n, unit="img", desc="pack",
                                                 disable=not progress):
        if data is None:
            left_out.append({"path": str(source.files[idx]) if source.files else int(idx),
                             "cause": cause, "error": error})
            continue
        label = int(source.labels[idx])
        members = {"cls": str(label).encode("ascii"), fmt: data}
        if writer is not None and (writer.num_samples >= cap or _records(
                writer.planned_bytes + _ShardTar.member_bytes(members)) > shard_size_bytes):
            shards.append(writer.close())
            writer = None
        if writer is None:
            writer = _ShardTar(out.url(f"shard-{len(shards):06d}.tar"))
        writer.add(f"{written:0{key_width}d}", members)
        written += 1
        counts[label] += 1
        for note in notes:
            note_counts[note] += 1
    if writer is not None:
        shards.append(writer.close())
    left_out.sort(key=lambda e: (str(e["path"]), e["cause"]))
    return shards, counts, note_counts, left_out


def _count_causes(left_out: list[dict]) -> dict[str, int]:
    """{cause: files}, causes in the order of FOLDER_CAUSES then DECODE_CAUSES, zeros left out."""
    counts = {c: sum(e["cause"] == c for e in left_out) for c in FOLDER_CAUSES + DECODE_CAUSES}
    return {c: k for c, k in counts.items() if k}


def make_digits(out: str | Path, resolution: int = 32, min_shards: int = 16,
                progress: bool = False) -> dict:
    """scikit-learn's 1,797 handwritten digits as lossless PNG shards (see `synthetic.digits`)."""
    from bigan.data import synthetic

    images, labels = synthetic.digits(resolution, channels=3)
    source = ImageSource("digits", "sklearn.datasets.load_digits", synthetic.DIGIT_CLASS_NAMES,
                         labels, images=images)
    return pack(source, out, resolution, fmt="png", min_shards=min_shards, progress=progress)


def make_synthetic(out: str | Path, classes: int, resolution: int, n: int, seed: int = 0,
                   min_shards: int = 16, progress: bool = False) -> dict:
    """The procedural class-labelled set of `synthetic.synthetic` as lossless PNG shards."""
    from bigan.data import synthetic

    images, labels = synthetic.synthetic(n, classes, resolution, 3, seed=seed)
    names = [f"{synthetic.SHAPES[k % len(synthetic.SHAPES)]}-{k}" for k in range(classes)]
    source = ImageSource("synthetic", f"bigan.data.synthetic(seed={seed})", names, labels,
                         images=images)
    return pack(source, out, resolution, fmt="png", seed=seed, min_shards=min_shards,
                progress=progress)
