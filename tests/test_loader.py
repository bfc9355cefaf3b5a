"""The streaming shard loader (bigan/data/loader.py, position.py): exactly-once epochs across
ranks and workers, elastic resume, keyed order and flips, bad data skipped and counted, and
clear errors for bad inputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bigan.data.feed import model_images
from bigan.data.loader import ShardLoader, shard_sample_order, stream_work
from bigan.data.position import LoaderPosition, SkipCounter
from bigan.data.shards import DataError, make_synthetic
from tests.helpers import png_bytes, write_pack

pytestmark = pytest.mark.unit

N, SHARDS = 96, 8  # 8 shards of 12 samples, 8 px, 4 classes


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "synth"
    make_synthetic(out, classes=4, resolution=8, n=N, seed=0, min_shards=SHARDS)
    return out


def loaders(path, world_size, workers, position=None, **kw):
    kw = {"batch_per_worker": 4, "resolution": 8, "shuffle_buffer": 5, "seed": 3, **kw}
    return [ShardLoader(path, rank=r, world_size=world_size, num_workers=workers,
                        position=position, **kw) for r in range(world_size)]


def run_until_done(loader: ShardLoader, epoch: int = 0, limit: int = 500) -> list[dict]:
    """One rank's batches until each of its streams has moved past `epoch`.

    A DataLoader hands out its workers' batches round-robin, so the last W batches come from the
    W streams: when none of them holds a sample of `epoch` or earlier, the rank is done with it.
    """
    width, batches = max(1, loader.num_workers), []
    it = iter(loader)
    for _ in range(limit):
        batches.append(next(it))
        if len(batches) >= width and all(int(b["epoch"].min()) > epoch for b in batches[-width:]):
            return batches
    raise AssertionError("the epoch did not finish")


def take(loader: ShardLoader, n: int) -> list[dict]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def positions(batches: list[dict], epoch: int = 0) -> list[tuple[int, int]]:
    return [(int(s), int(o)) for b in batches
            for e, s, o in zip(b["epoch"], b["shard"], b["offset"]) if int(e) == epoch]


def full_epoch() -> list[tuple[int, int]]:
    return sorted((s, o) for s in range(SHARDS) for o in range(N // SHARDS))


def test_batches_have_the_documented_shapes_and_ranges(packed):
    (loader,) = loaders(packed, 1, 0, resolution=4)
    batch = take(loader, 1)[0]
    assert batch["image"].shape == (4, 3, 4, 4) and batch["image"].dtype == torch.float32
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    for name in ("label", "epoch", "shard", "offset", "progress"):
        assert batch[name].dtype == torch.int64
    assert batch["label"].max() < 4 and batch["skipped"] == {} and len(batch["key"]) == 4
    assert loader.class_names == ["disc-0", "square-1", "triangle-2", "ring-3"]


def test_two_ranks_two_workers_see_every_sample_exactly_once(packed):
    seen, keys, merged = [], [], None
    for loader in loaders(packed, world_size=2, workers=2):
        batches = run_until_done(loader)
        seen += positions(batches)
        keys += [k for b in batches for k, e in zip(b["key"], b["epoch"]) if int(e) == 0]
        for b in batches:
            loader.position.update(b)
        merged = loader.position if merged is None else merged.merge(loader.position)
    assert sorted(seen) == full_epoch()
    assert sorted(keys) == [f"{i:08d}" for i in range(N)]
    assert merged.complete_epochs >= 1 and 0 not in merged.epochs


def test_in_shard_order_does_not_depend_on_world_size(packed):
    def key_at(world, workers):
        out = {}
        for loader in loaders(packed, world, workers):
            for b in run_until_done(loader):
                for e, s, o, k in zip(b["epoch"], b["shard"], b["offset"], b["key"]):
                    out[int(e), int(s), int(o)] = k
        return {p: k for p, k in out.items() if p[0] == 0}

    single = key_at(1, 0)
    assert single == key_at(2, 2) and len(single) == N
    order_of_shard0 = [single[0, 0, o] for o in range(12)]
    assert order_of_shard0 != sorted(order_of_shard0)  # shuffled within the shard


@pytest.mark.parametrize("before, after", [((2, 1), (1, 1)), ((1, 0), (2, 1)), ((1, 1), (1, 2)),
                                           ((2, 2), (1, 0))])
def test_resume_onto_another_world_size_covers_the_epoch_exactly_once(packed, before, after):
    consumed, rank_positions = [], []
    for loader in loaders(packed, *before):
        batches = take(loader, 3)  # 12 samples per rank; later prefetched batches are dropped
        for b in batches:
            loader.position.update(b)
        consumed += positions(batches)
        rank_positions.append(loader.position)
    merged = rank_positions[0]
    for p in rank_positions[1:]:
        merged = merged.merge(p)
    assert merged.consumed == len(consumed)
    saved = json.loads(json.dumps(merged.to_dict()))  # it goes through a JSON manifest
    resumed = []
    for loader in loaders(packed, *after, position=saved):
        resumed += positions(run_until_done(loader))
    assert not set(consumed) & set(resumed)
    assert sorted(consumed + resumed) == full_epoch()


def test_resume_twice_and_the_stream_goes_on_across_epochs(packed):
    (first,) = loaders(packed, 1, 0)
    seen = []
    for b in take(first, 5):
        first.position.update(b)
        seen.append(b)
    (second,) = loaders(packed, 1, 0, position=first.position.to_dict())
    for b in take(second, 7):
        second.position.update(b)
        seen.append(b)
    (third,) = loaders(packed, 1, 0, position=second.position.to_dict())
    seen += take(third, 30)  # 42 batches of 4 = 168 samples: epoch 0 and most of epoch 1
    assert sorted(positions(seen, 0)) == full_epoch()
    assert len(set(positions(seen, 1))) == len(positions(seen, 1)) > 48


def test_flips_are_keyed_by_position(packed):
    plain = {(int(s), int(o)): x for b in take(loaders(packed, 1, 0)[0], 24)
             for s, o, x in zip(b["shard"], b["offset"], b["image"])}
    flipped = {}
    for loader in loaders(packed, 2, 1, flip=True):
        for b in run_until_done(loader):
            for e, s, o, x in zip(b["epoch"], b["shard"], b["offset"], b["image"]):
                if int(e) == 0:
                    flipped[int(s), int(o)] = x
    n_flipped = 0
    for pos, x in plain.items():
        same, mirrored = torch.equal(flipped[pos], x), torch.equal(flipped[pos], x.flip(-1))
        assert same or mirrored
        n_flipped += not same
    assert 0.25 * N < n_flipped < 0.75 * N


def test_uint8_output_matches_float_output(packed):
    (as_float,) = loaders(packed, 1, 0, flip=True)
    (as_uint8,) = loaders(packed, 1, 0, flip=True, dtype="uint8")
    x, y = take(as_float, 1)[0]["image"], take(as_uint8, 1)[0]["image"]
    assert y.dtype == torch.uint8 and y.shape == x.shape == (4, 3, 8, 8)
    assert y.is_contiguous(memory_format=torch.channels_last)  # NHWC memory, no host transpose
    torch.testing.assert_close(y.float() / 127.5 - 1, x)
    # the trainer's conversion of uint8 batches gives exactly the loader's float values
    converted = model_images(y)
    assert torch.equal(converted, x) and converted.is_contiguous()
    assert model_images(x) is x


def test_unconditional_mode_zeroes_labels(packed):
    (loader,) = loaders(packed, 1, 0, num_classes=1)
    assert take(loader, 1)[0]["label"].tolist() == [0, 0, 0, 0]


def test_fewer_shards_than_streams_lowers_workers(packed, caplog):
    loader = loaders(packed, 2, 8)[0]
    assert loader.num_workers == 4 and "using 4 loader workers" in caplog.text
    with pytest.raises(DataError, match="8 non-empty shards but world_size=9"):
        ShardLoader(packed, 4, 8, rank=0, world_size=9)


def test_stream_work_splits_remaining_shards_round_robin():
    sizes = [10] * 6
    parts = [stream_work(0, sizes, {}, 0, s, 4) for s in range(4)]
    assert sorted(k for p in parts for k, _ in p) == list(range(6))
    partial = {2: 10, 3: 4}  # shard 2 done, shard 3 consumed up to offset 4
    parts = [stream_work(0, sizes, partial, 0, s, 2) for s in range(2)]
    flat = dict(w for p in parts for w in p)
    assert 2 not in flat and flat[3] == 4 and len(flat) == 5


def test_shuffle_buffer_is_a_permutation():
    import random

    out = list(shard_sample_order(iter(range(50)), 8, random.Random(0)))
    assert sorted(out) == list(range(50)) and out != list(range(50))
    assert list(shard_sample_order(iter(range(5)), 0, random.Random(0))) == list(range(5))


def test_position_round_trip_merge_and_compaction():
    pos = LoaderPosition([3, 2], seed=1, shuffle_buffer=4)
    pos.update({"progress": torch.tensor([[0, 0, 3], [0, 1, 1]])})
    assert pos.complete_epochs == 0 and pos.consumed == 4
    other = LoaderPosition([3, 2], seed=1, shuffle_buffer=4)
    other.update({"progress": [[0, 1, 2], [1, 0, 2]]})
    merged = pos.merge(other)
    assert merged.complete_epochs == 1 and merged.epochs == {1: {0: 2}} and merged.consumed == 7
    assert LoaderPosition.from_dict(json.loads(json.dumps(merged.to_dict()))) == merged
    with pytest.raises(DataError, match="seed"):
        merged.merge(LoaderPosition([3, 2], seed=2, shuffle_buffer=4))


def test_skip_counter_accumulates():
    counter = SkipCounter()
    counter.add({"skipped": {"not_image": 2}})
    counter.add({"not_image": 1, "bad_label": 1})
    assert counter.to_dict() == {"bad_label": 1, "not_image": 3} and counter.total == 4
    assert str(counter) == "bad_label=1, not_image=3"


# --- bad data ------------------------------------------------------------------------------------

def _jpg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def bad_pack(tmp_path) -> Path:
    good = lambda i: (f"g{i:03d}", {"cls": str(i % 3).encode(), "png": png_bytes(10 * i)})  # noqa: E731
    jpg = _jpg(100)
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")
    noisy_jpg = buf.getvalue()
    shard0 = [good(0), good(1),
              ("corrupt", {"cls": b"1", "jpg": jpg[:20] + bytes(range(256)) * 2}),
              ("truncated", {"cls": b"1", "jpg": noisy_jpg[: len(noisy_jpg) // 2]}),
              ("text", {"cls": b"1", "jpg": b"this is not an image"}),
              ("nolabel", {"png": png_bytes(1)}),
              ("badlabel", {"cls": b"one", "png": png_bytes(2)}),
              ("range", {"cls": b"3", "png": png_bytes(3)}),
              ("noimage", {"cls": b"0"}),
              good(2)]
    shard1 = [good(i) for i in range(3, 8)]
    out = tmp_path / "bad"
    write_pack(out, [shard0, shard1])
    last = out / "shard-000001.tar"
    raw = last.read_bytes()
    cut = raw.rfind(b"g007.png") + 512 + 30  # inside the last sample's image data
    last.write_bytes(raw[:cut])
    return out


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_samples_are_skipped_and_counted_by_cause(bad_pack, workers):
    # Tar order inside shards (buffer 0): each shard starts with a good sample, so the skips of
    # epoch 0 all arrive with epoch-0 batches or the first epoch-1 batch, never later.
    loader = ShardLoader(bad_pack, batch_per_worker=1, resolution=8, num_workers=workers,
                         shuffle_buffer=0)
    counter, keys = SkipCounter(), []
    for batch in loader:
        counter.add(batch)
        loader.position.update(batch)
        if int(batch["epoch"][0]) > 0:
            break
        keys.append(batch["key"][0])
        value = int(keys[-1][1:]) * 10  # good sample i is a flat PNG of value 10 i
        torch.testing.assert_close(batch["image"], torch.full((1, 3, 8, 8), value / 127.5 - 1.0))
    assert sorted(keys) == [f"g{i:03d}" for i in range(7)]  # g007 was cut off with the tar
    assert counter.to_dict() == {
        "bad_label": 1, "corrupt_image": 1, "label_out_of_range": 1, "missing_image": 1,
        "missing_label": 1, "not_image": 1, "truncated_image": 1, "truncated_shard": 1}
    assert loader.position.complete_epochs == 1  # skips and truncation still finish the epoch


def test_bad_samples_keep_their_place_in_a_shuffled_order(bad_pack):
    (loader,) = [ShardLoader(bad_pack, 2, 8, num_workers=0, shuffle_buffer=4)]
    batches = run_until_done(loader)
    keys = [k for b in batches for k, e in zip(b["key"], b["epoch"]) if int(e) == 0]
    assert sorted(keys) == [f"g{i:03d}" for i in range(7)]
    offsets = sorted(o for s, o in positions(batches) if s == 0)
    assert len(offsets) == 3 and max(offsets) <= 9  # 10 positions in shard 0, 3 of them good


def test_stream_without_any_usable_sample_fails_loudly(tmp_path):
    write_pack(tmp_path / "junk", [[(f"j{i}", {"cls": b"0", "jpg": b"junk"}) for i in range(3)]])
    with pytest.raises(DataError, match="without one usable sample"):
        take(ShardLoader(tmp_path / "junk", 1, 8, num_workers=0), 1)


# --- bad inputs ---------------------------------------------------------------------------------

def test_missing_index_and_missing_shard_name_the_file(tmp_path, packed):
    with pytest.raises(DataError, match="dataset.json not found"):
        ShardLoader(tmp_path / "nowhere", 4, 8)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in packed.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "shard-000005.tar").unlink()
    with pytest.raises(DataError, match="shard-000005.tar"):
        ShardLoader(copy, 4, 8)


def test_class_count_mismatch_names_both_numbers(packed):
    with pytest.raises(DataError, match=r"model.num_classes=10 .* 4 classes"):
        ShardLoader(packed, 4, 8, num_classes=10)


def test_checksum_mismatch_with_verify(tmp_path, packed):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in packed.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    raw = bytearray((copy / "shard-000003.tar").read_bytes())
    raw[700] ^= 1
    (copy / "shard-000003.tar").write_bytes(bytes(raw))
    ShardLoader(copy, 4, 8)  # not checked unless asked
    with pytest.raises(DataError, match="shard-000003.tar: sha256 checksum mismatch"):
        ShardLoader(copy, 4, 8, verify=True)


def test_position_from_another_pack_or_seed_is_refused(packed, tmp_path):
    other = tmp_path / "other"
    make_synthetic(other, classes=4, resolution=8, n=40, min_shards=4)
    pos = ShardLoader(other, 4, 8).position.to_dict()
    with pytest.raises(DataError, match="different|pack of 4 shards"):
        ShardLoader(packed, 4, 8, position=pos)
    pos = ShardLoader(packed, 4, 8, seed=1).position.to_dict()
    with pytest.raises(DataError, match="seed=1"):
        ShardLoader(packed, 4, 8, seed=2, position=pos)


def test_shard_deleted_after_start_counts_as_truncated(tmp_path, packed):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in packed.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    loader = ShardLoader(copy, 4, 8, num_workers=0, shuffle_buffer=0)
    (copy / "shard-000002.tar").unlink()
    counter = SkipCounter()
    batches = run_until_done(loader)
    for b in batches:
        counter.add(b)
    assert counter.counts["truncated_shard"] == 12
    assert len(positions(batches)) == N - 12
