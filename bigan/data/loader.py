"""Streaming training batches from packed shards, with an order keyed by position (elastic resume).

The data order is a pure function of (seed, epoch, shard, position), never of the world size:

- Epoch e visits the shards in the permutation `epoch_shard_order(seed, e)`.
- Inside a shard, samples come out of a shuffle buffer (`shuffle_buffer` samples) seeded by
  (seed, e, shard) and reset for every shard; a sample's *offset* is its place in that order.
  Bad samples keep their offset (they are skipped and counted), so offsets never move.
- A job runs S = world_size x num_workers streams; stream s = rank * num_workers + worker.
  The epoch's *remaining work* is its shard order minus the shards already consumed in full;
  stream s reads remaining shard i when i + e = s (mod S) (the rotation by e spreads the extra
  shards of an uneven split over the streams), each starting after its consumed prefix.
  Streams never share a shard, so what a stream delivers of a shard is a prefix of its order.
- A stream goes on to epoch e + 1 when its share of epoch e is done: the stream is infinite
  and every rank always gets batches. Streams may be in different epochs at the same time.
- Fewer shards than streams: the loader lowers `num_workers` to shards // world_size (the
  order does not depend on it) and raises `DataError` when there are fewer shards than ranks.

Resume: `LoaderPosition` records, per epoch and shard, the length of the consumed prefix of the
shard's order. Each batch carries `progress` rows (epoch, shard, end) meaning "with this batch,
positions < end of that shard are delivered or skipped"; the trainer calls `position.update(batch)`
for each batch it trains on, gathers ranks with `merge`, and checkpoints `to_dict()`. A loader
built with that position skips shards consumed in full, re-reads partly consumed ones while
skipping (without decoding) their prefix, and re-splits the remaining work over its own S
streams. Guarantee: over an epoch interrupted by any number of checkpoints/resumes onto any world
sizes and worker counts, every sample position is delivered exactly once (batches prefetched but
not consumed at the checkpoint are delivered after the resume). Skip counts ride on the batches
too, so the totals a trainer adds up from the batches it consumed are exact across resumes.

Every batch is a dict: `image` [B, 3, R, R] (float32 in [-1, 1]; or, with dtype="uint8", 0..255
in channels_last memory, to normalize on the accelerator), `label` int64 [B], `epoch`, `shard`,
`offset` int64 [B], `key` list[str], `progress` int64 [M, 3], `skipped` {cause: count} of
what its stream skipped since its previous batch (see `SKIP_CAUSES`), and, likewise, `io`
{name: count} (see `IO_COUNTS`) and `unreadable_shards` (the URLs given up). Shards are read by
`bigan.data.tar_samples`, local files directly, shards at URLs through
`bigan.data.retrying.RetryingReader` (streamed, retried with backoff), and decoded and batched
by `bigan.data.decode`; the stages run in a
webdataset `DataPipeline` per stream. A shard that fails for good ends like a cut one: its
unread samples are skipped (as `unreadable_shard`), so the position stays exactly-once.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bigan.config import UNREADABLE_SHARD_ACTIONS
from bigan.data.locations import ShardLocation, reader
from bigan.data.position import LoaderPosition, SkipCounter
from bigan.data.retrying import RetryPolicy
from bigan.data.shards import DataError, missing_shards, read_index, verify_shards
from bigan.data.decode import IMAGE_KEYS, collate, decode_image, decode_samples, flip_coin
from bigan.data.tar_samples import TarStatus, tar_samples

__all__ = ["ShardLoader", "LoaderPosition", "SkipCounter", "SKIP_CAUSES", "IO_COUNTS", "IMAGE_KEYS",
           "decode_image", "flip_coin", "epoch_shard_order",
           "stream_work", "DataError"]

log = logging.getLogger(__name__)

SKIP_CAUSES = (
    "corrupt_image",  # image bytes with a known signature that do not decode
    "truncated_image",  # image bytes that end early
    "not_image",  # payload Pillow cannot identify (text, garbage)
    "missing_image",  # sample without an image member
    "missing_label",  # sample without a `cls` member
    "bad_label",  # `cls` is not an ASCII integer
    "label_out_of_range",  # `cls` outside 0 .. len(class_names) - 1
    "truncated_shard",  # samples dataset.json lists that the tar file did not yield (cut, gone)
    "unreadable_shard",  # samples of a streamed shard that failed to read after its retries
)
IO_COUNTS = (
    "retried_reads",  # reads of a shard at a URL that failed and were retried (after a backoff)
    "unreadable_shards",  # shards given up after their retries (named in the log and the batch)
)


def epoch_shard_order(seed: int, epoch: int, num_shards: int) -> np.ndarray:
    """The permutation of shard indices visited in `epoch`."""
    return np.random.default_rng([seed, epoch]).permutation(num_shards)


def stream_work(epoch: int, sizes: list[int], consumed: dict[int, int], seed: int, stream: int,
                num_streams: int) -> list[tuple[int, int]]:
    """(shard, first offset) pairs stream `stream` of `num_streams` reads in `epoch`, in order."""
    order = epoch_shard_order(seed, epoch, len(sizes))
    remaining = [(int(k), consumed.get(int(k), 0)) for k in order
                 if consumed.get(int(k), 0) < sizes[k]]
    return [w for i, w in enumerate(remaining) if (i + epoch) % num_streams == stream]


def shard_sample_order(samples: Iterator, buffer: int, rng: random.Random) -> Iterator:
    """Buffered shuffle: once `buffer` samples are held, each new one replaces a random held one,
    which is emitted; the rest drain in random order. Ours, not webdataset's `shuffle`, because
    this order is part of the checkpoint contract and must not change with a library upgrade."""
    if buffer <= 1:  # no shuffle: tar order
        yield from samples
        return
    held: list = []
    for sample in samples:
        if len(held) < buffer:
            held.append(sample)
            continue
        k = rng.randrange(buffer)
        yield held[k]
        held[k] = sample
    rng.shuffle(held)
    yield from held


@dataclass
class _Plan:
    """Everything a worker needs, pickled into each DataLoader worker."""

    paths: list[str]
    sizes: list[int]
    seed: int
    shuffle_buffer: int
    rank: int
    world_size: int
    resolution: int
    batch_per_worker: int
    num_classes: int
    unconditional: bool
    flip: bool
    dtype: str
    start_epoch: int
    consumed: dict[int, dict[int, int]]
    bytes: list[int] | None = None  # each shard's size (dataset.json): no HEAD request per shard
    streamed: bool = False  # shards at URLs / pipe: read through RetryingReader
    retry: RetryPolicy = RetryPolicy()
    on_unreadable_shard: str = "skip"  # skip | stop


class _StreamShards(IterableDataset):
    """Pipeline source: this stream's shard tasks, epoch after epoch, forever."""

    def __init__(self, plan: _Plan):
        self.plan = plan

    def __iter__(self) -> Iterator[dict]:
        p, info = self.plan, get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream, streams = p.rank * workers + worker, p.world_size * workers
        for epoch in itertools.count(p.start_epoch):
            consumed = p.consumed.get(epoch, {})
            for shard, start in stream_work(epoch, p.sizes, consumed, p.seed, stream, streams):
                yield {"path": p.paths[shard], "epoch": epoch, "shard": shard, "start": start,
                       "size": p.sizes[shard]}


def _read_shards(tasks: Iterator[dict], plan: _Plan) -> Iterator[dict]:
    """Shard tasks -> samples in each shard's keyed order (from the task's start offset), then a
    `__done__` event per shard. Damage ends the shard; what it lacks counts as truncated (or as
    unreadable: a streamed shard that kept failing). Streamed shards also yield `__io__` events
    (retries so far, a shard given up) as they happen."""
    for task in tasks:
        epoch, shard = task["epoch"], task["shard"]
        status = TarStatus()
        stream = reader(task["path"], plan.retry, plan.bytes[shard]) if plan.streamed else None
        samples = tar_samples(stream or task["path"], status, any_of=IMAGE_KEYS)
        rng = random.Random(f"bigan/{plan.seed}/{epoch}/{shard}")
        read = retried = 0
        try:
            for offset, sample in enumerate(shard_sample_order(samples, plan.shuffle_buffer, rng)):
                read = offset + 1
                if stream is not None and stream.retried > retried:
                    yield {"__io__": {"retried_reads": stream.retried - retried}}
                    retried = stream.retried
                if offset >= task["start"]:
                    sample["__pos__"] = (epoch, shard, offset)
                    yield sample
        finally:
            if stream is not None:
                stream.close()
        if stream is not None and stream.retried > retried:
            yield {"__io__": {"retried_reads": stream.retried - retried}}
        missing = max(0, task["size"] - read)
        if status.unreadable:
            if plan.on_unreadable_shard == "stop":
                raise DataError(f"{status.error} (after {read} of {task['size']} samples; "
                                "data.on_unreadable_shard=stop)")
            log.warning("skipping the rest of shard %s: %s (%d of %d samples read; "
                        "data.on_unreadable_shard=skip)", task["path"], status.error, read,
                        task["size"])
            yield {"__io__": {"unreadable_shards": 1}, "__unreadable__": task["path"]}
        elif status.error:
            log.warning("%s: %s after %d of %d samples", task["path"], status.error, read,
                        task["size"])
        yield {"__done__": (epoch, shard, max(read, task["size"])), "__missing__": missing,
               "__cause__": "unreadable_shard" if status.unreadable else "truncated_shard"}


def _batch_samples(events: Iterator[dict], plan: _Plan) -> Iterator[dict]:
    """Samples -> batches of `batch_per_worker`, each with its progress rows and skip counts."""
    rows: list[dict] = []
    progress: dict[tuple[int, int], int] = {}
    skipped: Counter = Counter()
    io: Counter = Counter()
    unreadable: list[str] = []
    dry_epochs: set[int] = set()  # epochs read since the last good sample: a dead stream hangs
    for event in events:
        if "__io__" in event:
            io.update(event["__io__"])
            if "__unreadable__" in event:
                unreadable.append(event["__unreadable__"])
            continue
        if "__done__" in event:
            epoch, shard, end = event["__done__"]
            progress[epoch, shard] = max(progress.get((epoch, shard), 0), end)
            skipped[event["__cause__"]] += event["__missing__"]
            dry_epochs.add(epoch)
            if len(dry_epochs) > 2:
                raise DataError(f"a data stream read its shards for {len(dry_epochs)} epochs "
                                f"without one usable sample (skipped: {dict(skipped)}); check "
                                "them with `bigan data inspect`")
            continue
        epoch, shard, offset = event["__pos__"]
        progress[epoch, shard] = max(progress.get((epoch, shard), 0), offset + 1)
        if "__skip__" in event:
            skipped[event["__skip__"]] += 1
            continue
        dry_epochs.clear()
        rows.append(event)
        if len(rows) == plan.batch_per_worker:
            batch = collate(rows, progress, skipped, plan.dtype)
            batch["io"], batch["unreadable_shards"] = dict(io), unreadable
            yield batch
            rows, progress, skipped, io, unreadable = [], {}, Counter(), Counter(), []


read_shards = wds.pipelinefilter(_read_shards)
batch_samples = wds.pipelinefilter(_batch_samples)


class ShardLoader:
    """Infinite iterable of one rank's training batches from a packed shard directory.

    path: shard directory (or its dataset.json), URL, brace pattern or `pipe:` command (see
    `bigan.data.locations`; local directories take the fast path, without retries).
    batch_per_worker: samples per batch; a batch
    comes from one stream (one worker of this rank). resolution: output side in px (resampled
    on the fly, any size). rank / world_size: this process among the data-parallel ranks.
    num_workers: DataLoader worker processes (0 = in this process), lowered to
    shards // world_size if needed. seed: data-order and flip seed. shuffle_buffer: in-shard
    shuffle buffer (0 = tar order). flip: random horizontal flips keyed by position.
    position: `LoaderPosition.to_dict()` from a checkpoint. num_classes: the model's class count,
    checked against the pack (1 = unconditional: labels become 0). verify: check every shard's
    SHA-256 first. dtype: "float32" ([-1, 1]) or "uint8" (0..255, channels_last).
    retry: retries and backoff of streamed reads. on_unreadable_shard: "skip" (count the rest of
    a shard that keeps failing as `unreadable_shard`, name it, go on) or "stop" (DataError).

    Each `iter()` starts from `self.position` as it is then, so update it from every batch you
    train on. To change resolution (progressive growing), build a new loader with
    `position=old.position.to_dict()`.
    """

    def __init__(self, path: str | Path, batch_per_worker: int, resolution: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 2, seed: int = 0,
                 shuffle_buffer: int = 1000, flip: bool = False, position: dict | None = None,
                 num_classes: int | None = None, verify: bool = False, dtype: str = "float32",
                 prefetch_factor: int = 2, pin_memory: bool = False,
                 retry: RetryPolicy = RetryPolicy(), on_unreadable_shard: str = "skip"):
        if on_unreadable_shard not in UNREADABLE_SHARD_ACTIONS:
            raise DataError(f"on_unreadable_shard={on_unreadable_shard!r} is invalid: use one of "
                            f"{', '.join(UNREADABLE_SHARD_ACTIONS)}")
        index = read_index(path, retry)
        self.location = ShardLocation.parse(path)
        self.path = self.location.root  # for messages
        self.index = index
        missing = missing_shards(path, index)
        if missing:
            raise DataError(f"{missing[0]}: shard listed in dataset.json is missing "
                            f"({len(missing)} of {len(index['shards'])} missing); re-pack or "
                            "restore it")
        for name, value, low in (("batch_per_worker", batch_per_worker, 1),
                                 ("resolution", resolution, 1), ("world_size", world_size, 1),
                                 ("num_workers", num_workers, 0),
                                 ("shuffle_buffer", shuffle_buffer, 0)):
            if value < low:
                raise DataError(f"{name}={value} is invalid: must be >= {low}")
        if dtype not in ("float32", "uint8"):
            raise DataError(f"dtype={dtype!r} is invalid: use 'float32' or 'uint8'")
        if not 0 <= rank < world_size:
            raise DataError(f"rank={rank} is invalid: must be in 0..{world_size - 1}")
        names = index["class_names"]
        if num_classes is not None and num_classes not in (len(names), 1):
            raise DataError(f"model.num_classes={num_classes} but {self.path} holds "
                            f"{len(names)} classes: set model.num_classes={len(names)} "
                            "(or 1 for unconditional training)")
        sizes = [int(s["num_samples"]) for s in index["shards"]]
        usable = sum(1 for n in sizes if n > 0)
        if usable < world_size:
            raise DataError(f"{self.path} has {usable} non-empty shards but world_size="
                            f"{world_size}: every rank needs one; re-pack with --min-shards "
                            f"{world_size} or more")
        self.num_workers = min(num_workers, usable // world_size)
        if self.num_workers < num_workers:
            log.warning("%s: %d shards for %d ranks: using %d loader workers per rank, not %d "
                        "(the data order does not change)", self.path, usable, world_size,
                        self.num_workers, num_workers)
        if resolution > index["resolution"]:
            log.warning("%s was packed at %d px; upsampling to %d px", self.path,
                        index["resolution"], resolution)
        if verify:
            problems = verify_shards(path, retry)
            if problems:
                raise DataError(problems[0] + (f" (and {len(problems) - 1} more problems)"
                                               if len(problems) > 1 else ""))
        if position is None:
            self.position = LoaderPosition(sizes, seed, shuffle_buffer)
        else:
            self.position = LoaderPosition.from_dict(position)
            self.position.check_matches(sizes, seed, shuffle_buffer, str(self.path))
        self.batch_per_worker, self.resolution, self.flip = batch_per_worker, resolution, flip
        self.rank, self.world_size, self.seed, self.dtype = rank, world_size, seed, dtype
        self.shuffle_buffer, self.num_classes = shuffle_buffer, len(names)
        self.unconditional = num_classes == 1 and len(names) != 1
        self.prefetch_factor, self.pin_memory = prefetch_factor, pin_memory
        self.retry, self.on_unreadable_shard = retry, on_unreadable_shard
        self._paths = [self.location.url(s["name"]) for s in index["shards"]]

    @property
    def class_names(self) -> list[str]:
        return list(self.index["class_names"])

    @property
    def num_samples(self) -> int:
        return int(self.index["num_samples"])

    @property
    def num_streams(self) -> int:
        return self.world_size * max(1, self.num_workers)

    def pipeline(self) -> wds.DataPipeline:
        """The webdataset pipeline one stream runs, starting at the current position."""
        pos = self.position
        plan = _Plan(self._paths, pos.shard_sizes, self.seed, self.shuffle_buffer, self.rank,
                     self.world_size, self.resolution, self.batch_per_worker, self.num_classes,
                     self.unconditional, self.flip, self.dtype, pos.complete_epochs,
                     {e: dict(s) for e, s in pos.epochs.items()},
                     [int(s["bytes"]) for s in self.index["shards"]], self.location.kind != "local", self.retry, self.on_unreadable_shard)
        return wds.DataPipeline(_StreamShards(plan), read_shards(plan), wds.pipelinefilter(decode_samples)(plan),
                                batch_samples(plan))

    def __iter__(self) -> Iterator[dict]:
        if self.num_workers == 0:
            return iter(self.pipeline())
        loader = DataLoader(self.pipeline(), batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=self.prefetch_factor, pin_memory=self.pin_memory)
        return iter(loader)
