"""Shard loader throughput per core, against a bare PIL decode + resize loop in the same run.

Imagenette-224 (3,925 real JPEG photos) is packed once at 224 px as jpg (cached under
`--cache`): the 224 px RGB source files go in byte for byte, the grayscale ones are re-encoded
(q95). Then, at 64 px and 224 px, on one core each (loader with num_workers=0, so images/s is
per core), over exactly the images the loader delivers:

- loader:      `ShardLoader` batches (tar read, in-shard shuffle, decode, RGB, resize, flip,
               NCHW batch), as float32 in [-1, 1] (the default) and as uint8 (channels_last);
- pil-files:   a bare loop over the same images' source files: open, RGB, resize, to uint8;
- pil-packed:  the same bare loop over the packed bytes, already in memory (the gap to the
               loader is then the loader's own overhead: tar, shuffle, batching, conversion).

The sides are timed in paired rounds with rotating order (the machine is shared and drifts);
the table gives each side's best images/s and the median per-round ratio. Goal: loader >= 0.9x
pil-files.

Then the loader against its consumer: real images/s that one `gan_iteration` of the 64 px and
128 px BigGAN configs takes in (k D steps of `batch` real images; timed with every core, on
CUDA when present), divided into the loader's uint8 images/s on ONE core (the trainer's
format). Goal: >= 5x, i.e. one loader core feeds the whole trainer with room to spare.
Then the same shards streamed (`--part streaming`): the loader's uint8 images/s on one core
reading them from local files (the own tar reader), from a bucket of an S3 server on loopback
(moto's server mode, through s3fs: the path a `data.path: s3://...` run takes) and from a plain
HTTP server on loopback (fsspec's http), in alternating rounds; the streamed sides fetch 8 MiB
range requests through `RetryingReader`. Loopback has no network latency, and moto is a Python
server, so this measures bigan's streamed read path, not a real bucket's bandwidth.
Writes tables and `OUT/data_loader.json` (`OUT/data_loader_streaming.json` for that part).

    python bench/data_loader.py [--quick] [--out bench/results] [--part all|decode|streaming]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bigan.data.loader import ShardLoader  # noqa: E402
from bigan.data.shards import pack, read_index  # noqa: E402
from bigan.data.sources import read_image_folder, square_resize  # noqa: E402

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-224" / "val"


def packed_shards(cache: Path) -> Path:
    """Pack the source once; reuse the cache while its index says the same source."""
    out = cache / "imagenette-224-jpg95"
    try:
        index = read_index(out)
        if (index["source"]["path"] == str(SOURCE) and index["resolution"] == 224
                and "copied_as_is" in index["source"]):
            return out
    except ValueError:
        pass
    print(f"packing {SOURCE} -> {out} (once)", flush=True)
    pack(SOURCE, out, 224, fmt="jpg", quality=95, shard_size_bytes=16 << 20, workers=2,
         progress=True)
    return out


def loader_keys(out: Path, n: int, batch: int) -> list[str]:
    """Keys of the `n` images a fresh loader delivers after its first batch (what we time)."""
    it = iter(ShardLoader(out, batch_per_worker=batch, resolution=8, num_workers=0,
                          shuffle_buffer=256, dtype="uint8"))
    next(it)
    keys: list[str] = []
    while len(keys) < n:
        keys += next(it)["key"]
    return keys[:n]


def same_images(out: Path, keys: list[str]) -> tuple[list[str], list[bytes]]:
    """The source files and the packed bytes of those keys (key i is input permutation[i])."""
    index = read_index(out)
    files = read_image_folder(SOURCE).files
    order = np.random.default_rng(index["source"]["seed"]).permutation(len(files))
    blobs: dict[str, bytes] = {}
    wanted = set(keys)
    for shard in index["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                if ext == "jpg" and key in wanted:
                    blobs[key] = tar.extractfile(m).read()
    return [files[order[int(k)]] for k in keys], [blobs[k] for k in keys]


def pil_loop(items: list, resolution: int) -> float:
    """Seconds for open -> RGB -> resize -> uint8 array over `items` (paths or bytes)."""
    t = time.perf_counter()
    for item in items:
        with Image.open(item if isinstance(item, str) else io.BytesIO(item)) as im:
            np.asarray(square_resize(im.convert("RGB"), resolution))
    return time.perf_counter() - t


def loader_run(out: Path | str, resolution: int, n: int, batch: int, dtype: str) -> float:
    """Seconds for `n` images of ShardLoader batches on one core (first batch excluded)."""
    loader = ShardLoader(out, batch_per_worker=batch, resolution=resolution, num_workers=0,
                         flip=True, shuffle_buffer=256, dtype=dtype)
    it = iter(loader)
    next(it)  # the shuffle buffer fills once per shard; count steady state like the PIL loop
    t, got = time.perf_counter(), 0
    while got < n:
        got += len(next(it)["label"])
    return (time.perf_counter() - t) * n / got


def consumption(rows: list[dict], quick: bool) -> list[dict]:
    """Trainer real-image intake of the BigGAN 64/128 px configs vs one loader core (uint8)."""
    from train_step import DEVICE, bench_case  # bench/ is on sys.path when run as a script

    torch.set_num_threads(os.cpu_count() or 1)  # the trainer gets the whole machine
    out = []
    for name, res in (("biggan-64", 64), ("biggan-128", 128)):
        batch = (64 if res == 64 else 32) if DEVICE.type == "cuda" else (4 if res == 64 else 2)
        step = bench_case(name, "fp32", batch, iters=1 if quick else 3)
        per_core = next(r["loader_img_per_s"] for r in rows
                        if r["resolution"] == res and r["output"] == "uint8")
        out.append({"config": name, "device": DEVICE.type, "batch": batch,
                    "d_steps": step["d_steps"], "trainer_real_img_per_s": round(step["real_img_per_sec"], 2),
                    "loader_img_per_s_per_core": per_core,
                    "ratio": round(per_core / step["real_img_per_sec"], 1)})
    torch.set_num_threads(1)
    return out


def streaming(shards: Path, quick: bool, repeats: int | None, out_dir: Path) -> None:
    """Loader images/s from local files vs a loopback S3 bucket vs loopback HTTP, same shards."""
    import fsspec

    from tests.object_store import FlakyFiles, http_server, s3_server

    n, rounds = (256, repeats or 3) if quick else (1024, repeats or 6)
    batch, sides = 64, ("local", "s3", "http")
    rows = []
    with s3_server("bigan-bench") as endpoint, http_server(FlakyFiles(shards)) as http:
        fs = fsspec.filesystem("s3")
        for f in sorted(shards.iterdir()):
            if f.suffix in (".tar", ".json"):
                fs.put_file(str(f), f"bigan-bench/imagenette/{f.name}")
        where = {"local": str(shards), "s3": "s3://bigan-bench/imagenette", "http": http}
        for res in (64, 224):
            times: dict[str, list[float]] = {k: [] for k in sides}
            for r in range(rounds):  # rotated order: the shared machine's drift hits all sides
                for side in sides[r % 3:] + sides[:r % 3]:
                    times[side].append(loader_run(where[side], res, n, batch, "uint8"))
            for side in sides:
                ratio = np.median(np.array(times["local"]) / np.array(times[side]))
                rows.append({"resolution": res, "side": side, "images": n, "rounds": rounds,
                             "img_per_s": round(n / min(times[side]), 1),
                             "ratio_vs_local": round(float(ratio), 3)})
    print(f"\nstreamed vs local shards, loader uint8 on one core, {n} images x {rounds} rounds "
          "(best images/s, median ratio per round)")
    head = f"{'res':>5} {'source':>7} {'img/s':>8} {'vs local':>9}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['resolution']:>5} {r['side']:>7} {r['img_per_s']:>8.0f} "
              f"{r['ratio_vs_local']:>8.2f}x")
    result = {"bench": "data_loader_streaming", "quick": quick, "packed": str(shards),
              "shards": len(read_index(shards)["shards"]),
              "bytes": sum(s["bytes"] for s in read_index(shards)["shards"]),
              "s3": f"moto ThreadedMotoServer at {endpoint} (loopback)", "rows": rows,
              "machine": {"python": platform.python_version(), "cores_visible": os.cpu_count()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "data_loader_streaming.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out_dir / 'data_loader_streaming.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats (< 1 min)")
    parser.add_argument("--out", default="bench/results", help="directory for data_loader.json")
    parser.add_argument("--cache", default=None, help="where packed shards are kept "
                                                      "(default OUT/cache)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="paired timing rounds (default 4 quick, 10 full; streaming 3 / 6)")
    parser.add_argument("--part", choices=("all", "decode", "streaming"), default="all",
                        help="decode: loader vs PIL and vs the trainer; streaming: local files vs "
                             "a loopback bucket and HTTP server (default all)")
    args = parser.parse_args()
    if not SOURCE.is_dir():
        sys.exit(f"{SOURCE} not found: this benchmark needs the shared Imagenette copy")
    torch.set_num_threads(1)
    out_dir = Path(args.out)
    shards = packed_shards(Path(args.cache) if args.cache else out_dir / "cache")
    if args.part in ("all", "streaming"):
        streaming(shards, args.quick, args.repeats, out_dir)
    if args.part == "streaming":
        return
    n, rounds = (256, args.repeats or 4) if args.quick else (1024, args.repeats or 10)
    batch = 64
    keys = loader_keys(shards, n, batch)
    files, blobs = same_images(shards, keys)
    for item in files[:32] + blobs[:32]:  # warm the page cache and Pillow
        pil_loop([item], 64)

    sides = ("pil-files", "pil-packed", "float32", "uint8")
    rows = []
    for res in (64, 128, 224):
        times: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(rounds):  # paired rounds, order rotated: drift hits every side alike
            for side in sides[r % 4:] + sides[:r % 4]:
                if side == "pil-files":
                    times[side].append(pil_loop(files, res))
                elif side == "pil-packed":
                    times[side].append(pil_loop(blobs, res))
                else:
                    times[side].append(loader_run(shards, res, n, batch, side))
        best = {k: n / min(v) for k, v in times.items()}
        for dtype in ("float32", "uint8"):
            vs_files = np.median(np.array(times["pil-files"]) / np.array(times[dtype]))
            vs_packed = np.median(np.array(times["pil-packed"]) / np.array(times[dtype]))
            rows.append({"resolution": res, "output": dtype, "images": n, "rounds": rounds,
                         "loader_img_per_s": round(best[dtype], 1),
                         "pil_files_img_per_s": round(best["pil-files"], 1),
                         "pil_packed_img_per_s": round(best["pil-packed"], 1),
                         "ratio_vs_files": round(float(vs_files), 3),
                         "ratio_vs_packed": round(float(vs_packed), 3)})

    print(f"\nper core (1 process, OMP_NUM_THREADS=1), {n} images x {rounds} paired rounds: "
          "best images/s, median ratio per round")
    head = (f"{'res':>5} {'output':>8} {'loader':>8} {'pil-files':>10} {'pil-packed':>11} "
            f"{'vs files':>9} {'vs packed':>10}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['resolution']:>5} {r['output']:>8} {r['loader_img_per_s']:>8.0f} "
              f"{r['pil_files_img_per_s']:>10.0f} {r['pil_packed_img_per_s']:>11.0f} "
              f"{r['ratio_vs_files']:>8.2f}x {r['ratio_vs_packed']:>9.2f}x")
    feed_rows = consumption(rows, args.quick)
    print(f"\ntrainer consumption vs one loader core (uint8), device {feed_rows[0]['device']}")
    head = (f"{'config':>11} {'batch':>6} {'trainer real img/s':>19} {'loader img/s/core':>18} "
            f"{'ratio':>8}")
    print(head + "\n" + "-" * len(head))
    for r in feed_rows:
        print(f"{r['config']:>11} {r['batch']:>6} {r['trainer_real_img_per_s']:>19.1f} "
              f"{r['loader_img_per_s_per_core']:>18.0f} {r['ratio']:>7.1f}x")
    result = {"bench": "data_loader", "quick": args.quick, "source": str(SOURCE),
              "packed": {"path": str(shards), "format": "jpg", "quality": 95, "resolution": 224},
              "goal": "loader >= 0.9x pil-files; loader core >= 5x trainer consumption",
              "rows": rows, "consumption": feed_rows,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu": platform.processor() or platform.machine(),
                          "cores_visible": os.cpu_count()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "data_loader.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out_dir / 'data_loader.json'}")


if __name__ == "__main__":
    main()
