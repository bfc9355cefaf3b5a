"""`bigan data ...`: pack images into shards, make the embedded sets as shards, inspect a pack.

`add_data_commands(subparsers)` registers the `data` command group on the main parser; each
handler prints a short human summary (inspect prints its JSON report) and returns an exit code.
Errors the user can fix raise `DataError` (a `ValueError`) with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import re

from bigan.data.shards import FORMATS, NOTES, DataError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_size(text: str) -> int:
    """'256MB' -> 268435456. Units K/KB/KiB, M/MB/MiB, G/GB/GiB are powers of 1024; none = bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 500KB, 256MB or 1GB")
    return int(float(match.group(1)) * _UNITS[unit])


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def _summary(index: dict, out: str) -> None:
    total = sum(s["bytes"] for s in index["shards"])
    src = index["source"]
    print(f"packed {index['num_samples']} images in {len(index['class_names'])} classes into "
          f"{len(index['shards'])} shards ({_human(total)}), {index['resolution']} px "
          f"{index['image_format']}")
    notes = [f"{src[k]} {k.replace('_', ' ')}" for k in NOTES if src.get(k)]
    if notes:
        print("  " + "; ".join(notes))
    by_cause = src.get("left_out_by_cause") or {}
    if by_cause:
        causes = ", ".join(f"{n} {c.replace('_', ' ')}" for c, n in by_cause.items())
        print(f"  {src['num_left_out']} files left out: {causes} (listed in dataset.json "
              "source.left_out)")
    print(f"  index  {out}/dataset.json")


def cmd_pack(args: argparse.Namespace) -> int:
    from bigan.data.shards import pack

    index = pack(args.src, args.out, args.resolution, shard_size_bytes=args.shard_size,
                 fmt=args.format, quality=args.quality, workers=args.workers, seed=args.seed,
                 progress=not args.quiet, min_shards=args.min_shards, reencode=args.reencode)
    _summary(index, args.out)
    return 0


def cmd_make_digits(args: argparse.Namespace) -> int:
    from bigan.data.shards import make_digits

    _summary(make_digits(args.out, args.resolution, progress=True), args.out)
    return 0


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from bigan.data.shards import make_synthetic

    for name in ("classes", "resolution", "n"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name}={getattr(args, name)} must be >= 1")
    index = make_synthetic(args.out, args.classes, args.resolution, args.n, seed=args.seed,
                           progress=True)
    _summary(index, args.out)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from bigan.data.shards import inspect

    report = inspect(args.path, args.grid)
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `data pack | make-digits | make-synthetic | inspect` under `subparsers`."""
    data = subparsers.add_parser(
        "data", help="pack images into WebDataset shards and inspect them",
        description="Write training data as WebDataset tar shards with a dataset.json index, "
                    "which the streaming loader (bigan.data.loader) reads.")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{pack,make-digits,"
                              "make-synthetic,inspect}")

    p = sub.add_parser("pack", help="pack an image folder, CIFAR batches or an .npz into shards",
                       description="Centre-crop, resize (Lanczos) and encode every image into "
                                   "shards, in a seeded shuffle so each shard mixes classes. "
                                   "Re-running gives byte-identical shards.")
    p.add_argument("src", help="ImageFolder root (one sub-folder per class), CIFAR batch "
                               "folder/file (data_batch_*, test_batch) or .npz (images, labels)")
    p.add_argument("out", help="output directory for shard-NNNNNN.tar and dataset.json, or a "
                               "bucket URL (s3://bucket/prefix, gs://...; credentials and endpoint "
                               "from the store's environment, e.g. AWS_*): shards are uploaded "
                               "as they are written")
    p.add_argument("--resolution", type=int, required=True, help="side of the square images, px")
    p.add_argument("--shard-size", type=parse_size, default="256MB",
                   help="largest shard, e.g. 500KB, 256MB, 1GB (powers of 1024; default 256MB)")
    p.add_argument("--format", choices=sorted(FORMATS), default="jpg",
                   help="image encoding inside the shards (default jpg; png is lossless)")
    p.add_argument("--quality", type=int, default=95, help="jpg/webp quality 1-100 (default 95)")
    p.add_argument("--workers", type=int, default=1,
                   help="encoding processes (default 1); the output is identical for any number")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample shuffle (default 0)")
    p.add_argument("--min-shards", type=int, default=1,
                   help="write at least this many shards (default 1); a loader needs as many "
                        "shards as ranks, and uses workers per rank up to shards / ranks")
    p.add_argument("--reencode", action="store_true",
                   help="re-encode even files already in the target format, RGB and size "
                        "(by default those are copied byte for byte)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("make-digits", help="scikit-learn's 8x8 digits, upsampled, as PNG shards",
                       description="The embedded 10-class set (1,797 real handwritten digits) "
                                   "as lossless shards, 16 of them.")
    p.add_argument("out", help="output directory")
    p.add_argument("--resolution", type=int, default=32, help="image side in px (default 32)")
    p.set_defaults(func=cmd_make_digits)

    p = sub.add_parser("make-synthetic", help="the procedural class-labelled set as PNG shards",
                       description="Shapes, colours and textures per class at any resolution "
                                   "(bigan.data.synthetic), as lossless shards, 16 of them.")
    p.add_argument("out", help="output directory")
    p.add_argument("--classes", type=int, required=True, help="number of classes")
    p.add_argument("--resolution", type=int, required=True, help="image side in px")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="seed of the images and shuffle (default 0)")
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser("inspect", help="counts, class histogram, checksums, sample grid (JSON)",
                       description="Read every shard: verify SHA-256 checksums, count samples "
                                   "per class against dataset.json, print a JSON report; exit "
                                   "code 1 when a problem is found.")
    p.add_argument("path", metavar="OUT", help="packed shard directory (or its dataset.json), or a "
                                               "URL, brace pattern or pipe: command as data.path "
                                               "takes (shards are streamed, not stored)")
    p.add_argument("--grid", metavar="PNG", default=None,
                   help="also write a PNG grid of real samples, one row per class")
    p.set_defaults(func=cmd_inspect)
    return data
