"""Shards streamed from object storage and HTTP (bigan/data/locations.py, retrying.py and the
loader's streamed path), against real servers on loopback (tests/object_store.py): packing into
a bucket, reading the same samples as from local files, exactly once over 2 ranks and a resume,
a flaky endpoint survived with every retry counted, a shard that keeps failing skipped, counted
and named (or the run stopped), `pipe:` commands, and a checkpoint resumed from a URL."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from bigan.config import ConfigError, load_config
from bigan.data.loader import ShardLoader
from bigan.data.locations import ShardLocation
from bigan.data.position import SkipCounter
from bigan.data.retrying import RetryingReader, RetryPolicy, ShardReadError, backoff_delay
from bigan.data.shards import DataError, inspect, make_synthetic, pack, read_index
from tests.object_store import FlakyFiles, http_server, s3_server
from tests.test_loader import bad_pack  # noqa: F401 (a fixture: the pack of every kind of bad sample)

pytestmark = pytest.mark.unit

N, SHARDS, PER = 64, 8, 8  # 8 shards of 8 samples, 8 px, 4 classes
FAST = RetryPolicy(retries=4, backoff_sec=0.01)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "synth"
    make_synthetic(out, classes=4, resolution=8, n=N, seed=0, min_shards=SHARDS)
    return out


@pytest.fixture(scope="module")
def bucket(local) -> str:
    """The same inputs packed straight into a bucket of a loopback S3 server."""
    with s3_server("bigan-test"):
        from bigan.data import synthetic
        from bigan.data.sources import ImageSource

        images, labels = synthetic.synthetic(N, 4, 8, 3, seed=0)
        names = [f"{synthetic.SHAPES[k % len(synthetic.SHAPES)]}-{k}" for k in range(4)]
        source = ImageSource("synthetic", "bigan.data.synthetic(seed=0)", names, labels,
                             images=images)
        pack(source, "s3://bigan-test/synth", 8, fmt="png", seed=0, min_shards=SHARDS,
             progress=False)
        yield "s3://bigan-test/synth"


def epoch(path, world=1, workers=0, position=None, **kw) -> tuple[list[dict], list[dict]]:
    """Every rank's batches until its streams pass epoch 0: (batches, [loader per rank])."""
    kw = {"batch_per_worker": 4, "resolution": 8, "shuffle_buffer": 5, "seed": 3, "retry": FAST,
          **kw}
    batches, loaders = [], []
    for rank in range(world):
        loader = ShardLoader(path, rank=rank, world_size=world, num_workers=workers,
                             position=position, **kw)
        it, width, mine = iter(loader), max(1, loader.num_workers), []
        for _ in range(200):
            mine.append(next(it))
            if len(mine) >= width and all(int(b["epoch"].min()) > 0 for b in mine[-width:]):
                break
        batches += mine
        loaders.append(loader)
    return batches, loaders


def samples(batches: list[dict]) -> dict[tuple[int, int], tuple[str, bytes]]:
    """(shard, offset) -> (key, pixels) of epoch 0; asserts no position came twice."""
    out = {}
    for b in batches:
        for i, (e, s, o) in enumerate(zip(b["epoch"], b["shard"], b["offset"])):
            if int(e) == 0:
                assert (int(s), int(o)) not in out, "a sample position delivered twice"
                out[int(s), int(o)] = (b["key"][i], b["image"][i].numpy().tobytes())
    return out


def totals(batches: list[dict], field: str) -> dict[str, int]:
    counter = SkipCounter()
    for b in batches:
        counter.add(b[field])
    return counter.to_dict()


def test_locations_parse_directories_urls_braces_and_pipes():
    assert ShardLocation.parse("/d/ds").index_url == "/d/ds/dataset.json"
    assert ShardLocation.parse("file:///d/ds/").url("shard-000001.tar") == "/d/ds/shard-000001.tar"
    s3 = ShardLocation.parse("s3://b/ds/shard-{000000..000002}.tar")
    assert (s3.kind, s3.index_url, s3.names) == (
        "url", "s3://b/ds/dataset.json", ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar"))
    assert ShardLocation.parse("https://h/ds/index.json").index_url == "https://h/ds/index.json"
    pipe = ShardLocation.parse("pipe:aws s3 cp s3://b/ds/shard-{000000..000001}.tar -")
    assert pipe.url("shard-000001.tar") == "pipe:aws s3 cp s3://b/ds/shard-000001.tar -"
    assert pipe.index_url == "pipe:aws s3 cp s3://b/ds/dataset.json -"
    with pytest.raises(DataError, match="must name its shards"):
        ShardLocation.parse("pipe:cat")


def test_backoff_doubles_up_to_the_cap_with_equal_jitter():
    assert [backoff_delay(a, 1.0, 30.0, 0.0) for a in range(7)] == [0.5, 1, 2, 4, 8, 15, 15]
    assert [backoff_delay(a, 1.0, 30.0, 1.0) for a in range(3)] == [1, 2, 4]


class _Breaking(io.BytesIO):
    """A stream of `data` whose `fail_at`-th read (counted over all opened streams) raises."""

    def __init__(self, data: bytes, reads: list, fail_at: set, seekable: bool, error: Exception):
        super().__init__(data)
        self._reads, self._fail_at, self._seekable, self._error = reads, fail_at, seekable, error

    def read(self, n=-1):
        self._reads.append(n)
        if len(self._reads) in self._fail_at:
            raise self._error
        return super().read(n)

    def seekable(self):
        return self._seekable


@pytest.mark.parametrize("seekable", [True, False])
def test_retrying_reader_resumes_at_the_same_byte(seekable):
    data = bytes(range(256)) * 40
    reads, opened, waits = [], [], []

    def open_stream(url):
        opened.append(url)
        return _Breaking(data, reads, {3, 4, 9}, seekable, ConnectionResetError("reset by peer"))

    f = RetryingReader("s3://b/x.tar", open_stream, RetryPolicy(retries=2, backoff_sec=0.5),
                       sleep=waits.append)
    got = b"".join(iter(lambda: f.read(1000), b""))
    assert got == data  # the same bytes, whatever broke in between
    assert f.retried == 3 and len(opened) == 4  # reads 3 and 4 in a row: 2 retries; 9: one more
    assert 0.25 <= waits[0] < 0.5 and 0.5 <= waits[1] < 1.0  # doubling, equal jitter


def test_retrying_reader_gives_up_and_never_retries_a_missing_object():
    reads = []
    broken = RetryingReader("u", lambda u: _Breaking(b"x" * 10, reads, set(range(1, 99)), True,
                                                      TimeoutError("slow")),
                            RetryPolicy(retries=2, backoff_sec=0), sleep=lambda s: None)
    with pytest.raises(ShardReadError, match="u: still failing after 3 attempts"):
        broken.read(4)
    assert broken.retried == 2
    missing = RetryingReader("u", lambda u: _Breaking(b"", [], {1}, True, FileNotFoundError(u)),
                             RetryPolicy(retries=5), sleep=lambda s: None)
    with pytest.raises(ShardReadError, match="FileNotFoundError"):
        missing.read(4)
    assert missing.retried == 0


def test_config_validates_the_streaming_fields():
    with pytest.raises(ConfigError, match="data.on_unreadable_shard"):
        load_config(None, ["data.on_unreadable_shard=ignore"])
    with pytest.raises(ConfigError, match="data.read_retries"):
        load_config(None, ["data.read_retries=-1"])


def test_pack_into_a_bucket_writes_the_same_shards_and_inspect_reads_them(local, bucket):
    remote, here = read_index(bucket), read_index(local)
    assert [(s["name"], s["sha256"]) for s in remote["shards"]] == [
        (s["name"], s["sha256"]) for s in here["shards"]]
    report = inspect(bucket)
    assert report["ok"], report["problems"]
    assert report["class_counts_read"] == here["class_counts"]


def test_cli_packs_an_image_folder_into_the_bucket_and_inspects_it(bucket, tmp_path, capsys):
    from PIL import Image

    from bigan.cli import main

    for k, colour in enumerate(("red", "blue")):
        (tmp_path / "src" / colour).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 10), (200 * (k == 0), 30 * i, 200 * (k == 1))).save(
                tmp_path / "src" / colour / f"{i}.png")
    url = "s3://bigan-test/folder"
    assert main(["data", "pack", str(tmp_path / "src"), url, "--resolution", "8",
                 "--format", "png", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["class_counts_read"] == [3, 3] and report["path"] == url
    assert main(["data", "inspect", "s3://bigan-test/no-such-pack"]) == 2
    assert "dataset.json not found" in capsys.readouterr().err


def test_two_ranks_from_the_bucket_read_exactly_what_local_files_give(local, bucket):
    from_files, _ = epoch(local, world=2, workers=2)
    from_bucket, loaders = epoch(bucket, world=2, workers=2)
    assert len(samples(from_bucket)) == N
    assert samples(from_bucket) == samples(from_files)
    assert totals(from_bucket, "io") == {} and totals(from_bucket, "skipped") == {}
    assert all(loader.location.kind == "url" for loader in loaders)


def test_resume_from_the_bucket_onto_another_world_size_is_exactly_once(bucket):
    first = ShardLoader(bucket, 4, 8, world_size=1, num_workers=0, shuffle_buffer=5, seed=3)
    it, consumed = iter(first), []
    for _ in range(5):
        b = next(it)
        first.position.update(b)
        consumed.append(b)
    saved = json.loads(json.dumps(first.position.to_dict()))
    rest, _ = epoch(bucket, world=2, workers=1, position=saved)
    before, after = samples(consumed), samples(rest)
    assert not before.keys() & after.keys()
    assert len(before) + len(after) == N


def test_bad_samples_in_a_bucket_are_skipped_and_counted_as_from_disk(bucket, bad_pack):
    """The corrupt, unlabelled, cut... samples of test_loader's bad pack: the same causes and
    counts, the same good keys, whether the pack is read from disk or from the bucket (where the
    cut shard is an object shorter than dataset.json says)."""
    import fsspec

    fs = fsspec.filesystem("s3")
    for f in sorted(bad_pack.iterdir()):
        fs.put_file(str(f), f"bigan-test/bad/{f.name}")

    def read(path):
        batches, _ = epoch(path, batch_per_worker=1, shuffle_buffer=0)
        return sorted(samples(batches).values()), totals(batches, "skipped")

    from_disk, from_bucket = read(bad_pack), read("s3://bigan-test/bad")
    assert from_bucket == from_disk
    assert from_bucket[1]["truncated_shard"] == 1 and len(from_bucket[1]) == 8


def test_brace_pattern_of_every_shard_is_the_whole_pack_and_a_subset_is_a_subset(local, bucket):
    every = f"{bucket}/shard-{{000000..{SHARDS - 1:06d}}}.tar"
    assert samples(epoch(every)[0]) == samples(epoch(local)[0])
    two = f"{bucket}/shard-{{000002..000003}}.tar"
    index = read_index(two)
    assert [s["name"] for s in index["shards"]] == ["shard-000002.tar", "shard-000003.tar"]
    assert index["num_samples"] == 2 * PER and index["subset_of"] == SHARDS
    with pytest.raises(DataError, match="shard-000099.tar: not a shard"):
        read_index(f"{bucket}/shard-{{000000,000099}}.tar")


def test_pipe_command_streams_the_same_samples(local):
    pattern = f"pipe:cat {local}/shard-{{000000..{SHARDS - 1:06d}}}.tar"
    assert samples(epoch(pattern)[0]) == samples(epoch(local)[0])


@pytest.mark.parametrize("block", [None, 4096], ids=["whole-shard-reads", "4KiB-range-reads"])
def test_flaky_http_endpoint_is_survived_with_every_retry_counted(local, block, monkeypatch):
    """With 4 KiB range requests, transfers break in the middle of shards too: each retry
    resumes at the byte where the broken one stopped (a wrong offset changes the samples)."""
    if block:
        monkeypatch.setattr("bigan.data.locations.READ_BLOCK", block)
    files = FlakyFiles(local, drop_every=3)
    with http_server(files) as url:
        batches, _ = epoch(f"{url}/", world=2, workers=0)
    assert samples(batches) == samples(epoch(local, world=2)[0])
    # each broken transfer of a shard was retried once and counted (the index reads retry
    # too, uncounted: they happen before there are batches to carry counts)
    shard_drops = [n for n in files.dropped if n.endswith(".tar")]
    assert len(shard_drops) >= 3
    assert totals(batches, "io") == {"retried_reads": len(shard_drops)}
    assert totals(batches, "skipped") == {}


def test_a_shard_that_keeps_failing_is_skipped_counted_and_named(local):
    files = FlakyFiles(local, broken=("shard-000005.tar",))
    with http_server(files) as url:
        batches, _ = epoch(f"{url}/", world=1, workers=0)
        with pytest.raises(DataError, match=r"shard-000005.tar.*on_unreadable_shard=stop"):
            epoch(f"{url}/", world=1, workers=0, on_unreadable_shard="stop")
    got = samples(batches)
    assert len(got) == N - PER and not any(s == 5 for s, _ in got)
    assert totals(batches, "skipped") == {"unreadable_shard": PER}
    assert totals(batches, "io") == {"retried_reads": FAST.retries, "unreadable_shards": 1}
    assert [n for b in batches for n in b["unreadable_shards"]] == [f"{url}/shard-000005.tar"]
    assert files.refused == 2 * (FAST.retries + 1)  # each run: the first try and every retry


def test_missing_object_is_named_at_start(local, bucket):
    with pytest.raises(DataError, match="dataset.json not found"):
        ShardLoader("s3://bigan-test/nothing-here", 4, 8)


def test_training_from_a_flaky_endpoint_logs_the_retries(local, tmp_path):
    from bigan.train.trainer import train
    from tests.helpers import tiny_overrides

    files = FlakyFiles(local, drop_every=4)
    with http_server(files) as url:
        cfg = load_config(None, tiny_overrides(
            tmp_path / "run", **{"data.source": "shards", "data.path": f"{url}/",
                                 "data.num_workers": 0, "data.retry_backoff_sec": 0.01,
                                 "model.resolution": 32, "train.steps": 2, "train.log_every_kimg": 0.032,
                                 "train.ckpt_every_kimg": 0.032, "train.sample_every_kimg": 1.6}))
        result = train(cfg)
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [x["data/retried_reads"] for x in lines if "data/retried_reads" in x]
    manifest = json.loads((result.last_checkpoint / "manifest.json").read_text())
    assert logged and logged[-1] == manifest["data_position"]["io"]["retried_reads"] > 0


def test_resume_from_a_checkpoint_url_equals_resuming_from_its_directory(local, bucket, tmp_path):
    """A run resumed from its checkpoint in a bucket trains exactly as one resumed from disk."""
    import fsspec

    from bigan.checkpoint.loading import load_checkpoint
    from bigan.train.trainer import train
    from tests.helpers import tiny_overrides

    def cfg(run, steps):
        return load_config(None, tiny_overrides(run, **{"train.steps": steps,
                                                        "train.sample_every_kimg": 1.6}))

    first = train(cfg(tmp_path / "a", 2))
    fsspec.filesystem("s3").put(str(first.last_checkpoint), "bigan-test/runs/a/",
                                recursive=True)
    from_disk = train(cfg(tmp_path / "b", 4), resume=str(first.last_checkpoint))
    from_url = train(cfg(tmp_path / "c", 4), resume="s3://bigan-test/runs/a")  # newest step
    assert from_url.step == 4
    a, b = load_checkpoint(from_disk.last_checkpoint), load_checkpoint(from_url.last_checkpoint)
    for name in ("G", "G_ema", "D"):
        for key, value in a.models[name].items():
            torch.testing.assert_close(b.models[name][key], value, rtol=0, atol=0)


def test_restored_totals_are_carried_by_one_rank_so_a_multi_rank_resume_does_not_multiply_them(
        local):
    """Every rank resumes from the same job-wide data state; if each re-added its skip and I/O
    totals, the next checkpoint's merge would count them once per rank."""
    from bigan.data.feed import ShardFeed, merge_states

    cfg = load_config(None, ["data.source=shards", f"data.path={local}", "model.num_classes=4",
                             "model.resolution=32", "train.batch_size=8", "data.num_workers=0"])
    state = {"kind": "shards", "position": None, "skipped": {"not_image": 3},
             "io": {"retried_reads": 2}, "unreadable_shards": ["s3://b/ds/shard-000001.tar"]}
    feeds = [ShardFeed(cfg, rank, 2, state) for rank in (0, 1)]
    merged = merge_states([f.state() for f in feeds])
    assert merged["skipped"] == {"not_image": 3} and merged["io"] == {"retried_reads": 2}
    assert merged["unreadable_shards"] == ["s3://b/ds/shard-000001.tar"]
