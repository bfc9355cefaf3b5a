"""serving.app and serving.transports (v1, kserve_http) through starlette's TestClient: images
equal `bigan sample`'s for the same (class, seed, psi), every format, 4xx (never 5xx) for bad
input, 503 + Retry-After for a full queue, metrics, health, the v2 protocol in JSON and binary form, no torch in the server, and
the `bigan serve` command line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from serving.app import create_app  # noqa: E402
from serving.core.batcher import QueueFull  # noqa: E402
from serving.core.engine import Engine, EngineConfig  # noqa: E402

pytestmark = pytest.mark.serving


@pytest.fixture
def client(tiny_onnx):
    engine = Engine(tiny_onnx, EngineConfig(max_batch=8, max_wait_ms=1))
    with TestClient(create_app(engine, max_images=16)) as c:
        yield c


@pytest.fixture(scope="module")
def torch_G(tiny_checkpoint):
    from bigan.generation import load_ema_generator

    G, names, _ = load_ema_generator(tiny_checkpoint)
    return G, names


def _npy(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def _png(content: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(int) - b.astype(int)).max())


# --- v1: the images are bigan sample's ------------------------------------------------------------

@pytest.mark.parametrize("psi", [0.5, 1.3])
def test_generate_equals_bigan_sample_for_class_seed_psi(client, torch_G, psi):
    from bigan.pictures import to_uint8
    from bigan.generation import class_grid, generate

    G, names = torch_G
    body = {"class": names[2], "n": 5, "truncation": psi, "seed": 7}
    images = _npy(client.post("/v1/generate", json={**body, "format": "npy"}))
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    # Image i uses seed + i, exactly as bigan sample (torch, eval mode) draws it.
    reference = to_uint8(generate(G, [2] * 5, [7 + i for i in range(5)], psi))
    assert _max_diff(images, reference) <= 1  # export parity: at most one uint8 level
    # The PNG grid is bigan sample's class grid (one row, column j = seed + j).
    grid = _png(client.post("/v1/generate", json={**body, "columns": 5}).content)
    assert _max_diff(grid, class_grid(G, [2], 5, 7, psi)) <= 1
    # The same image whatever batch it is in: image 3 alone equals image 3 of the five.
    alone = _npy(client.post("/v1/generate", json={**body, "seed": 10, "n": 1, "format": "npy"}))
    assert _max_diff(alone[0], images[3]) <= 1


def test_truncation_defaults_to_the_models_recommendation_and_null_disables_it(client, torch_G):
    from bigan.pictures import to_uint8
    from bigan.generation import generate

    G, _ = torch_G
    recommended = client.get("/v1/models").json()["models"][0]["metadata"]["recommended_truncation"]
    assert recommended is None  # `bigan export` without --truncation recommends none
    base = {"class": 1, "n": 2, "seed": 3, "format": "npy"}
    default = client.post("/v1/generate", json=base)
    assert default.headers["x-truncation"] == "none"
    untruncated = _npy(client.post("/v1/generate", json={**base, "truncation": None}))
    assert np.array_equal(_npy(default), untruncated)
    assert _max_diff(untruncated, to_uint8(generate(G, [1, 1], [3, 4], None))) <= 1
    truncated = _npy(client.post("/v1/generate", json={**base, "truncation": 1.0}))
    assert not np.array_equal(untruncated, truncated)


def test_json_format_has_seeds_and_base64_pngs_and_png_is_a_grid(client):
    import base64

    r = client.post("/v1/generate", json={"class": "1", "n": 3, "seed": 40, "format": "json"})
    assert r.status_code == 200
    body = r.json()
    assert body["seeds"] == [40, 41, 42] and body["class_id"] == 1 and body["shape"] == [3, 32, 32, 3]
    pngs = [_png(base64.b64decode(s)) for s in body["images"]]
    npy = _npy(client.post("/v1/generate", json={"class": 1, "n": 3, "seed": 40, "format": "npy"}))
    assert np.array_equal(np.stack(pngs), npy)  # PNG is lossless
    grid = client.post("/v1/generate", json={"class": 1, "n": 4, "seed": 40})
    assert grid.headers["content-type"] == "image/png" and grid.headers["x-seed"] == "40"
    assert _png(grid.content).shape == (2 + 2 * 34, 2 + 2 * 34, 3)  # 2x2 grid, 2 px gaps
    random_seed = client.post("/v1/generate", json={"class": 0})  # seed omitted: one is drawn
    assert random_seed.status_code == 200 and int(random_seed.headers["x-seed"]) >= 0


def test_png_and_json_bodies_are_encoded_off_the_event_loop(client, monkeypatch):
    # zlib takes milliseconds an image: on the event loop it would hold up every other request
    # and the start of the next batch. npy (a copy) stays on the loop.
    import asyncio

    from serving.transports import v1

    on_loop = {}

    def recording(name, fn):
        def encode(*args, **kwargs):
            try:
                asyncio.get_running_loop()
                on_loop[name] = True
            except RuntimeError:  # no loop in this thread: a worker thread
                on_loop[name] = False
            return fn(*args, **kwargs)
        return encode

    for name in ("grid_png", "base64_pngs", "npy_bytes"):
        monkeypatch.setattr(v1.encode, name, recording(name, getattr(v1.encode, name)))
    for fmt in ("png", "json", "npy"):
        r = client.post("/v1/generate", json={"class": 1, "n": 2, "seed": 3, "format": fmt})
        assert r.status_code == 200, r.text
    r = client.post("/v1/interpolate", json={"class": 1, "seed_a": 1, "seed_b": 2, "steps": 3})
    assert r.status_code == 200, r.text
    assert on_loop == {"grid_png": False, "base64_pngs": False, "npy_bytes": True}


def test_a_cheap_latent_is_drawn_on_the_event_loop_and_gives_the_same_image(tiny_onnx, monkeypatch):
    # One untruncated (or psi >= 1) "resample" row costs less than the worker-thread hop that
    # would draw it; a costlier draw (small psi, several rows) still leaves the loop.
    import asyncio

    engine = Engine(tiny_onnx, EngineConfig(max_batch=8, max_wait_ms=1))
    on_loop = []
    draw = engine.latents

    def recording(seeds, psi):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:  # no loop in this thread: a worker thread
            on_loop.append(False)
        return draw(seeds, psi)

    monkeypatch.setattr(engine, "latents", recording)
    bodies = [{"n": 1, "truncation": None}, {"n": 1, "truncation": 1.0},
              {"n": 1, "truncation": 0.5}, {"n": 2, "truncation": None}]
    with TestClient(create_app(engine, max_images=16, cache_mb=0)) as c:
        images = [_npy(c.post("/v1/generate", json={"class": 1, "seed": 3, "format": "npy", **b}))
                  for b in bodies]
    assert on_loop == [True, True, False, False]
    for body, got in zip(bodies, images):  # the latents' images, whichever thread drew them
        z = draw([3 + i for i in range(body["n"])], body["truncation"])
        assert np.array_equal(got, engine.run(z, np.full(body["n"], 1, np.int64)))


def test_npy_bodies_are_the_files_np_save_writes():
    """npy_bytes keeps each shape's header after its first np.save: later bodies (a cached
    header plus the raw bytes) are byte for byte np.save's, for other shapes and dtypes too, and
    arrays that are not C-ordered still go through np.save."""
    from serving.transports import images

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (n, 8, 6, 3), dtype=np.uint8) for n in (1, 2, 1, 2, 64)]
    arrays += [rng.random((3, 4), dtype=np.float32), np.zeros((0, 5, 5, 3), np.uint8),
               rng.integers(0, 256, (4, 5, 3), dtype=np.uint8).transpose(1, 0, 2),  # strided
               np.asfortranarray(rng.integers(0, 256, (5, 4), dtype=np.uint8)),
               np.zeros(2, "V8"), np.zeros(2, [("a", "<i4"), ("b", "<i4")]),  # both "|V8"
               np.zeros(2, [("x", "<f4"), ("y", "<f4")]), np.zeros(3, "M8[s]"),
               np.ones((2, 2), ">f2"), np.ones(3, bool)]
    for a in arrays * 2:  # the second pass finds every C-ordered shape's header kept
        expected = io.BytesIO()
        np.save(expected, a, allow_pickle=False)
        body = images.npy_bytes(a)
        assert body == expected.getvalue()
        assert np.array_equal(np.load(io.BytesIO(body)), a)
    assert ((1, 8, 6, 3), "|u1") in images._NPY_HEADERS


@pytest.mark.parametrize("body, status, message", [
    ({"class": "zebra"}, 422, "unknown class name 'zebra'"),
    ({"class": 4}, 422, r"class id 4 is outside 0..3"),
    ({"class": -1}, 422, "outside"),
    ({"class": 0, "truncation": 0}, 422, "greater than or equal to 0.01"),
    ({"class": 0, "truncation": -1}, 422, "greater than or equal to 0.01"),
    ({"class": 0, "truncation": 1e-9}, 422, "greater than or equal to 0.01"),
    ({"class": 0, "truncation": 4.5}, 422, "less than or equal to 4"),
    ({"class": 0, "n": 0}, 422, "greater than or equal to 1"),
    ({"class": 0, "n": 17}, 422, "above this server's limit of 16"),
    ({"class": 0, "seed": -3}, 422, "greater than or equal to 0"),
    ({"class": 0, "seed": 2**63 - 1, "n": 2}, 422, "seed \\+ n - 1"),
    ({"class": 0, "format": "bmp"}, 422, "png"),
    ({"class": 0, "colour": "red"}, 422, "Extra inputs"),
    ({}, 422, "class"),
])
def test_bad_v1_requests_get_4xx_with_a_message(client, body, status, message):
    import re

    r = client.post("/v1/generate", json=body)
    assert r.status_code == status
    assert re.search(message, json.dumps(r.json()["detail"])), r.json()


def test_malformed_json_gets_422(client):
    r = client.post("/v1/generate", content=b'{"class": 0,',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in json.dumps(r.json())


_LEAN_OR_NOT = [  # (body, content type): what /v1/generate gets, plainly valid or not
    (b'{"class": 1, "n": 2, "seed": 5, "format": "npy"}', "application/json"),
    (b'{"class": 1, "seed": 5, "format": "npy"}', "application/json"),  # the cache's hit
    (b'{"class": "1", "n": 1, "seed": 6, "truncation": null, "format": "json"}',
     "application/json"),
    (b'{"class": 2, "seed": 7, "truncation": 0.5, "columns": 1, "n": 2}', "application/json"),
    (b'{"class": 3, "n": 1, "seed": 8, "format": "npy"}', "application/json; charset=utf-8"),
    (b'{"class": 3, "n": 1, "seed": 8, "format": "npy"}', None),
    (b'{"class": 3, "n": 1, "seed": 8}', "text/plain"),
    (b'{"class": "zebra"}', "application/json"),
    (b'{"class": 0, "n": 17}', "application/json"),
    (b'{"class": 0, "truncation": NaN}', "application/json"),
    (b'{"class": 0, "seed": 1' + b"0" * 5000 + b"}", "application/json"),
    (b'{"class": true}', "application/json"),
    (b'{"class": 0, "colour": "red"}', "application/json"),
    (b'{"class": 0,', "application/json"),
    (b'[{"class": 0}]', "application/json"),
    (b"", "application/json"),
    (b'\xff{"class": 0}', "application/json"),
]


def test_the_lean_generate_path_answers_as_fastapis_handler_does(tiny_onnx, monkeypatch):
    """/v1/generate's plainly valid requests skip FastAPI's routing and handler plumbing
    (`v1.LeanGenerate`); every request, valid or not, gets the same status, headers, body and
    metrics as through FastAPI's handler alone."""
    from serving.transports import json_body, v1

    lean = []

    def spied(body, schema):
        lean.append(json_body.plainly_valid(body, schema) is not None)
        return None if forced_full else json_body.plainly_valid(body, schema)

    monkeypatch.setattr(v1, "plainly_valid", spied)
    answers, metrics = {}, {}
    for forced_full in (True, False):
        lean.clear()
        engine = Engine(tiny_onnx, EngineConfig(max_batch=8, max_wait_ms=1))
        with TestClient(create_app(engine, max_images=16)) as c:
            got = []
            for body, content_type in _LEAN_OR_NOT:
                headers = {} if content_type is None else {"content-type": content_type}
                r = c.post("/v1/generate", content=body, headers=headers)
                assert r.status_code < 500, r.text
                got.append((r.status_code, dict(r.headers), r.content))
            answers[forced_full] = got
            metrics[forced_full] = [line for line in c.get("/metrics").text.splitlines()
                                    if line.startswith(("bigan_http_requests_total",
                                                        "bigan_cache_", "bigan_images_",
                                                        "nv_inference_count",
                                                        "nv_inference_request_success"))
                                    and "_created" not in line]  # when the series began
        # Only bodies under exactly application/json are judged (the other content types go
        # to FastAPI unread); schema-valid ones take the lean path (an unknown class and n
        # above the limit too: the endpoint refuses those), the rest FastAPI reads.
        assert lean == [True] * 4 + [True] * 2 + [False] * 8
    assert answers[False] == answers[True]
    # without a JSON content type FastAPI reads no JSON (422); bytes that are not UTF-8: 400
    assert [a[0] for a in answers[False]] == [200] * 5 + [422] * 11 + [400]
    assert metrics[False] == metrics[True] and metrics[False]


def test_a_body_sent_in_pieces_is_answered_as_a_whole_one(tiny_onnx):
    """A body that arrives in more than one ASGI message is FastAPI's to read (`v1.LeanGenerate`
    hands it on with the part already read): the same answer as the body sent whole, valid or
    not. Driven at the ASGI level, since TestClient joins a streamed body into one message."""
    import asyncio

    engine = Engine(tiny_onnx, EngineConfig(max_batch=8, max_wait_ms=1))
    app = create_app(engine, max_images=16, cache_mb=0)  # each answer drawn, none from the cache

    async def post(*pieces: bytes) -> tuple[int, dict, bytes]:
        messages = [{"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
                    for i, piece in enumerate(pieces)]
        sent = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/generate",
                 "raw_path": b"/v1/generate", "root_path": "", "query_string": b"",
                 "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        return (start["status"], dict(start["headers"]),
                b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))

    async def answers():
        body, bad = b'{"class": 1, "n": 2, "seed": 11, "format": "npy"}', b'{"class": 1, "n": 0}'
        try:
            return [await asyncio.wait_for(post(*pieces), 60) for pieces in (
                [body], [body[:9], body[9:30], body[30:]], [bad], [bad[:5], bad[5:]])]
        finally:
            await engine.batcher.stop()

    whole, pieces, bad_whole, bad_pieces = asyncio.run(answers())
    assert whole[0] == 200 and whole == pieces
    assert bad_whole[0] == 422 and bad_whole == bad_pieces and b'"n"' in bad_pieces[2]


def test_a_full_queue_answers_503_with_retry_after(client, monkeypatch):
    async def full(z, y, psi=None):
        raise QueueFull(64, retry_after_s=2)

    monkeypatch.setattr(client.app.state.server.repository.get("model"), "submit", full)
    r = client.post("/v1/generate", json={"class": 0})
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert "already waiting" in r.json()["detail"]
    v2 = client.post("/v2/models/model/infer", json=_v2_body(np.zeros((1, 16)), [0]))
    assert v2.status_code == 503 and v2.headers["retry-after"] == "2" and "error" in v2.json()


# --- health, models, metrics ------------------------------------------------------------------------

def test_health_models_and_metrics(client, tiny_onnx):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": "model"}
    model = client.get("/v1/models").json()["models"][0]
    assert model["name"] == "model" and model["provider"] == "CPUExecutionProvider"
    assert model["metadata"]["class_names"] == ["disc-0", "square-1", "triangle-2", "ring-3"]
    assert model["max_images"] == 16
    client.post("/v1/generate", json={"class": 0, "n": 3})
    client.post("/v1/generate", json={"class": "nope"})
    text = client.get("/metrics").text
    assert 'bigan_http_requests_total{method="POST",route="/v1/generate",status="200"} 1.0' in text
    assert 'bigan_http_requests_total{method="POST",route="/v1/generate",status="422"} 1.0' in text
    assert 'bigan_batch_size_images_bucket{le="4.0",model="model"} 1.0' in text  # 3 images
    assert 'bigan_batch_size_images_count{model="model"} 1.0' in text
    assert 'bigan_http_request_duration_seconds_count{route="/v1/generate"} 2.0' in text
    assert 'bigan_batch_duration_seconds_count{model="model"} 1.0' in text
    assert 'bigan_queue_depth{model="model"} 0.0' in text
    assert 'bigan_images_generated_total{model="model"} 3.0' in text
    assert 'nv_inference_count{model="model",version="1"} 3' in text


def test_readyz_is_503_before_the_lifespan_starts_the_batcher(tiny_onnx):
    app = create_app(Engine(tiny_onnx), max_images=4)
    c = TestClient(app)  # not entered: no lifespan, the batcher is not running
    assert c.get("/readyz").status_code == 503
    assert c.get("/v2/health/ready").status_code == 503
    assert c.get("/healthz").status_code == 200


def test_the_web_page_and_its_script_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text and "http" not in page.text.split("<body>")[1]
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "/v1/generate" in script.text


# --- KServe v2 -------------------------------------------------------------------------------------

def _v2_body(z, y, binary_output=False):
    body = {"id": "req-1", "inputs": [
        {"name": "z", "datatype": "FP32", "shape": list(np.shape(z)),
         "data": np.asarray(z, np.float32).ravel().tolist()},
        {"name": "y", "datatype": "INT64", "shape": [len(y)], "data": list(y)}]}
    if binary_output:
        body["outputs"] = [{"name": "images", "parameters": {"binary_data": True}}]
    return body


def test_v2_metadata_and_health(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "model_repository",
                                                      "statistics"]
    meta = client.get("/v2/models/model").json()
    assert meta["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, 16]},
                              {"name": "y", "datatype": "INT64", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert client.get("/v2/models/model/versions/1").json() == meta
    assert client.get("/v2/models/model/ready").json() == {"name": "model", "ready": True}
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2/models/model/versions/2/ready").status_code == 404


def test_v2_infer_json_and_binary_match_v1(client):
    from bigan import sampling

    z, y = sampling.latents([5, 6], 16, 0.7), [3, 0]
    r = client.post("/v2/models/model/infer", json=_v2_body(z, y))
    assert r.status_code == 200
    out = r.json()
    assert out["id"] == "req-1" and out["model_name"] == "model"
    (images,) = out["outputs"]
    assert images["name"] == "images" and images["datatype"] == "UINT8"
    assert images["shape"] == [2, 32, 32, 3]
    from_json = np.asarray(images["data"], np.uint8).reshape(images["shape"])
    v1 = _npy(client.post("/v1/generate", json={"class": 3, "seed": 5, "truncation": 0.7,
                                                 "format": "npy"}))
    assert _max_diff(from_json[:1], v1) <= 1
    # Binary tensor extension, both ways.
    header = json.dumps({"inputs": [
        {"name": "z", "datatype": "FP32", "shape": [2, 16], "parameters": {"binary_data_size": 128}},
        {"name": "y", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}}],
        "parameters": {"binary_data_output": True}}).encode()
    r = client.post("/v2/models/model/versions/1/infer",
                    content=header + z.tobytes() + np.asarray(y, np.int64).tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(header)),
                             "content-type": "application/octet-stream"})
    assert r.status_code == 200
    n = int(r.headers["inference-header-content-length"])
    result = json.loads(r.content[:n])
    assert result["outputs"][0]["parameters"]["binary_data_size"] == 2 * 32 * 32 * 3
    from_binary = np.frombuffer(r.content[n:], np.uint8).reshape(2, 32, 32, 3)
    assert np.array_equal(from_binary, from_json)


@pytest.mark.parametrize("change, message", [
    (lambda b: b["inputs"][0].update(datatype="FP64"), "must have datatype FP32"),
    (lambda b: b["inputs"][0].update(shape=[2, 15]), "data must hold 30 FP32"),
    (lambda b: b["inputs"][0].update(shape=[1, 32], data=[0.0] * 32), "do not fit z"),
    (lambda b: b["inputs"][1].update(data=[0, 4]), r"must lie in 0..3"),
    (lambda b: b["inputs"][1].update(data=[0.5, 1]), "INT64 numbers"),
    (lambda b: b["inputs"][1].update(data=["a", "b"]), "INT64 numbers"),
    (lambda b: b["inputs"].pop(), "exactly 'z' and 'y'"),
    (lambda b: b["inputs"].append(dict(b["inputs"][0])), "given twice"),
    (lambda b: b["inputs"][0].update(name="x"), "unknown input 'x'"),
    (lambda b: b["inputs"][0].update(shape=[-2, 16]), "non-negative"),
    (lambda b: b["inputs"][1].pop("data"), "neither 'data'"),
    (lambda b: b.update(outputs=[{"name": "images_float"}]), "the only output is 'images'"),
    (lambda b: b.update(inputs="z"), "'inputs' list"),
])
def test_bad_v2_requests_get_400_with_an_error(client, change, message):
    import re

    body = _v2_body(np.zeros((2, 16)), [0, 1])
    change(body)
    r = client.post("/v2/models/model/infer", json=body)
    assert r.status_code == 400 and re.search(message, r.json()["error"]), r.json()


def test_v2_rejects_bad_framing_batches_and_models(client):
    too_many = _v2_body(np.zeros((17, 16)), [0] * 17)
    assert "1..16" in client.post("/v2/models/model/infer", json=too_many).json()["error"]
    assert client.post("/v2/models/model/infer", content=b"\xff{").status_code == 400
    for length in ("x", "0", "999"):
        r = client.post("/v2/models/model/infer", content=b"{}",
                        headers={"Inference-Header-Content-Length": length})
        assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    header = json.dumps({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 16],
                                     "parameters": {"binary_data_size": 64}}]}).encode()
    r = client.post("/v2/models/model/infer", content=header + b"\0" * 10,
                    headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400 and "ends before" in r.json()["error"]
    nan = _v2_body(np.full((1, 16), np.nan), [0])
    nan["inputs"][0]["data"] = None
    assert client.post("/v2/models/model/infer", json=nan).status_code == 400
    r = client.post("/v2/models/other/infer", json=_v2_body(np.zeros((1, 16)), [0]))
    assert r.status_code == 404 and "serves 'model'" in r.json()["error"]


def test_v2_refuses_oversized_bodies_before_buffering_them(client):
    huge = b"{" + b" " * (3 << 20) + b"}"  # 3 MiB: far above 16 images x 16 floats as text
    r = client.post("/v2/models/model/infer", content=huge)
    assert r.status_code == 413 and "limit of" in r.json()["error"]

    def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(48):
            yield b" " * (64 << 10)
    r = client.post("/v2/models/model/infer", content=chunks())
    assert r.status_code == 413 and "send fewer images" in r.json()["error"]
    ok = client.post("/v2/models/model/infer", json=_v2_body(np.zeros((16, 16)), [0] * 16))
    assert ok.status_code == 200


def test_v1_refuses_oversized_bodies_before_buffering_them(client):
    body = {"class": 1, "n": 1, "seed": 3, "format": "npy", "pad": "x" * (100 << 10)}
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 413 and "limit of 65536 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit applies while streaming
        yield b'{"class": 1, "n": 1, "pad": "'
        for _ in range(4):
            yield b"x" * (32 << 10)
        yield b'"}'
    r = client.post("/v1/generate", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit of" in r.json()["detail"]
    assert client.post("/v1/generate", json={"class": 1, "format": "npy"}).status_code == 200
    text = client.get("/metrics").text
    # refused by Content-Length before routing, and by the streamed size inside the route
    assert 'bigan_http_requests_total{method="POST",route="unmatched",status="413"} 1.0' in text
    assert 'bigan_http_requests_total{method="POST",route="/v1/generate",status="413"} 1.0' in text
    assert client.get("/no/such/page").status_code == 404
    assert 'route="unmatched",status="404"' in client.get("/metrics").text


# --- no torch, the command line ----------------------------------------------------------------------

def test_the_server_runs_a_request_with_torch_unimportable(tiny_onnx):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np, io
        from fastapi.testclient import TestClient
        import serving.server, serving.ray_serve
        from serving.server import ServeConfig, build_app
        app = build_app(ServeConfig(model={str(tiny_onnx)!r}))
        with TestClient(app) as c:
            r = c.post("/v1/generate", json={{"class": 1, "n": 2, "seed": 0, "format": "npy"}})
            assert r.status_code == 200, r.text
            assert np.load(io.BytesIO(r.content)).shape == (2, 32, 32, 3)
            assert c.post("/v2/models/model/infer", json={{"inputs": [
                {{"name": "z", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}},
                {{"name": "y", "datatype": "INT64", "shape": [1], "data": [0]}}]}}).status_code == 200
        from bigan.cli import build_parser  # `bigan serve` itself must start without torch
        assert build_parser().parse_args(["serve", "m.onnx"]).func.__name__ == "_serve"
        heavy = [m for m in ("torch", "onnx", "onnxscript", "bigan.train.trainer", "bigan.checkpoint.store", "bigan.models")
                 if sys.modules.get(m) is not None]
        assert not heavy, heavy
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_serve_command_help_and_a_bad_model_file(tmp_path, capsys):
    from bigan.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--max-batch", "--max-wait-ms", "--workers", "--ray",
                   "--max-queue", "--max-images", "--provider"):
        assert option in text
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert main(["serve", str(bad), "--port", "0"]) == 2
    assert f"bigan serve: error: {bad}: onnxruntime cannot load this file" in capsys.readouterr().err
    assert main(["serve", str(bad), "--max-batch", "0"]) == 2
    assert "max_batch=0 must be >= 1" in capsys.readouterr().err


def test_serve_flags_and_create_app_take_their_defaults_from_the_config():
    """The serve defaults are written once (ServeConfig, EngineConfig): the flags are generated
    from the fields, and create_app's keyword defaults are the same values."""
    import dataclasses
    import inspect

    from bigan.cli import build_parser
    from serving.config import EngineConfig, ServeConfig, serve_config_from_args

    parser = build_parser()
    assert serve_config_from_args(parser.parse_args(["serve", "m.onnx"])) == ServeConfig("m.onnx")
    args = parser.parse_args(["serve", "m.onnx", "--body-timeout", "3", "--grpc-port", "8001",
                              "--threads", "2", "--trt-cache", "/x", "--cuda-graphs",
                              "--max-wait-ms", "7", "--provider", "cpu", "--name", "n"])
    cfg = serve_config_from_args(args)
    assert (cfg.body_timeout_s, cfg.grpc_port, cfg.name) == (3.0, 8001, "n")
    assert cfg.engine == EngineConfig(threads=2, trt_cache_dir="/x", cuda_graphs=True,
                                      max_wait_ms=7.0, provider="cpu")
    serve_help = next(a for a in parser._subparsers._group_actions[0].choices.items()
                      if a[0] == "serve")[1].format_help()
    for owner in (ServeConfig, EngineConfig):
        for f in dataclasses.fields(owner):
            if f.name not in ("model", "engine"):
                assert (f.metadata["flag"] or "--" + f.name.replace("_", "-")) in serve_help
    defaults = {n: p.default for n, p in inspect.signature(create_app).parameters.items()}
    assert defaults["max_images"] == ServeConfig.max_images == 64
    assert defaults["body_timeout_s"] == ServeConfig.body_timeout_s
    assert defaults["cache_mb"] == ServeConfig.cache_mb and defaults["grpc_host"] == ServeConfig.host
