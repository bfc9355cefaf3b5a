"""serving.transports.grpc_service: the KServe v2 gRPC protocol through the real `tritonclient.grpc`, against
a server holding two models (the service runs in the app's lifespan, over the same engines as
HTTP): health, metadata, config, infer with raw and typed contents equal to HTTP's answers, the
same limits with errors as gRPC status codes, the bidirectional stream, statistics and the
repository extension."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
grpcclient = pytest.importorskip("tritonclient.grpc")

from tritonclient.utils import InferenceServerException  # noqa: E402

from serving.client import free_port, started_server  # noqa: E402

pytestmark = pytest.mark.serving

from tests.helpers import ROOT, http_and_grpc  # noqa: E402


@pytest.fixture
def servers(tiny_onnx, tmp_path):
    """(HTTP TestClient, tritonclient.grpc client) of one app serving models a and b/1, b/2."""
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(tiny_onnx, root / "a.onnx")
    for version in ("1", "2"):
        (root / "b" / version).mkdir(parents=True)
        shutil.copy(tiny_onnx, root / "b" / version / "model.onnx")
    with http_and_grpc(root) as both:
        yield both


def _inputs(z: np.ndarray, y: np.ndarray):
    zin = grpcclient.InferInput("z", list(z.shape), "FP32")
    zin.set_data_from_numpy(z)
    yin = grpcclient.InferInput("y", list(y.shape), "INT64")
    yin.set_data_from_numpy(y)
    return [zin, yin]


def test_health_metadata_and_config(servers):
    _, grpc = servers
    assert grpc.is_server_live() and grpc.is_server_ready()
    assert grpc.is_model_ready("a") and grpc.is_model_ready("b", "1")
    assert not grpc.is_model_ready("c") and not grpc.is_model_ready("b", "3")
    assert grpc.get_server_metadata(as_json=True)["name"] == "bigan"
    meta = grpc.get_model_metadata("b", as_json=True)
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "z", "datatype": "FP32", "shape": ["-1", "16"]}
    assert meta["outputs"][0]["shape"] == ["-1", "32", "32", "3"]
    config = grpc.get_model_config("a", as_json=True)["config"]
    assert config["max_batch_size"] == 8 and config["input"][0]["data_type"] == "TYPE_FP32"
    with pytest.raises(InferenceServerException, match="unknown model 'c'") as info:
        grpc.get_model_metadata("c")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_both_transports_advertise_the_extensions_both_implement(servers):
    # Issue 32: HTTP advertised binary_tensor_data and gRPC model_repository and statistics,
    # though both implement all three (each is exercised on both transports in these files).
    http, grpc = servers
    over_http = http.get("/v2").json()
    over_grpc = grpc.get_server_metadata(as_json=True)
    assert sorted(over_http["extensions"]) == sorted(over_grpc["extensions"]) == [
        "binary_tensor_data", "model_repository", "statistics"]
    assert over_http["version"] == over_grpc["version"]


def test_infer_equals_http_and_errors_map_to_status_codes(servers):
    from bigan import sampling

    http, grpc = servers
    z, y = sampling.latents([3, 4, 5], 16, 0.8), np.array([0, 2, 3], np.int64)
    result = grpc.infer("b", _inputs(z, y), model_version="1", request_id="r-7",
                        outputs=[grpcclient.InferRequestedOutput("images")])
    images = result.as_numpy("images")
    response = result.get_response(as_json=True)
    assert response["model_name"] == "b" and response["model_version"] == "1"
    assert response["id"] == "r-7"
    body = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [3, 16],
                        "data": z.ravel().tolist()},
                       {"name": "y", "datatype": "INT64", "shape": [3], "data": y.tolist()}]}
    over_http = http.post("/v2/models/b/versions/1/infer", json=body).json()["outputs"][0]
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, np.asarray(over_http["data"], np.uint8).reshape(3, 32, 32, 3))
    assert grpc.infer("b", _inputs(z, y)).get_response().model_version == "2"  # highest

    def status(inputs, model="a", **kwargs) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as info:
            grpc.infer(model, inputs, **kwargs)
        return info.value.status(), info.value.message()

    code, message = status(_inputs(z, np.array([0, 1, 4], np.int64)))
    assert code == "StatusCode.INVALID_ARGUMENT" and "must lie in 0..3" in message
    code, message = status(_inputs(np.zeros((9, 16), np.float32), np.zeros(9, np.int64)))
    assert code == "StatusCode.INVALID_ARGUMENT" and "1..8" in message  # the same limit as HTTP
    code, message = status(_inputs(np.full((1, 16), np.nan, np.float32), np.zeros(1, np.int64)))
    assert code == "StatusCode.INVALID_ARGUMENT" and "NaN" in message
    deep = grpcclient.InferInput("z", [1, 16], "FP32")
    deep.set_data_from_numpy(np.zeros((1, 16), np.float32))
    del deep._input.shape[:]  # then declare a shape NumPy cannot even make
    deep._input.shape.extend([1] * 65 + [16])
    code, message = status([deep, _inputs(z, y)[1]])
    assert code == "StatusCode.INVALID_ARGUMENT" and "must have 2 dimensions" in message
    code, message = status(_inputs(z, y), model="c")
    assert code == "StatusCode.NOT_FOUND" and "unknown model 'c'" in message
    code, message = status(_inputs(z, y), model="b", model_version="3")
    assert code == "StatusCode.NOT_FOUND"
    code, message = status(_inputs(z, y), outputs=[grpcclient.InferRequestedOutput("x")])
    assert code == "StatusCode.INVALID_ARGUMENT" and "the only output is 'images'" in message


def test_typed_contents_are_read_too(servers):
    from tritonclient.grpc import service_pb2

    _, grpc = servers
    request = service_pb2.ModelInferRequest(model_name="a")
    z = request.inputs.add(name="z", datatype="FP32", shape=[1, 16])
    z.contents.fp32_contents.extend([0.1] * 16)
    y = request.inputs.add(name="y", datatype="INT64", shape=[1])
    y.contents.int64_contents.append(2)
    response = grpc._client_stub.ModelInfer(request)
    assert list(response.outputs[0].shape) == [1, 32, 32, 3]
    assert len(response.raw_output_contents[0]) == 32 * 32 * 3


def test_the_stream_answers_every_request_and_reports_errors_in_band(servers):
    """tritonclient.grpc's stream API (start_stream / async_stream_infer): each answer equals the
    unary call's, a bad request gets an error on the stream and the requests after it still run."""
    import queue

    from bigan import sampling

    _, grpc = servers
    answers: queue.Queue = queue.Queue()
    grpc.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = {}
    for k in range(4):
        z = sampling.latents([10 * k, 10 * k + 1], 16, 0.8)
        y = np.array([k % 4, (k + 1) % 4], np.int64)
        sent[f"s-{k}"] = grpc.infer("a", _inputs(z, y)).as_numpy("images")
        grpc.async_stream_infer("a", _inputs(z, y), request_id=f"s-{k}")
        if k == 1:  # a class the model does not have, then an unknown model
            grpc.async_stream_infer("a", _inputs(z, np.array([0, 9], np.int64)),
                                    request_id="bad-class")
            grpc.async_stream_infer("c", _inputs(z, y), request_id="bad-model")
    grpc.stop_stream()  # closes the request side, waits for the answers
    results, errors = {}, []
    while not answers.empty():
        result, error = answers.get()
        if error is not None:
            errors.append(error.message())
        else:
            results[result.get_response().id] = result.as_numpy("images")
    assert sorted(results) == sorted(sent)
    for request_id, images in results.items():
        np.testing.assert_array_equal(images, sent[request_id])
    assert len(errors) == 2
    assert any("must lie in 0..3" in e for e in errors)
    assert any("unknown model 'c'" in e for e in errors)


def test_statistics_and_the_repository_extension(servers):
    http, grpc = servers
    z, y = np.zeros((2, 16), np.float32), np.array([0, 1], np.int64)
    grpc.infer("a", _inputs(z, y))
    (stats,) = grpc.get_inference_statistics("a", as_json=True)["model_stats"]
    assert stats["inference_stats"]["success"]["count"] == "1"  # int64 fields are JSON strings
    index = grpc.get_model_repository_index(as_json=True)["models"]
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        ("a", "1", "READY"), ("b", "1", "READY"), ("b", "2", "READY")]
    grpc.unload_model("a")
    assert not grpc.is_model_ready("a")
    assert http.post("/v1/generate", json={"model": "a", "class": 0}).status_code == 404
    grpc.load_model("a")
    assert grpc.is_model_ready("a") and grpc.infer("a", _inputs(z, y)).as_numpy("images").shape[0] == 2
    with pytest.raises(InferenceServerException, match="no model 'zzz'"):
        grpc.load_model("zzz")


@pytest.mark.slow
def test_bigan_serve_grpc_port(tiny_onnx, tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    # Ready when /readyz answers: the gRPC server starts with the engines, before that.
    with open(log, "wb") as out, \
            started_server(tiny_onnx, "--grpc-port", str(port), output=out, cwd=ROOT), \
            grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        assert client.is_server_ready()
        images = client.infer("model", _inputs(np.zeros((1, 16), np.float32),
                                               np.zeros(1, np.int64))).as_numpy("images")
        assert images.shape == (1, 32, 32, 3)
    assert "KServe v2 gRPC on 127.0.0.1" in log.read_text()
