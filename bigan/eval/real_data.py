"""Real images for evaluation: a deterministic read of packed shards and a per-data-set cache of
their features.

`read_shard_images` takes the first N usable samples in shard-index then tar order (the packer
already shuffled the whole set across shards, so any prefix mixes the classes), decoded and
resized exactly as the training loader does (`bigan.data.loader.decode_image`). Features of real
images cost the most to compute (Inception runs at a few images/s on a CPU), so
`cached_real_features` keeps them in `<cache>/<key>.npz`, keyed by the sha256 of the shards'
`dataset.json` (which holds every shard's sha256), the extractor's identity, the resolution,
the offset and N: a re-packed data set or another extractor never reuses stale numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from bigan.data.locations import ShardLocation, read_bytes, reader
from bigan.data.retrying import RetryPolicy
from bigan.data.shards import read_index


def dataset_sha256(path: str | Path) -> str:
    """sha256 of the shards' dataset.json (a local file or a URL): it names every shard with
    its own sha256."""
    return hashlib.sha256(read_bytes(ShardLocation.parse(path).index_url)).hexdigest()


def read_shard_images(path: str | Path, n: int, resolution: int, skip: int = 0,
                      progress: Callable[[int], None] | None = None,
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 [n', R, R, 3] images, int64 [n'] labels, class names) of samples skip..skip+n-1
    in shard order; n' < n only when the set is smaller. Undecodable samples are left out."""
    from bigan.data.loader import IMAGE_KEYS, decode_image
    from bigan.data.tar_samples import TarStatus, tar_samples

    index = read_index(path)
    where = ShardLocation.parse(path)
    num_classes = len(index["class_names"])
    images, labels, seen = [], [], 0
    for shard in index["shards"]:
        url = where.url(shard["name"])
        stream = reader(url, RetryPolicy(), shard["bytes"]) if where.kind != "local" else None
        for sample in tar_samples(stream or url, TarStatus(), any_of=IMAGE_KEYS):
            if len(images) >= n:
                break
            try:
                label = int(sample["cls"].decode("ascii").strip())
            except (KeyError, UnicodeDecodeError, ValueError, AttributeError):
                continue
            data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
            if data is None or not 0 <= label < num_classes:
                continue
            image, cause = decode_image(data, resolution)
            if cause is not None:
                continue
            seen += 1
            if seen <= skip:
                continue
            images.append(image)
            labels.append(label)
            if progress is not None:
                progress(1)
        if stream is not None:
            stream.close()
        if len(images) >= n:
            break
    if not images:
        return (np.zeros((0, resolution, resolution, 3), np.uint8), np.zeros(0, np.int64),
                list(index["class_names"]))
    return np.stack(images), np.asarray(labels, np.int64), list(index["class_names"])


def cache_root() -> Path:
    """Where every evaluation cache lives: $BIGAN_CACHE_DIR, else $XDG_CACHE_HOME/bigan, else
    ~/.cache/bigan (one root, so one variable moves them all: the tests point it at a tmp dir)."""
    if os.environ.get("BIGAN_CACHE_DIR"):
        return Path(os.environ["BIGAN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bigan"


def default_cache_dir() -> Path:
    """The real-feature cache: cache_root()/real-features."""
    return cache_root() / "real-features"


def cached_real_features(path: str | Path, extractor, n: int, cache_dir: str | Path | None = None,
                         skip: int = 0, log: Callable[[str], None] = print) -> dict:
    """Features of the real images skip..skip+n-1 under `extractor`, from the cache or computed.

    Returns {"features" [n, D], "logits" [n, C] or None, "labels" [n], "n", "key", "cached"}.
    """
    from tqdm.auto import tqdm

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key_parts = {"dataset_sha256": dataset_sha256(path), "extractor": extractor.identity,
                 "n": n, "skip": skip}
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    file = cache / f"{extractor.name}-n{n}-{key}.npz"
    if file.is_file():
        with np.load(file) as z:
            logits = z["logits"] if z["logits"].size else None
            return {"features": z["features"], "logits": logits, "labels": z["labels"],
                    "n": int(len(z["features"])), "key": key_parts, "cached": str(file)}
    index = read_index(path)
    resolution = int(index["resolution"])
    log(f"real features: {n} images of {path} through {extractor.name} (cached afterwards in {cache})")
    with tqdm(total=n, desc="read real", unit="img", leave=False) as bar:
        images, labels, _ = read_shard_images(path, n, resolution, skip, bar.update)
    features, logits = extractor.extract(images, desc=f"{extractor.name} real")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + f".tmp-{os.getpid()}.npz")
    np.savez(tmp, features=features, labels=labels,
             logits=logits if logits is not None else np.zeros(0, np.float32),
             key=json.dumps(key_parts))
    tmp.replace(file)
    return {"features": features, "logits": logits, "labels": labels, "n": len(features),
            "key": key_parts, "cached": None}
