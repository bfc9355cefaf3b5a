"""Reading a pack back: its `dataset.json` (from a directory, a URL or a brace pattern of shards),
which of its shards are missing, their checksums, and `inspect`'s report and sample grid.

The writing side is `bigan.data.shards` (which re-exports these names); where the files are and
how they are streamed is `bigan.data.locations`. A shard at a URL is streamed through the hash
and the tar reader, never stored.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from bigan.data.locations import INDEX_NAME, ShardLocation, read_bytes, reader
from bigan.data.retrying import RetryPolicy, ShardReadError
from bigan.data.sources import DataError, square_resize

FORMAT_NAME, FORMAT_VERSION = "bigan-shards", 1


def index_file(path: str | Path) -> Path:
    path = Path(path)
    return path if path.name == INDEX_NAME or path.suffix == ".json" else path / INDEX_NAME


def read_index(path: str | Path, policy: RetryPolicy = RetryPolicy()) -> dict:
    """The `dataset.json` of a pack (a directory, the file itself, a URL or a brace pattern of
    shards, see `bigan.data.locations`), checked for its format. A brace pattern picks shards:
    the index then lists those (in the pack's order) and, for a strict subset, `subset_of` the
    pack's shard count, the subset's `num_samples` and no `class_counts`."""
    where = ShardLocation.parse(path)
    file = where.index_url
    try:
        text = read_bytes(file, policy)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        where_to = f"{where.root}" if where.kind != "pipe" else "OUT"
        raise DataError(f"{file} not found: pack images first (`bigan data pack SRC "
                        f"{where_to} --resolution R`) or point at a packed shard directory") from None
    except OSError as exc:
        raise DataError(f"{file} could not be read: {exc}") from None
    try:
        index = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: not valid JSON ({exc}); re-run `bigan data pack`") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise DataError(f"{file}: not a bigan shard index (format must be {FORMAT_NAME!r})")
    if index.get("version") != FORMAT_VERSION:
        raise DataError(f"{file}: index version {index.get('version')} is not supported "
                        f"(this bigan reads version {FORMAT_VERSION}); re-pack the data")
    missing = [k for k in ("resolution", "image_format", "num_samples", "class_names",
                           "class_counts", "shards") if k not in index]
    if missing:
        raise DataError(f"{file}: missing field(s) {', '.join(missing)}")
    return _pick(index, where, file) if where.names is not None else index


def _pick(index: dict, where: ShardLocation, file: str) -> dict:
    """The index restricted to the shards a brace pattern names, kept in the pack's order (so
    shard numbers, and saved data positions, match the whole pack's when all are named)."""
    listed = {s["name"] for s in index["shards"]}
    unknown = [n for n in where.names if n not in listed]
    if unknown:
        raise DataError(f"{where.url(unknown[0])}: not a shard of {file} ({len(unknown)} of the "
                        f"{len(where.names)} names the pattern gives are not)")
    if len(set(where.names)) == len(listed):
        return index
    shards = [s for s in index["shards"] if s["name"] in set(where.names)]
    return {**index, "shards": shards, "num_samples": sum(s["num_samples"] for s in shards),
            "class_counts": None, "subset_of": len(listed)}


def missing_shards(path: str | Path, index: dict) -> list[str]:
    """Shards the index lists that are not there (where the store can list; http and pipe:
    cannot, and a missing shard there is found, named and skipped when it is read)."""
    where = ShardLocation.parse(path)
    present = where.list_names()
    if present is None:
        return []
    return [where.url(s["name"]) for s in index["shards"] if s["name"] not in present]


def _sha256(stream) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def verify_shards(path: str | Path, policy: RetryPolicy = RetryPolicy()) -> list[str]:
    """Problems found checking every shard's presence, size and SHA-256 (empty list: all good).
    Shards at a URL are streamed through the hash, never stored."""
    index = read_index(path, policy)
    where = ShardLocation.parse(path)
    problems = []
    for shard in index["shards"]:
        file = where.url(shard["name"])
        if where.kind == "local" and not Path(file).is_file():
            problems.append(f"{file}: shard listed in {INDEX_NAME} is missing")
            continue
        if where.kind == "local" and Path(file).stat().st_size != shard["bytes"]:
            problems.append(f"{file}: {Path(file).stat().st_size} bytes, {INDEX_NAME} says "
                            f"{shard['bytes']} (truncated or replaced); re-pack or restore it")
            continue
        try:
            with reader(file, policy, shard["bytes"]) as f:
                digest, size = _sha256(f)
        except ShardReadError as exc:
            missing = isinstance(exc.__cause__, FileNotFoundError)
            problems.append(f"{file}: shard listed in {INDEX_NAME} is missing" if missing
                            else f"{exc}")
            continue
        if size != shard["bytes"]:
            problems.append(f"{file}: {size} bytes, {INDEX_NAME} says {shard['bytes']} "
                            "(truncated or replaced); re-pack or restore it")
        elif digest != shard["sha256"]:
            problems.append(f"{file}: sha256 checksum mismatch with {INDEX_NAME} (the file "
                            "changed after packing); re-pack or restore it")
    return problems


def inspect(path: str | Path, out_png: str | Path | None = None, per_class: int = 8,
            max_classes: int = 20, policy: RetryPolicy = RetryPolicy()) -> dict:
    """Counts from the index and from reading every shard, checksums, and a grid of real samples.

    The grid has one row per class (the first `max_classes`), `per_class` samples each, in
    shard order; empty cells stay dark. Returns a JSON-able report; `ok` is False when a
    checksum fails or the shards do not hold what the index says. `path` may be a URL (each
    shard is streamed twice, for its checksum and for its samples; nothing is stored).
    """
    from PIL import Image

    from bigan.data.tar_samples import TarStatus, tar_samples
    from bigan.pictures import image_grid, save_png

    index = read_index(path, policy)
    where = ShardLocation.parse(path)
    names, res = index["class_names"], index["resolution"]
    problems = verify_shards(path, policy)
    rows = min(len(names), max_classes)
    cells = np.full((rows, per_class, res, res, 3), 16, np.uint8)
    filled = np.zeros(rows, int)
    counts = np.zeros(len(names), np.int64)
    unreadable = 0
    for shard in index["shards"]:
        file = where.url(shard["name"])
        if where.kind == "local" and not Path(file).is_file():
            continue
        status = TarStatus()
        with reader(file, policy, shard["bytes"]) as f:
            for sample in tar_samples(f, status, required=(), any_of=("cls",)):
                if "cls" not in sample:
                    continue
                try:
                    label = int(sample["cls"])
                except ValueError:
                    label = -1
                if not 0 <= label < len(names):
                    unreadable += 1
                    continue
                counts[label] += 1
                data = sample.get(index["image_format"])
                if label < rows and filled[label] < per_class and data is not None:
                    try:
                        with Image.open(io.BytesIO(data)) as im:
                            pixels = np.asarray(square_resize(im.convert("RGB"), res))
                    except OSError:
                        unreadable += 1
                        continue
                    cells[label, filled[label]] = pixels
                    filled[label] += 1
        if status.error and not any(p.startswith(file) for p in problems):
            problems.append(f"{file}: unreadable tar ({status.error})")
    expected = index["class_counts"]  # None for a subset of the shards (a brace pattern)
    if expected is not None and counts.tolist() != expected:
        problems.append(f"class counts read from the shards {counts.tolist()} differ from "
                        f"{INDEX_NAME}'s {expected}")
    grid = None
    if out_png is not None:
        picture = image_grid(cells.reshape(-1, res, res, 3), rows, per_class)
        grid = str(save_png(picture, out_png, min_side=256))
    return {
        "path": where.root, "num_samples": index["num_samples"],
        "num_shards": len(index["shards"]), "resolution": res,
        "image_format": index["image_format"], "class_names": names,
        "class_counts": index["class_counts"], "class_counts_read": counts.tolist(),
        "bytes": sum(s["bytes"] for s in index["shards"]), "unreadable_samples": unreadable,
        "problems": problems, "ok": not problems, "grid": grid,
    }
