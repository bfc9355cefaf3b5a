"""serving.core.repository: `bigan serve DIR` holding several models (loose NAME.onnx files and
Triton's NAME/VERSION/model.onnx), each version with its own engine; v1 and v2 routes by name and
version; Triton's repository index, load and unload; a replaced file picked up on reload without
failing the requests in flight, and nothing left holding the old engine; a stop that stops the
engines still draining; and the real tritonclient against a server holding two models."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from serving.app import create_app  # noqa: E402
from serving.client import started_server  # noqa: E402
from bigan.ort_session import ModelFileError  # noqa: E402
from serving.core.engine import Engine, EngineConfig  # noqa: E402
from serving.core.repository import ModelRepository, UnknownModel, scan  # noqa: E402

pytestmark = pytest.mark.serving

from tests.helpers import ROOT  # noqa: E402
NAMES = ["disc-0", "square-1", "triangle-2", "ring-3"]


def renamed_classes(src: Path, dst: Path, prefix: str) -> Path:
    """A copy of `src` whose class names carry `prefix`: the same graph, telling files apart."""
    import onnx

    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == "class_names":
            prop.value = json.dumps([prefix + n for n in NAMES])
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture
def repo_dir(tiny_onnx, tmp_path) -> Path:
    """a.onnx (loose) and b/1, b/2 (Triton layout; version 2 has 'v2-' class names)."""
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(tiny_onnx, root / "a.onnx")
    (root / "b" / "1").mkdir(parents=True)
    shutil.copy(tiny_onnx, root / "b" / "1" / "model.onnx")
    renamed_classes(tiny_onnx, root / "b" / "2" / "model.onnx", "v2-")
    (root / "b" / "notes").mkdir()  # not a version: ignored
    (root / "README.txt").write_text("not a model")
    return root


def test_scan_finds_loose_files_and_the_triton_layout(repo_dir, tiny_onnx, tmp_path):
    found = [(f.name, f.version, f.path.relative_to(repo_dir).as_posix()) for f in scan(repo_dir)]
    assert found == [("a", "1", "a.onnx"), ("b", "1", "b/1/model.onnx"),
                     ("b", "2", "b/2/model.onnx")]
    assert [(f.name, f.version) for f in scan(tiny_onnx)] == [("model", "1")]
    assert [(f.name, f.version) for f in scan(tiny_onnx, "g")] == [("g", "1")]
    assert [(f.name, f.version) for f in scan(tiny_onnx.parent)] == [("model", "1")]  # as before
    with pytest.raises(ModelFileError, match="can be given only to a repository of one model"):
        scan(repo_dir, "g")
    shutil.copy(tiny_onnx, repo_dir / "b.onnx")
    with pytest.raises(ModelFileError, match=r"names model 'b' twice \(b.onnx and b/\)"):
        scan(repo_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="holds no model"):
        scan(tmp_path / "empty")
    with pytest.raises(ModelFileError, match="does not exist"):
        scan(tmp_path / "nowhere")


@pytest.fixture
def client(repo_dir):
    repo = ModelRepository.open(repo_dir, EngineConfig(max_batch=8))
    with TestClient(create_app(repo, max_images=8)) as c:
        yield c


def test_v1_serves_every_model_by_name_and_version(client):
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert sorted(listed) == ["a", "b"]
    assert listed["b"]["versions"] == ["1", "2"] and listed["b"]["version"] == "2"
    assert listed["b"]["metadata"]["class_names"][0] == "v2-disc-0"
    assert listed["a"]["file"] == "a.onnx" and listed["a"]["metadata"]["class_names"] == NAMES
    assert client.get("/readyz").json() == {"status": "ready", "models": ["a", "b"]}
    body = {"class": 1, "n": 2, "seed": 4, "format": "npy"}
    a = client.post("/v1/generate", json={**body, "model": "a"})
    b1 = client.post("/v1/generate", json={**body, "model": "b", "version": "1"})
    b2 = client.post("/v1/generate", json={**body, "model": "b", "class": "v2-square-1"})
    assert a.status_code == b1.status_code == b2.status_code == 200
    assert a.content == b1.content == b2.content  # the same graph in all three files
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422 and "holds 2 models ('a', 'b'); name one" in r.json()["detail"]
    r = client.post("/v1/generate", json={**body, "model": "c"})
    assert r.status_code == 404 and "unknown model 'c'" in r.json()["detail"]
    r = client.post("/v1/generate", json={**body, "model": "b", "version": "3"})
    assert r.status_code == 404 and "has version(s) 1, 2, not '3'" in r.json()["detail"]
    r = client.post("/v1/generate", json={**body, "model": "b", "class": "square-1"})
    assert r.status_code == 422  # version 2's classes are named v2-*


def _v2_body(n: int = 1) -> dict:
    return {"inputs": [{"name": "z", "datatype": "FP32", "shape": [n, 16], "data": [0.0] * 16 * n},
                       {"name": "y", "datatype": "INT64", "shape": [n], "data": [0] * n}]}


def test_v2_routes_take_name_and_version(client):
    assert client.get("/v2/models/b").json()["versions"] == ["1", "2"]
    assert client.get("/v2/models/a/versions/1/ready").json() == {"name": "a", "ready": True}
    assert client.get("/v2/models/b/versions/3/ready").status_code == 404
    r = client.post("/v2/models/b/versions/1/infer", json=_v2_body())
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert client.post("/v2/models/b/infer", json=_v2_body()).json()["model_version"] == "2"
    r = client.post("/v2/models/c/infer", json=_v2_body())
    assert r.status_code == 404 and "this server serves 'a', 'b'" in r.json()["error"]
    stats = client.get("/v2/models/b/stats").json()["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("b", "1"), ("b", "2")]
    assert [s["inference_stats"]["success"]["count"] for s in stats] == [1, 1]
    assert len(client.get("/v2/models/stats").json()["model_stats"]) == 3
    assert client.post("/v2/repository/index").json() == [
        {"name": "a", "version": "1", "state": "READY"},
        {"name": "b", "version": "1", "state": "READY"},
        {"name": "b", "version": "2", "state": "READY"}]


def test_unload_and_load_a_model(client, repo_dir):
    assert client.post("/v2/repository/models/a/unload").status_code == 200
    r = client.post("/v1/generate", json={"model": "a", "class": 0, "seed": 1})
    assert r.status_code == 404 and "this server serves 'b'" in r.json()["detail"]
    assert client.post("/v2/repository/index").json()[0] == {
        "name": "a", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
    assert client.get("/v2/models/a/ready").status_code == 404
    assert client.post("/v2/repository/models/a/unload").status_code == 404
    assert client.post("/v2/repository/models/a/load").status_code == 200
    r = client.post("/v1/generate", json={"model": "a", "class": 0, "seed": 1})
    assert r.status_code == 200
    r = client.post("/v2/repository/models/zzz/load")
    assert r.status_code == 404 and "no model 'zzz'" in r.json()["error"]
    (repo_dir / "bad.onnx").write_bytes(b"not onnx")
    r = client.post("/v2/repository/models/bad/load")
    assert r.status_code == 400 and "onnxruntime cannot load this file" in r.json()["error"]
    assert client.post("/v1/generate", json={"model": "b", "class": 0}).status_code == 200


def test_a_replaced_file_is_picked_up_on_reload_and_unchanged_versions_keep_their_engine(
        client, repo_dir, tiny_onnx):
    repo = client.app.state.server.repository
    b1, b2 = repo.get("b", "1"), repo.get("b", "2")
    body = {"model": "b", "class": 0, "seed": 3, "format": "json"}
    before = client.post("/v1/generate", json=body).json()
    assert before["class_name"] == "v2-disc-0"
    renamed_classes(tiny_onnx, repo_dir / "b" / "2" / "model.onnx", "v3-")  # replaced on disk
    assert client.post("/v1/generate", json=body).json()["class_name"] == "v2-disc-0"  # not yet
    assert client.post("/v2/repository/models/b/load").status_code == 200
    assert repo.get("b", "1") is b1 and repo.get("b", "2") is not b2
    after = client.post("/v1/generate", json=body)
    assert after.headers["x-cache"] == "miss"  # another file: the old cached answer is not used
    assert after.json()["class_name"] == "v3-disc-0"
    for _ in range(100):  # the old engine stops once idle
        if not b2.ready:
            break
        time.sleep(0.05)
    assert not b2.ready and b1.ready
    (repo_dir / "b" / "1" / "model.onnx").write_bytes(b"broken")  # a bad file: the load fails,
    r = client.post("/v2/repository/models/b/load")  # and b keeps serving what it served
    assert r.status_code == 400 and "b/1/model.onnx" in r.json()["error"]
    assert repo.get("b", "1") is b1 and b1.ready
    assert client.post("/v1/generate", json={**body, "version": "1"}).status_code == 200


def test_a_reload_does_not_fail_requests_in_flight(repo_dir, tiny_onnx):
    repo = ModelRepository.open(repo_dir, EngineConfig(max_batch=8))
    old = repo.get("a")
    release = threading.Event()
    real_run = old.batcher._run

    def slow_run(z, y):  # the old engine's run blocks until the reload is done
        release.wait(20)
        return real_run(z, y)
    old.batcher._run = slow_run

    async def main():
        await repo.start()
        try:
            async def request():
                with repo.use("a") as engine:
                    return await engine.submit(engine.latents([0], 1.0), np.zeros(1, np.int64))
            in_flight = asyncio.create_task(request())
            await asyncio.sleep(0.2)
            renamed_classes(tiny_onnx, repo_dir / "a.onnx", "new-")
            await repo.load("a")
            new = repo.get("a")
            assert new is not old and new.metadata.class_names[0] == "new-disc-0"
            await asyncio.sleep(0.2)
            assert old.ready and not in_flight.done()  # still serving its request
            release.set()
            images = await asyncio.wait_for(in_flight, 20)
            for _ in range(100):
                if not old.ready:
                    break
                await asyncio.sleep(0.02)
            assert not old.ready  # stopped once its last request was answered
            fresh = await new.submit(new.latents([0], 1.0), np.zeros(1, np.int64))
            return images, fresh
        finally:
            release.set()
            await repo.stop()

    images, fresh = asyncio.run(main())
    assert images.shape == (1, 32, 32, 3)
    assert np.abs(images.astype(int) - fresh.astype(int)).max() <= 1  # same graph
    with pytest.raises(UnknownModel, match="holds 2 models"):
        repo.get()


def test_stopping_the_repository_stops_the_engines_still_draining(repo_dir):
    # Issue 32: stop() cancelled the drain tasks, so an engine unloaded (or replaced) while a
    # request held it was never stopped: its batcher outlived the server.
    repo = ModelRepository.open(repo_dir, EngineConfig(max_batch=8))

    async def main():
        await repo.start()
        with repo.use("a") as old:  # a request in flight: the unload drains instead of stopping
            await repo.unload("a")
            await asyncio.sleep(0.05)
            draining = old.ready
            await repo.stop()
            return draining, old.ready, old.batcher.running

    draining, ready_after, batching_after = asyncio.run(main())
    assert draining  # the unloaded engine waits for its request
    assert not ready_after and not batching_after  # and the stop stopped it anyway


def test_after_a_reload_the_app_holds_no_stale_engine(client, repo_dir, tiny_onnx):
    # Issue 32: app.state.engine pointed at the first engine for one test's monkeypatch and still
    # did after a reload replaced it. Every engine the app state reaches must be one it serves.
    repo = client.app.state.server.repository
    renamed_classes(tiny_onnx, repo_dir / "a.onnx", "new-")
    old = repo.get("a")
    assert client.post("/v2/repository/models/a/load").status_code == 200
    assert repo.get("a") is not old
    held = [v for v in vars(client.app.state)["_state"].values() if isinstance(v, Engine)]
    held += [v for v in vars(client.app.state.server).values() if isinstance(v, Engine)]
    assert all(e in repo.engines() for e in held), held


# --- the real server and tritonclient ----------------------------------------------------------

@pytest.mark.slow
def test_tritonclient_against_bigan_serve_holding_two_models(repo_dir, tmp_path):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    with open(tmp_path / "server.log", "wb") as log, \
            started_server(repo_dir, output=log, cwd=ROOT) as server, \
            httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}") as client:
        assert client.is_model_ready("a") and client.is_model_ready("b", "1")
        assert [m["name"] + "/" + m["version"] for m in client.get_model_repository_index()] == [
            "a/1", "b/1", "b/2"]
        assert client.get_model_metadata("b")["versions"] == ["1", "2"]
        z = httpclient.InferInput("z", [2, 16], "FP32")
        z.set_data_from_numpy(np.zeros((2, 16), np.float32))
        y = httpclient.InferInput("y", [2], "INT64")
        y.set_data_from_numpy(np.array([0, 3], np.int64))
        outputs = {}
        for name, version in (("a", ""), ("b", "1"), ("b", "2")):
            result = client.infer(name, [z, y], model_version=version)
            outputs[name + version] = result.as_numpy("images")
            assert result.get_response()["model_name"] == name
        assert outputs["a"].shape == (2, 32, 32, 3)
        assert np.array_equal(outputs["a"], outputs["b1"])
        client.unload_model("a")
        assert not client.is_model_ready("a") and client.is_model_ready("b")
        with pytest.raises(InferenceServerException, match="unknown model 'a'"):
            client.infer("a", [z, y])
        client.load_model("a")
        assert client.is_model_ready("a")
        assert (client.get_inference_statistics("b")["model_stats"][1]["inference_stats"]
                ["success"]["count"]) == 1

