"""serving.core.engine, serving.core.repository.scan and serving.core.batcher: refusing bad model
files with the file named, provider choice, requests merged into micro-batches without changing
any image, a bounded queue, and a stopped batcher answering every request it held."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from bigan import sampling  # noqa: E402
from serving.core.batcher import MicroBatcher, QueueFull  # noqa: E402
from serving.core.engine import DEFAULT_WAIT_MS, Engine, EngineConfig  # noqa: E402
from serving.core.repository import ModelRepository, scan  # noqa: E402
from bigan.ort_session import ModelFileError  # noqa: E402

pytestmark = pytest.mark.serving


def _rewrite(src, dst, **changes):
    """A copy of the ONNX file `src` at `dst` with metadata keys changed (None deletes a key)."""
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))
    return dst


def test_engine_loads_a_file_and_the_repository_its_directory_on_cpu(tiny_onnx, caplog):
    with caplog.at_level("INFO", logger="serving.core.engine"):
        engine = ModelRepository.open(tiny_onnx.parent, EngineConfig(provider="auto")).get()
    assert engine.path == tiny_onnx and engine.name == "model"
    assert engine.provider == "CPUExecutionProvider"  # no GPU on this machine
    assert "on CPUExecutionProvider" in caplog.text  # the provider is logged
    m = engine.metadata
    assert (m.family, m.num_classes, m.dim_z, m.resolution, m.channels) == ("biggan", 4, 16, 32, 3)
    images = engine.run(engine.latents([0, 1, 2], 1.0), np.array([0, 1, 3]))
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8


def test_the_wait_for_company_defaults_by_provider_and_can_be_set(tiny_onnx):
    # CPU: a larger batch costs as much per image, so a lone request runs at once.
    engine = Engine(tiny_onnx, EngineConfig(provider="cpu"))
    assert engine.max_wait_ms == DEFAULT_WAIT_MS["CPUExecutionProvider"] == 0.0
    assert engine.batcher.max_wait_s == 0.0
    engine = Engine(tiny_onnx, EngineConfig(provider="cpu", max_wait_ms=7))
    assert engine.max_wait_ms == 7 and engine.batcher.max_wait_s == pytest.approx(0.007)
    with pytest.raises(ValueError, match="max_wait_ms and threads must be >= 0"):
        EngineConfig(max_wait_ms=-1)


def test_arena_memory_is_given_back_at_most_every_interval(tiny_onnx):
    key = "memory.enable_memory_arena_shrinkage"
    engine = Engine(tiny_onnx, EngineConfig(shrink_arena_every_s=3600))
    assert engine._shrink_run.get_run_config_entry(key) == "cpu:0"
    assert engine._run_options(True) is engine._plain_run  # the interval has not passed
    engine._last_shrink -= 3600
    assert engine._run_options(False) is engine._plain_run  # only a request's last chunk shrinks
    assert engine._run_options(True) is engine._shrink_run
    assert engine._run_options(True) is engine._plain_run  # and then not again for an interval
    every_run = Engine(tiny_onnx, EngineConfig(shrink_arena_every_s=0))
    assert all(every_run._run_options(True) is every_run._shrink_run for _ in range(3))
    never = Engine(tiny_onnx, EngineConfig(shrink_arena_every_s=-1))
    never._last_shrink -= 1e9
    assert never._run_options(True) is never._plain_run


def test_large_requests_run_in_chunks_of_max_batch(tiny_onnx):
    engine = Engine(tiny_onnx, EngineConfig(max_batch=2))
    z, y = engine.latents(range(5), 0.5), np.arange(5) % 4
    chunked = engine.run(z, y)
    whole = Engine(tiny_onnx, EngineConfig(max_batch=8)).run(z, y)
    assert chunked.shape == (5, 32, 32, 3)
    assert np.abs(chunked.astype(int) - whole.astype(int)).max() <= 1


@pytest.mark.parametrize("damage, message", [
    ("garbage", "onnxruntime cannot load this file"),
    ("truncated", "onnxruntime cannot load this file"),
    ("no-format", "not written by `bigan export`"),
    ("dim_z", r"graph input .z. is tensor\(float\) \[.batch., 16\], but the metadata says"),
    ("version", "upgrade"),
    ("resolution", "graph output 'images'"),
])
def test_bad_model_files_are_refused_naming_the_file(tiny_onnx, tmp_path, damage, message):
    path = tmp_path / f"{damage}.onnx"
    if damage == "garbage":
        path.write_bytes(b"this is not an onnx file\x00" * 10)
    elif damage == "truncated":
        path.write_bytes(tiny_onnx.read_bytes()[:5000])
    elif damage == "no-format":
        _rewrite(tiny_onnx, path, format=None)
    elif damage == "dim_z":
        _rewrite(tiny_onnx, path, dim_z="17")
    elif damage == "version":
        _rewrite(tiny_onnx, path, version="99")
    else:
        _rewrite(tiny_onnx, path, resolution="64")
    with pytest.raises(ModelFileError, match=message) as info:
        Engine(path)
    assert str(path) in str(info.value)


def test_missing_files_and_empty_directories_are_refused(tiny_onnx, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        Engine(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="is not a file.*ModelRepository.open"):
        Engine(tmp_path)  # a directory is the repository's to scan
    with pytest.raises(ModelFileError, match="does not exist"):
        scan(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="holds no model"):
        scan(tmp_path)
    (tmp_path / "a.onnx").write_bytes(tiny_onnx.read_bytes())
    (tmp_path / "b.onnx").write_bytes(tiny_onnx.read_bytes())
    assert [(f.name, f.version) for f in scan(tmp_path)] == [("a", "1"), ("b", "1")]


def test_bad_engine_config_is_refused():
    with pytest.raises(ValueError, match="provider='tpu'"):
        EngineConfig(provider="tpu")
    with pytest.raises(ValueError, match="max_batch=0"):
        EngineConfig(max_batch=0)


# --- micro-batching --------------------------------------------------------------------------------

def test_concurrent_requests_form_one_batch_and_get_the_same_images(tiny_onnx):
    engine = Engine(tiny_onnx, EngineConfig(max_batch=8, max_wait_ms=500))
    batches = []
    engine.batcher.on_batch = lambda n, seconds: batches.append(n)
    requests = [([10, 11], 0), ([12, 13], 1), ([10, 11], 2), ([20, 21], 3)]

    async def main():
        await engine.start()
        try:
            return await asyncio.gather(*(engine.submit(engine.latents(seeds, 0.8),
                                                        np.full(2, c, np.int64))
                                          for seeds, c in requests))
        finally:
            await engine.stop()

    results = asyncio.run(main())
    assert batches == [8]  # four requests of two images, one onnxruntime run
    for (seeds, c), images in zip(requests, results):
        alone = engine.run(sampling.latents(seeds, 16, 0.8), np.full(2, c, np.int64))
        assert np.abs(images.astype(int) - alone.astype(int)).max() <= 1
    assert not np.array_equal(results[0], results[2])  # same seeds, other class: other images


def _blocking_run(release: threading.Event, calls: list):
    def run(z, y):
        calls.append(len(y))
        release.wait(10)
        return np.zeros((len(y), 1), np.uint8)
    return run


def test_batches_fill_up_to_max_batch_and_the_rest_waits():
    release, calls = threading.Event(), []
    batcher = MicroBatcher(_blocking_run(release, calls), max_batch=8, max_wait_ms=200, max_queue=10)

    async def main():
        await batcher.start()
        z = np.zeros((3, 4), np.float32)
        tasks = [asyncio.create_task(batcher.submit(z, np.zeros(3, np.int64))) for _ in range(3)]
        await asyncio.sleep(0.05)
        release.set()
        out = await asyncio.gather(*tasks)
        await batcher.stop()
        return out

    out = asyncio.run(main())
    assert calls == [6, 3]  # the third request does not fit 8 and leads the next batch
    assert [len(o) for o in out] == [3, 3, 3]


def test_requests_queued_during_a_run_go_next_without_waiting():
    # Under load the run itself is the wait: a batch that was already queued when the runtime
    # freed up runs at once, even though it is not full and max_wait is long.
    release, calls = threading.Event(), []
    batcher = MicroBatcher(_blocking_run(release, calls), max_batch=2, max_wait_ms=20_000,
                           max_queue=10)

    async def main():
        await batcher.start()
        z = np.zeros((1, 4), np.float32)
        full = asyncio.create_task(batcher.submit(np.zeros((2, 4), np.float32), np.zeros(2, np.int64)))
        await asyncio.sleep(0.05)  # a full batch: runs at once, blocks in run
        queued = asyncio.create_task(batcher.submit(z, np.zeros(1, np.int64)))
        await asyncio.sleep(0.05)
        assert calls == [2] and batcher.depth == 1
        release.set()
        await asyncio.wait_for(asyncio.gather(full, queued), 5)  # not the 20 s max_wait
        await batcher.stop()

    asyncio.run(main())
    assert calls == [2, 1]


def _signalling_run(started: threading.Event, calls: list):
    def run(z, y):
        calls.append(len(y))
        started.set()
        return np.zeros((len(y), 1), np.uint8)
    return run


def test_a_lone_request_runs_at_once_however_long_the_wait_for_company():
    # Nothing else in flight (others_in_flight() == 0): no request can join, so the batch runs
    # at once instead of after the 20 s window (a lone client paid the whole window per request).
    started, calls = threading.Event(), []
    batcher = MicroBatcher(_signalling_run(started, calls), max_batch=8, max_wait_ms=20_000,
                           max_queue=4, others_in_flight=lambda: 0)

    async def main():
        await batcher.start()
        try:
            task = asyncio.create_task(batcher.submit(np.zeros((1, 4), np.float32),
                                                      np.zeros(1, np.int64)))
            ran = await asyncio.to_thread(started.wait, 5)
            return ran, await asyncio.wait_for(task, 5)
        finally:
            await batcher.stop()

    ran, images = asyncio.run(main())
    assert ran and calls == [1] and images.shape == (1, 1)


def test_runs_go_through_one_long_lived_thread_that_ends_at_stop():
    # A persistent worker instead of asyncio.to_thread per run (the default executor's hand-off
    # and its alternating pool threads cost CPU the session does not get at one client).
    threads = []

    def run(z, y):
        threads.append(threading.current_thread())
        if y[0] < 0:
            raise ValueError("a bad row")
        return np.full((len(y), 1), len(threads), np.uint8)

    batcher = MicroBatcher(run, max_batch=1, max_wait_ms=0, max_queue=4,
                           others_in_flight=lambda: 0)
    z = np.zeros((1, 4), np.float32)

    async def main():
        await batcher.start()
        try:
            answers = [await batcher.submit(z, np.zeros(1, np.int64)) for _ in range(3)]
            with pytest.raises(ValueError, match="a bad row"):  # the run's own error
                await batcher.submit(z, np.full(1, -1, np.int64))
            answers.append(await batcher.submit(z, np.zeros(1, np.int64)))
            return answers
        finally:
            await batcher.stop()

    answers = asyncio.run(main())
    assert [int(a[0, 0]) for a in answers] == [1, 2, 3, 5]  # each request its own run's answer
    assert len(set(threads)) == 1 and threads[0] is not threading.main_thread()
    threads[0].join(5)
    assert not threads[0].is_alive()  # stop() ends it


def test_a_call_after_stop_runs_in_a_new_thread_and_the_old_one_ends_after_its_call():
    from serving.core.batcher import RunThread

    gate, runner = threading.Event(), RunThread("test-run")

    async def main():
        first = runner.call(lambda: (gate.wait(5), threading.current_thread())[1])
        await asyncio.sleep(0.05)  # the first call is running
        runner.stop()
        second = runner.call(threading.current_thread)  # queued while the old thread is busy
        gate.set()
        old, new = await asyncio.wait_for(first, 5), await asyncio.wait_for(second, 5)
        runner.stop()
        return old, new

    old, new = asyncio.run(main())
    assert old is not new  # the old thread took its stop, not the new call
    old.join(5), new.join(5)
    assert not old.is_alive() and not new.is_alive()


def test_a_batch_waits_for_company_while_another_request_is_in_flight():
    started, calls, others = threading.Event(), [], [1]
    batcher = MicroBatcher(_signalling_run(started, calls), max_batch=2, max_wait_ms=20_000,
                           max_queue=4, others_in_flight=lambda: others[0])
    one = (np.zeros((1, 4), np.float32), np.zeros(1, np.int64))

    async def main():
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(*one))
            await asyncio.sleep(0.05)
            assert batcher.depth == 0 and calls == []  # taken, waiting for the other request
            others[0] = 0  # it arrives: it is in the batcher now
            second = asyncio.create_task(batcher.submit(*one))
            await asyncio.wait_for(asyncio.gather(first, second), 5)
        finally:
            await batcher.stop()

    asyncio.run(main())
    assert calls == [2]  # one run for both


def test_the_engine_counts_requests_held_through_the_repository_as_company(tiny_onnx):
    # Every transport holds the engine (`ModelRepository.use`) while it reads a request, draws its
    # latents and encodes the answer; a batch waits only for such requests not yet submitted.
    batches = []
    engine = Engine(tiny_onnx, EngineConfig(max_batch=8, max_wait_ms=20_000),
                    on_batch=lambda n, seconds: batches.append(n))
    repo = ModelRepository([engine])
    z, y = engine.latents([1], None), np.zeros(1, np.int64)

    async def main():
        await engine.start()
        try:
            with repo.use() as held:  # alone: answered at once, not after 20 s
                await asyncio.wait_for(held.submit(z, y), 5)
            assert batches == [1]
            with repo.use() as a, repo.use() as b:  # b is still on its way when a submits
                first = asyncio.create_task(a.submit(z, y))
                await asyncio.sleep(0.05)
                assert not first.done() and batches == [1]  # a waits for b
                await asyncio.wait_for(asyncio.gather(first, b.submit(z, y)), 5)
            assert batches == [1, 2]
        finally:
            await engine.stop()

    asyncio.run(main())


def test_stop_answers_the_batch_being_run_as_well_as_the_queued_requests():
    # Issue 32: stop() failed only the queued jobs; the batch cancelled mid-run (a stop, or a
    # drain that timed out) never answered its futures, so its clients waited forever.
    release, calls = threading.Event(), []
    batcher = MicroBatcher(_blocking_run(release, calls), max_batch=1, max_wait_ms=0, max_queue=4)

    async def main():
        await batcher.start()
        one = (np.zeros((1, 4), np.float32), np.zeros(1, np.int64))
        running = asyncio.create_task(batcher.submit(*one))
        await asyncio.sleep(0.05)  # taken into a batch, blocked in run
        queued = asyncio.create_task(batcher.submit(*one))
        await asyncio.sleep(0.05)
        assert calls == [1] and batcher.depth == 1
        await batcher.stop()
        try:
            return await asyncio.wait_for(
                asyncio.gather(running, queued, return_exceptions=True), 2)
        finally:
            release.set()  # let the abandoned run's thread end

    answers = asyncio.run(main())
    assert [type(a) for a in answers] == [RuntimeError, RuntimeError]
    assert all("shutting down" in str(a) for a in answers)
    assert not batcher.running


def test_stop_answers_a_batch_still_gathering_company():
    # A batch waiting up to max_wait for more requests has taken its first job off the queue;
    # stopping then must answer that job too.
    release, calls = threading.Event(), []
    batcher = MicroBatcher(_blocking_run(release, calls), max_batch=8, max_wait_ms=20_000,
                           max_queue=4)
    release.set()

    async def main():
        await batcher.start()
        gathering = asyncio.create_task(batcher.submit(np.zeros((1, 4), np.float32),
                                                       np.zeros(1, np.int64)))
        await asyncio.sleep(0.05)
        assert batcher.depth == 0 and calls == []  # taken, waiting for company
        await batcher.stop()
        return (await asyncio.wait_for(asyncio.gather(gathering, return_exceptions=True), 2))[0]

    answer = asyncio.run(main())
    assert isinstance(answer, RuntimeError) and "shutting down" in str(answer)
    assert calls == []


def test_a_full_queue_raises_queue_full_at_once():
    release, calls = threading.Event(), []
    batcher = MicroBatcher(_blocking_run(release, calls), max_batch=1, max_wait_ms=0, max_queue=2)

    async def main():
        await batcher.start()
        one = (np.zeros((1, 4), np.float32), np.zeros(1, np.int64))
        running = asyncio.create_task(batcher.submit(*one))
        await asyncio.sleep(0.05)  # taken into a batch, blocked in run
        waiting = [asyncio.create_task(batcher.submit(*one)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert batcher.depth == 2
        with pytest.raises(QueueFull, match="2 requests are already waiting") as info:
            await batcher.submit(*one)
        assert info.value.retry_after_s >= 1
        release.set()
        await asyncio.gather(running, *waiting)
        await batcher.stop()

    asyncio.run(main())
    assert calls == [1, 1, 1]


def test_a_failing_run_fails_its_requests_and_the_batcher_keeps_serving():
    state = {"fail": True}

    def run(z, y):
        if state.pop("fail", False):
            raise RuntimeError("boom")
        return np.ones((len(y), 1), np.uint8)

    batcher = MicroBatcher(run, max_batch=4, max_wait_ms=0, max_queue=4)

    async def main():
        await batcher.start()
        one = (np.zeros((1, 4), np.float32), np.zeros(1, np.int64))
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(*one)
        out = await batcher.submit(*one)
        await batcher.stop()
        return out

    assert asyncio.run(main()).tolist() == [[1]]
