"""Warm-up before ready (Triton's `model_warmup`): every batch bucket the engine will use runs
once when a model is opened, started or (re)loaded, before the model reports READY; warm-up runs
count in no statistic; a model whose warm-up fails is refused with its name and batch size."""

from __future__ import annotations

import asyncio
import shutil
import threading

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from bigan.ort_session import ModelFileError, batch_buckets  # noqa: E402
from serving.app import create_app  # noqa: E402
from serving.core.engine import Engine, EngineConfig  # noqa: E402
from serving.core.repository import ModelRepository, UnknownModel  # noqa: E402

pytestmark = pytest.mark.serving


@pytest.fixture
def runs(monkeypatch):
    """(model name, version, rows) of every Engine.run, in order."""
    seen = []
    real = Engine.run

    def recording(self, z, y, psi=None):
        seen.append((self.name, self.version, len(y)))
        return real(self, z, y, psi)
    monkeypatch.setattr(Engine, "run", recording)
    return seen


def _hold_warm_up(monkeypatch, held) -> tuple[threading.Event, threading.Event]:
    """(entered, release): the warm-up of an engine for which `held(engine)` is true sets
    `entered`, then waits for `release` before it runs."""
    entered, release = threading.Event(), threading.Event()
    real = Engine.warm_up

    def warm_up(self):
        if held(self):
            entered.set()
            assert release.wait(10)
        return real(self)
    monkeypatch.setattr(Engine, "warm_up", warm_up)
    return entered, release


def test_each_bucket_runs_once_before_the_engine_is_ready(tiny_onnx, runs):
    engine = Engine(tiny_onnx, EngineConfig(max_batch=6))
    assert runs == [] and not engine.warmed

    async def started_cold():
        await engine.start()
        try:
            return engine.ready
        finally:
            await engine.stop()
    assert asyncio.run(started_cold()) is False  # batching, but not warmed: not ready
    assert engine.warm_up() == [1, 2, 4, 6] == list(batch_buckets(6))
    assert runs == [("model", "1", 1), ("model", "1", 2), ("model", "1", 4), ("model", "1", 6)]
    assert engine.batcher.runs == engine.stats.success == 0  # counted nowhere


def test_opening_a_repository_warms_every_version(tiny_onnx, tmp_path, runs):
    root = tmp_path / "models"
    (root / "b" / "1").mkdir(parents=True)
    (root / "b" / "2").mkdir(parents=True)
    shutil.copy(tiny_onnx, root / "a.onnx")
    shutil.copy(tiny_onnx, root / "b" / "1" / "model.onnx")
    shutil.copy(tiny_onnx, root / "b" / "2" / "model.onnx")
    repo = ModelRepository.open(root, EngineConfig(max_batch=4))
    assert sorted(runs) == sorted((name, version, n) for name, version in
                                  [("a", "1"), ("b", "1"), ("b", "2")] for n in (1, 2, 4))
    assert all(e.warmed for e in repo.engines())


def test_an_engine_given_in_process_is_warmed_by_the_lifespan(tiny_onnx, runs):
    engine = Engine(tiny_onnx, EngineConfig(max_batch=2))
    with TestClient(create_app(engine, max_images=2)) as client:
        assert runs == [("model", "1", 1), ("model", "1", 2)]
        assert client.get("/readyz").status_code == 200


def test_a_loaded_model_is_not_ready_until_its_warm_up_ran(tiny_onnx, tmp_path, monkeypatch):
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(tiny_onnx, root / "a.onnx")
    repo = ModelRepository.open(root, EngineConfig(max_batch=4))
    # the new model's warm-up waits until the test has looked
    entered, release = _hold_warm_up(monkeypatch, lambda engine: engine.name == "new")

    async def scenario():
        await repo.start()
        try:
            shutil.copy(tiny_onnx, root / "new.onnx")
            load = asyncio.create_task(repo.load("new"))
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, entered.wait, 10)
            states = {m["name"]: m["state"] for m in repo.index()}
            with pytest.raises(UnknownModel):
                repo.get("new")
            release.set()
            await load
            return states, repo.get("new").ready, {m["name"]: m["state"] for m in repo.index()}
        finally:
            release.set()
            await repo.stop()

    during, ready_after, after = asyncio.run(scenario())
    assert during == {"a": "READY", "new": "UNAVAILABLE"}
    assert ready_after is True and after == {"a": "READY", "new": "READY"}


def test_a_reload_serves_the_old_engine_until_the_new_one_is_warm(tiny_onnx, tmp_path,
                                                                  monkeypatch):
    import onnx

    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(tiny_onnx, root / "a.onnx")
    repo = ModelRepository.open(root, EngineConfig(max_batch=2))
    old = repo.get("a")
    entered, release = _hold_warm_up(monkeypatch, lambda engine: engine is not old)

    async def scenario():
        await repo.start()
        try:
            model = onnx.load(str(tiny_onnx))
            model.doc_string = "changed"
            onnx.save(model, str(root / "a.onnx"))
            load = asyncio.create_task(repo.load("a"))
            assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
            during = repo.get("a")
            release.set()
            await load
            return during, repo.get("a")
        finally:
            release.set()
            await repo.stop()

    during, after = asyncio.run(scenario())
    assert during is old and after is not old and after.warmed


def test_a_failed_warm_up_refuses_the_model_naming_it(tiny_onnx, tmp_path, monkeypatch):
    def broken(self, z, y, psi=None):
        if len(y) == 4:
            raise RuntimeError("out of memory")
        return None
    monkeypatch.setattr(Engine, "run", broken)
    with pytest.raises(ModelFileError, match=r"model 'model' version 1 failed its warm-up run "
                                             r"at batch 4 \(RuntimeError: out of memory\)"):
        ModelRepository.open(tiny_onnx, EngineConfig(max_batch=8))
