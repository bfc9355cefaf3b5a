"""serving.core.metrics and serving.transports.grpc_metrics: Triton's per-model counters under
Triton's names (`nv_inference_*`, counters labelled model and version, parsed back with
prometheus_client's own parser), their meaning on requests merged into one run, failed requests
and a reload; gRPC requests counted by method and status code through the real
`tritonclient.grpc`; and the batch and queue metrics labelled by model."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from serving.app import create_app  # noqa: E402
from serving.core.engine import Engine, EngineConfig  # noqa: E402
from serving.core.metrics import TRITON_COUNTERS, ServingMetrics  # noqa: E402
from serving.core.repository import ModelRepository  # noqa: E402

pytestmark = pytest.mark.serving


def _families(text: str) -> dict:
    """name -> (type, {(model, version): value}) of every family in /metrics text (the parser
    names a counter's samples NAME_total, whatever the text says: see the exact lines below)."""
    out = {}
    for family in text_string_to_metric_families(text):
        samples = {(s.labels.get("model"), s.labels.get("version")): s.value
                   for s in family.samples if s.name in (family.name, family.name + "_total")}
        out[family.name] = (family.type, samples)
    return out


@pytest.fixture
def repo_dir(tiny_onnx, tmp_path):
    root = tmp_path / "models"
    (root / "b" / "1").mkdir(parents=True)
    shutil.copy(tiny_onnx, root / "a.onnx")
    shutil.copy(tiny_onnx, root / "b" / "1" / "model.onnx")
    return root


def test_triton_counters_by_model_and_version_after_http_requests(repo_dir):
    repo = ModelRepository.open(repo_dir, EngineConfig(max_batch=8))
    with TestClient(create_app(repo, max_images=8)) as client:
        for n in (3, 2):
            r = client.post("/v1/generate", json={"model": "a", "class": 0, "n": n})
            assert r.status_code == 200
        body = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16},
                           {"name": "y", "datatype": "INT64", "shape": [1], "data": [1]}]}
        assert client.post("/v2/models/b/infer", json=body).status_code == 200
        text = client.get("/metrics").text
    families = _families(text)
    for name in TRITON_COUNTERS:  # Triton's exact names, as counters, one series per version
        kind, samples = families[name]
        assert kind == "counter" and set(samples) == {("a", "1"), ("b", "1")}, name
        assert f"# TYPE {name} counter\n{name}{{model=\"a\",version=\"1\"}} " in text
    value = {name: families[name][1] for name in TRITON_COUNTERS}
    assert value["nv_inference_request_success"] == {("a", "1"): 2, ("b", "1"): 1}
    assert value["nv_inference_request_failure"] == {("a", "1"): 0, ("b", "1"): 0}
    assert value["nv_inference_count"] == {("a", "1"): 5, ("b", "1"): 1}  # images
    assert value["nv_inference_exec_count"] == {("a", "1"): 2, ("b", "1"): 1}  # runs
    stats = {(e.name, e.version): e for e in repo.engines()}
    a = stats[("a", "1")]
    # Whole microseconds of what the engine measured (the statistics extension's numbers).
    us = {name: value[name][("a", "1")] for name in TRITON_COUNTERS}
    assert us["nv_inference_request_duration_us"] == int(a.stats.success_seconds * 1e6)
    assert us["nv_inference_compute_infer_duration_us"] == int(a.batcher.run_seconds * 1e6)
    assert 0 < value["nv_inference_compute_infer_duration_us"][("a", "1")] \
        <= value["nv_inference_request_duration_us"][("a", "1")]
    assert value["nv_inference_queue_duration_us"][("a", "1")] == int(a.batcher.queue_seconds * 1e6)
    # The batch and queue metrics carry the model too.
    assert families["bigan_batch_size_images"][0] == "histogram"
    assert 'bigan_batch_size_images_count{model="a"} 2.0' in text
    assert 'bigan_batch_size_images_count{model="b"} 1.0' in text
    assert 'bigan_images_generated_total{model="a"} 5.0' in text
    assert families["bigan_queue_depth"][1] == {("a", None): 0, ("b", None): 0}
    assert families["bigan_queue_images"][1] == {("a", None): 0, ("b", None): 0}


def test_merged_requests_count_one_execution_and_the_run_once_per_request(tiny_onnx):
    """Triton's semantics: two requests in one batch are 2 requests, 1 execution, and each spent
    the run's time computing; a failed request counts as a failure, not a success."""
    engine = Engine(tiny_onnx, EngineConfig(max_batch=8, max_wait_ms=100))
    metrics = ServingMetrics()
    metrics.track_engine(engine)
    engine.warm_up()

    async def scenario():
        await engine.start()
        try:
            z = engine.latents([1, 2], None)
            first = asyncio.create_task(engine.submit(z, np.array([0, 1])))
            second = asyncio.create_task(engine.submit(z[:1], np.array([2])))
            await asyncio.gather(first, second)
            with pytest.raises(Exception):  # class 9 of 4: the graph's gather fails
                await engine.submit(z[:1], np.array([9]))
        finally:
            await engine.stop()

    asyncio.run(scenario())
    t = metrics.triton
    value = {name: t.value("model", "1", name) for name in TRITON_COUNTERS}
    assert engine.batcher.runs == 1  # the bad request's run failed: not an execution
    assert value["nv_inference_request_success"] == 2
    assert value["nv_inference_request_failure"] == 1
    assert value["nv_inference_count"] == 3 and value["nv_inference_exec_count"] == 1
    compute_us = int(2 * engine.batcher.run_seconds * 1e6)
    assert value["nv_inference_compute_infer_duration_us"] == compute_us


def test_a_reload_does_not_reset_the_counters(repo_dir, tiny_onnx):
    import onnx

    repo = ModelRepository.open(repo_dir, EngineConfig(max_batch=4))
    with TestClient(create_app(repo, max_images=4)) as client:
        assert client.post("/v1/generate", json={"model": "a", "class": 0}).status_code == 200
        model = onnx.load(str(tiny_onnx))
        model.doc_string = "a changed file"  # a new sha256: a new engine for version 1
        onnx.save(model, str(repo_dir / "a.onnx"))
        assert client.post("/v2/repository/models/a/load").status_code == 200
        assert client.post("/v1/generate", json={"model": "a", "class": 0}).status_code == 200
        families = _families(client.get("/metrics").text)
    assert families["nv_inference_request_success"][1][("a", "1")] == 2
    assert families["nv_inference_exec_count"][1][("a", "1")] == 2


def test_cache_hits_are_successful_requests_but_no_inference(tiny_onnx):
    with TestClient(create_app(Engine(tiny_onnx), max_images=4, cache_mb=8)) as client:
        for _ in range(2):
            assert client.post("/v1/generate", json={"class": 0, "seed": 5}).status_code == 200
        families = _families(client.get("/metrics").text)
    assert families["nv_inference_request_success"][1][("model", "1")] == 2
    assert families["nv_inference_count"][1][("model", "1")] == 1


def test_grpc_requests_are_counted_by_method_and_code(repo_dir):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    repo = ModelRepository.open(repo_dir, EngineConfig(max_batch=8))
    with TestClient(create_app(repo, max_images=8, grpc_port=0)) as http:
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{http.app.state.grpc_port}")
        try:
            z = grpcclient.InferInput("z", [2, 16], "FP32")
            z.set_data_from_numpy(np.zeros((2, 16), np.float32))
            y = grpcclient.InferInput("y", [2], "INT64")
            y.set_data_from_numpy(np.array([0, 1], np.int64))
            grpc.infer("a", [z, y])
            assert grpc.is_server_ready()
            with pytest.raises(InferenceServerException, match="unknown model"):
                grpc.infer("nope", [z, y])
        finally:
            grpc.close()
        text = http.get("/metrics").text
    counted = {(s.labels["method"], s.labels["code"]): s.value
               for f in text_string_to_metric_families(text) if f.name == "bigan_grpc_requests"
               for s in f.samples if s.name == "bigan_grpc_requests_total"}
    assert counted == {("ModelInfer", "OK"): 1, ("ServerReady", "OK"): 1,
                       ("ModelInfer", "NOT_FOUND"): 1}
    assert 'bigan_grpc_request_duration_seconds_count{method="ModelInfer"} 2.0' in text
    families = _families(text)  # inference over gRPC reaches Triton's counters like HTTP's
    assert families["nv_inference_request_success"][1][("a", "1")] == 1
    assert families["nv_inference_count"][1][("a", "1")] == 2
