"""The defects a black-box test of the server found (issue 17), one test each: every one of these
requests used to get a 500, hang the server, or pass a broken model file; now each gets a 4xx with
a message, or is refused at load, or is fixed. The real `bigan serve` process and the real
`tritonclient` are used where the defect was seen through them."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from serving.app import create_app  # noqa: E402
from serving.core.batcher import MicroBatcher, QueueFull  # noqa: E402
from serving.core.engine import Engine, EngineConfig  # noqa: E402
from bigan.ort_session import ModelFileError  # noqa: E402

pytestmark = pytest.mark.serving

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def client(tiny_onnx):
    with TestClient(create_app(Engine(tiny_onnx, EngineConfig(max_batch=8)), max_images=16)) as c:
        yield c


def rewrite_metadata(src: Path, dst: Path, **changes: str) -> Path:
    """A copy of the ONNX file `src` at `dst` with metadata keys set to new (JSON text) values."""
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(changes)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))
    return dst


def _v2_body(n: int = 1) -> dict:
    return {"inputs": [{"name": "z", "datatype": "FP32", "shape": [n, 16], "data": [0.0] * 16 * n},
                       {"name": "y", "datatype": "INT64", "shape": [n], "data": [0] * n}]}


# 1 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_truncation_gets_422_whose_body_is_json(client, literal):
    # Python's JSON reader takes NaN, Infinity and 1e999 (= inf); FastAPI's 422 echoed the float,
    # and JSON cannot encode it: the error itself failed with a 500.
    r = client.post("/v1/generate", content=f'{{"class": 0, "truncation": {literal}}}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "truncation"] and "finite" in error["msg"]
    assert error["input"] in ("nan", "inf", "-inf")  # echoed as a string


# 2 -------------------------------------------------------------------------------------------------
def test_a_class_string_of_5000_digits_gets_422_without_echoing_it(client):
    r = client.post("/v1/generate", json={"class": "7" * 5000})
    assert r.status_code == 422, r.text
    assert "is outside 0..3" in r.json()["detail"] and len(r.content) < 400
    assert client.post("/v1/generate", json={"class": "0003", "format": "npy"}).status_code == 200
    # The same digits as a JSON number never reach the model: Python's JSON reader refuses them.
    r = client.post("/v1/generate", content=b'{"class": ' + b"7" * 5000 + b"}",
                    headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500


# 3 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"])
def test_deeply_nested_json_on_v2_infer_gets_400(client, body):
    r = client.post("/v2/models/model/infer", content=body)
    assert r.status_code == 400 and "nests JSON too deeply" in r.json()["error"]


def test_deep_but_parseable_v2_data_gets_400(client):
    body = _v2_body()
    body["inputs"][0]["data"] = json.loads("[" * 500 + "0.0" + "]" * 500)  # 500-d array of 1
    r = client.post("/v2/models/model/infer", json=body)
    assert r.status_code == 400 and "rectangular array" in r.json()["error"]


# 4 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["id", "parameters", "shape", "data"])
def test_an_integer_of_5000_digits_anywhere_in_a_v2_body_gets_400(client, where):
    big = "9" * 5000
    text = json.dumps(_v2_body())
    text = {"id": text.replace("{", '{"id": ' + big + ", ", 1),
            "parameters": text.replace("{", '{"parameters": {"x": ' + big + "}, ", 1),
            "shape": text.replace("[1, 16]", f"[1, {big}]"),
            "data": text.replace('"data": [0]', f'"data": [{big}]')}[where]
    r = client.post("/v2/models/model/infer", content=text.encode())
    assert r.status_code == 400 and "int" in r.json()["error"], r.text


# 5 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [False, True])
def test_a_v2_shape_of_65_dimensions_gets_400(client, binary):
    z = {"name": "z", "datatype": "FP32", "shape": [1] * 63 + [1, 16]}
    y = np.zeros(1, np.int64)
    if binary:
        z["parameters"] = {"binary_data_size": 64}
        header = json.dumps({"inputs": [z, {"name": "y", "datatype": "INT64", "shape": [1],
                                            "parameters": {"binary_data_size": 8}}]}).encode()
        r = client.post("/v2/models/model/infer",
                        content=header + np.zeros(16, np.float32).tobytes() + y.tobytes(),
                        headers={"Inference-Header-Content-Length": str(len(header))})
    else:
        z["data"] = [0.0] * 16
        body = {"inputs": [z, {"name": "y", "datatype": "INT64", "shape": [1], "data": [0]}]}
        r = client.post("/v2/models/model/infer", json=body)
    assert r.status_code == 400 and "must have 2 dimensions" in r.json()["error"], r.text


# 6 -------------------------------------------------------------------------------------------------
def test_metadata_claiming_more_classes_than_the_graph_is_refused_at_start(tiny_onnx, tmp_path):
    names = ["disc-0", "square-1", "triangle-2", "ring-3", "ghost-4"]
    path = rewrite_metadata(tiny_onnx, tmp_path / "five.onnx", num_classes="5",
                            class_names=json.dumps(names))
    with pytest.raises(ModelFileError, match="names 5 classes but the graph cannot draw class 4"):
        Engine(path)
    from bigan.ort_session import open_model  # the check export and evaluation share

    with pytest.raises(ModelFileError, match=str(path)):
        open_model(path, provider="cpu")


def test_a_request_that_breaks_its_batch_fails_alone():
    # One request the run cannot draw (here class 9) shares a batch with two good ones: before,
    # all three got its error; now the batch is retried request by request.
    runs = []

    def run(z, y):
        runs.append(y.tolist())
        if (y == 9).any():
            raise RuntimeError("indices element out of data bounds")
        return np.repeat(y[:, None], 2, axis=1).astype(np.uint8)

    batcher = MicroBatcher(run, max_batch=8, max_wait_ms=200, max_queue=8)

    async def main():
        await batcher.start()
        z = np.zeros((1, 4), np.float32)
        tasks = [asyncio.create_task(batcher.submit(z, np.array([c], np.int64))) for c in (1, 9, 2)]
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return out

    good1, bad, good2 = asyncio.run(main())
    assert runs[0] == [1, 9, 2]  # they did share one run
    assert isinstance(bad, RuntimeError) and "out of data bounds" in str(bad)
    assert good1.tolist() == [[1, 1]] and good2.tolist() == [[2, 2]]


# 7 -------------------------------------------------------------------------------------------------
def test_metrics_label_unknown_http_methods_as_other(client):
    for method in ("FOO", "BAR", "X" * 200):
        assert client.request(method, "/v1/generate").status_code == 405
    client.request("PATCH", "/v1/generate")
    text = client.get("/metrics").text
    assert 'method="other",route="/v1/generate",status="405"} 3.0' in text
    assert 'method="PATCH"' in text
    assert "FOO" not in text and "BAR" not in text


# 8 -------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bigan.cli", "serve", str(model), "--port",
                                 str(port), *extra], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(1000):
                    return proc, port
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def _trickle(port: int, stop: threading.Event, answers: list,
             path: bytes = b"/v1/generate") -> None:
    """A client sending a 1000-byte body one byte every 0.2 s, until told to stop or cut off."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 1000\r\n\r\n{")
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                s.sendall(b" ")
                data = s.recv(1000)
                answers.append(data)
                if not data:
                    return
            except TimeoutError:
                continue
            except OSError:
                return


@pytest.mark.slow
def test_sigterm_with_trickling_clients_exits_and_slow_bodies_get_408(tiny_onnx, tmp_path):
    proc, port = _start_server(tiny_onnx, tmp_path / "server.log", "--body-timeout", "2",
                               "--shutdown-timeout", "2")
    try:
        stop, answers, v2_answers = threading.Event(), [], []
        slow = threading.Thread(target=_trickle, args=(port, stop, answers))
        slow_v2 = threading.Thread(target=_trickle, args=(port, stop, v2_answers,
                                                          b"/v2/models/model/infer"))
        slow.start()
        slow_v2.start()
        slow.join(timeout=15)  # the body deadline answers it and closes the connection
        slow_v2.join(timeout=15)
        v1, v2 = b"".join(answers), b"".join(v2_answers)
        assert not slow.is_alive() and v1.startswith(b"HTTP/1.1 408"), v1
        assert b'{"detail":"the request body did not arrive within 2 s' in v1
        assert not slow_v2.is_alive() and v2.startswith(b"HTTP/1.1 408"), v2
        assert b'{"error":"the request body did not arrive within 2 s' in v2
        proc.terminate()
        proc.wait(timeout=10)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    # Clients that trickle forever (no body deadline here) and SIGTERM: the shutdown deadline.
    proc, port = _start_server(tiny_onnx, tmp_path / "server2.log", "--body-timeout", "0",
                               "--shutdown-timeout", "2")
    stop, answers = threading.Event(), []
    threads = [threading.Thread(target=_trickle, args=(port, stop, answers)) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)  # hung forever before: uvicorn waited for every open request
        assert time.monotonic() - start < 10
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        for t in threads:
            t.join(timeout=5)


# 9 -------------------------------------------------------------------------------------------------
def test_retry_after_counts_queued_images_at_the_measured_rate():
    release = threading.Event()

    def run(z, y):  # 20 ms an image, and the second run blocks until released
        time.sleep(0.02 * len(y))
        if len(y) == 16 and not release.is_set():
            release.wait(20)
        return np.zeros((len(y), 1), np.uint8)

    batcher = MicroBatcher(run, max_batch=16, max_wait_ms=0, max_queue=4)

    async def main():
        await batcher.start()
        z1, z16 = np.zeros((1, 4), np.float32), np.zeros((16, 4), np.float32)
        await batcher.submit(z1, np.zeros(1, np.int64))  # measures the rate: ~20 ms an image
        tasks = [asyncio.create_task(batcher.submit(z16, np.zeros(16, np.int64)))]
        await asyncio.sleep(0.3)  # taken into a run, where it blocks
        tasks += [asyncio.create_task(batcher.submit(z16, np.zeros(16, np.int64)))
                  for _ in range(4)]
        await asyncio.sleep(0.1)  # one blocked in its run, four queued: 16 + 64 images
        try:
            assert batcher.depth == 4 and batcher.queued_images == 80
            with pytest.raises(QueueFull, match=r"4 requests are already waiting for the "
                                                r"generator \(80 images") as info:
                await batcher.submit(z1, np.zeros(1, np.int64))
            return info.value.retry_after_s
        finally:
            release.set()
            await asyncio.gather(*tasks)
            await batcher.stop()

    # 80 images x >= 20 ms = at least 2 s (was always 1); a loaded machine only makes it longer.
    assert 2 <= asyncio.run(main()) <= 20


# 10 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("psi", ["0.001", "5.0"])
def test_a_recommended_psi_outside_the_request_range_is_refused_at_load(tiny_onnx, tmp_path, psi):
    path = rewrite_metadata(tiny_onnx, tmp_path / "psi.onnx", recommended_truncation=psi)
    with pytest.raises(ModelFileError, match=r"recommended_truncation.*must be a number in "
                                             r"\[0.01, 4.0\]") as info:
        Engine(path)
    assert str(path) in str(info.value)


# 11 ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server_port(tiny_onnx, tmp_path_factory):
    proc, port = _start_server(tiny_onnx, tmp_path_factory.mktemp("serve") / "server.log",
                               "--max-images", "16", "--max-batch", "8")
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_tritonclient_reads_config_repository_index_statistics_and_errors(server_port):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server_port}")
    try:
        config = client.get_model_config("model")
        assert config["max_batch_size"] == 16 and config["platform"] == "onnxruntime_onnx"
        assert config["input"][0] == {"name": "z", "data_type": "TYPE_FP32", "dims": [16]}
        assert config["output"][0]["dims"] == [32, 32, 3]
        assert client.get_model_config("model", "1") == config
        assert client.get_model_repository_index() == [
            {"name": "model", "version": "1", "state": "READY"}]
        z = httpclient.InferInput("z", [2, 16], "FP32")
        z.set_data_from_numpy(np.zeros((2, 16), np.float32))
        y = httpclient.InferInput("y", [2], "INT64")
        y.set_data_from_numpy(np.array([0, 3], np.int64))
        client.infer("model", [z, y])
        (stats,) = client.get_inference_statistics("model")["model_stats"]
        assert stats["name"] == "model" and stats["inference_count"] >= 2
        assert stats["inference_stats"]["success"]["count"] == 1
        assert stats["inference_stats"]["compute_infer"]["ns"] > 0
        assert client.get_inference_statistics()["model_stats"][0]["name"] == "model"
        # Unknown models and endpoints: an error the client reads, not FastAPI's 404 body.
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            client.get_model_config("nope")
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            client.get_inference_statistics("nope")
        with pytest.raises(InferenceServerException, match="no such endpoint"):
            client.get_trace_settings()
    finally:
        client.close()
