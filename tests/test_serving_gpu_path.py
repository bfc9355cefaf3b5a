"""serving.core.gpu_path: the bucketing and padding logic and the IO-binding runner, checked on the CPU
provider (padded runs give the images of unpadded runs, byte for byte; reused bucket buffers never
leak rows of an earlier batch; float16 inputs are cast), the provider options and the command-line
flags; and, marked `gpu`, the same on CUDA with IO binding, CUDA graphs and TensorRT."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from bigan import sampling  # noqa: E402
from serving.core.engine import Engine, EngineConfig  # noqa: E402
from serving.core.gpu_path import (BoundRunner, batch_buckets, bucket_for, cuda_provider_options,  # noqa: E402
                              input_types, pad_rows, trt_provider_options)

pytestmark = pytest.mark.serving


def test_buckets_are_powers_of_two_up_to_max_batch():
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(24) == (1, 2, 4, 8, 16, 24)
    assert batch_buckets(1) == (1,)
    buckets = batch_buckets(24)
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 8, 9, 17, 24)] == [1, 2, 4, 8, 8, 16,
                                                                            24, 24]
    for n in (0, 25):
        with pytest.raises(ValueError, match=f"a batch of {n} rows fits no bucket"):
            bucket_for(n, buckets)
    with pytest.raises(ValueError, match="max_batch=0"):
        batch_buckets(0)


def test_pad_rows_appends_zero_rows():
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded = pad_rows(a, 5)
    np.testing.assert_array_equal(padded, [[0, 1], [2, 3], [4, 5], [0, 0], [0, 0]])
    assert padded.dtype == np.float32 and pad_rows(a, 3) is a
    assert pad_rows(np.array([7, 8]), 4).tolist() == [7, 8, 0, 0]
    with pytest.raises(ValueError, match="3 rows do not fit in 2"):
        pad_rows(a, 2)


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _inputs(n: int, classes: int = 4, first_seed: int = 0):
    return (sampling.latents(range(first_seed, first_seed + n), 16, 0.8),
            np.arange(n, dtype=np.int64) % classes)


def test_padded_and_bound_runs_give_the_unpadded_images(tiny_onnx):
    session = _session(tiny_onnx)
    bound = BoundRunner(session, "cpu")
    padded = BoundRunner(session, "cpu", buckets=(1, 2, 4, 8), image_shape=(32, 32, 3))
    for n, first_seed in ((3, 0), (8, 10), (1, 20), (2, 30), (5, 40), (3, 50)):
        z, y = _inputs(n, first_seed=first_seed)
        (plain,) = session.run(["images"], {"z": z, "y": y})
        np.testing.assert_array_equal(bound.run({"z": z, "y": y}), plain)
        # The bucket's buffers keep the rows of earlier, larger batches; they must not leak.
        out = padded.run({"z": z, "y": y})
        assert out.shape == (n, 32, 32, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, plain)


def test_an_engine_on_cpu_keeps_session_run(tiny_onnx, caplog):
    with caplog.at_level(logging.WARNING, logger="serving.core.gpu_path"):
        engine = Engine(tiny_onnx, EngineConfig(provider="cpu", cuda_graphs=True, max_batch=4))
    assert engine.device_runner is None
    assert "--cuda-graphs needs the CUDA provider" in caplog.text
    z, y = _inputs(6)
    np.testing.assert_array_equal(engine.run(z, y), _session(tiny_onnx).run(["images"],
                                                                            {"z": z, "y": y})[0])


@pytest.fixture(scope="module")
def fp16_onnx(tiny_checkpoint, tmp_path_factory):
    from bigan.export.onnx import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("fp16") / "model.onnx",
                       fp16=True).path


def test_an_fp16_model_is_served_through_padded_buckets(fp16_onnx, tiny_onnx):
    engine = Engine(fp16_onnx, EngineConfig(provider="cpu", max_batch=8))
    assert engine.metadata.precision == "fp16"
    session = engine.session
    padded = BoundRunner(session, "cpu", buckets=batch_buckets(8), image_shape=(32, 32, 3))
    z, y = _inputs(5)
    (plain,) = session.run(["images"], {"z": z, "y": y})
    np.testing.assert_array_equal(padded.run({"z": z, "y": y}), plain)
    fp32 = _session(tiny_onnx).run(["images"], {"z": z, "y": y})[0]
    assert np.abs(plain.astype(int) - fp32.astype(int)).max() <= 8  # fp16 weights, same images


def _float16_input_model(path):
    """A hand-made graph with a float16 `z`: images = uint8(10 z + y), shaped [N, 1, 1, 4]."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["z"], ["zf"], to=TensorProto.FLOAT),
             helper.make_node("Constant", [], ["ten"], value_float=10.0),
             helper.make_node("Mul", ["zf", "ten"], ["z10"]),
             helper.make_node("Cast", ["y"], ["yf"], to=TensorProto.FLOAT),
             helper.make_node("Constant", [], ["axes"],
                              value=helper.make_tensor("a", TensorProto.INT64, [1], [1])),
             helper.make_node("Unsqueeze", ["yf", "axes"], ["y2"]),
             helper.make_node("Add", ["z10", "y2"], ["sum"]),
             helper.make_node("Constant", [], ["shape"],
                              value=helper.make_tensor("s", TensorProto.INT64, [4], [-1, 1, 1, 4])),
             helper.make_node("Reshape", ["sum", "shape"], ["r"]),
             helper.make_node("Cast", ["r"], ["images"], to=TensorProto.UINT8)]
    graph = helper.make_graph(
        nodes, "fp16_inputs",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT16, ["N", 4]),
         helper.make_tensor_value_info("y", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 1, 1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_float16_inputs_are_cast(tmp_path):
    pytest.importorskip("onnx")
    session = _session(_float16_input_model(tmp_path / "half.onnx"))
    assert input_types(session) == {"z": np.float16, "y": np.int64}
    z = np.array([[0.5, 1.25, 2.0, 3.0], [0.0, 0.25, 4.0, 7.5]], np.float32)  # exact in float16
    y = np.array([1, 2], np.int64)
    expected = np.array([[6, 13, 21, 31], [2, 4, 42, 77]], np.uint8).reshape(2, 1, 1, 4)
    for runner in (BoundRunner(session, "cpu"),
                   BoundRunner(session, "cpu", buckets=(1, 4), image_shape=(1, 1, 4))):
        np.testing.assert_array_equal(runner.run({"z": z, "y": y}), expected)


def test_provider_options():
    plain = cuda_provider_options()
    assert plain["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert plain["cudnn_conv_use_max_workspace"] == "1"
    assert plain["arena_extend_strategy"] == "kSameAsRequested"
    assert "enable_cuda_graph" not in plain
    assert cuda_provider_options(cuda_graphs=True)["enable_cuda_graph"] == "1"


def test_tensorrt_options_cache_engines_and_cover_every_batch(tmp_path):
    trt = trt_provider_options(tmp_path / "cache", dim_z=120, max_batch=16, fp16=True)
    assert (tmp_path / "cache").is_dir()
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert trt["trt_profile_min_shapes"] == "z:1x120,y:1"
    assert trt["trt_profile_max_shapes"] == "z:16x120,y:16"
    assert trt["trt_fp16_enable"] == "True"


def test_the_serve_command_takes_the_gpu_flags(monkeypatch, tmp_path):
    from bigan import cli

    seen = {}
    monkeypatch.setattr("serving.server.serve", lambda cfg: seen.__setitem__("cfg", cfg))
    args = cli.build_parser().parse_args(["serve", "m.onnx", "--cuda-graphs", "--trt",
                                          "--trt-cache", str(tmp_path)])
    assert args.func(args) == 0
    engine = seen["cfg"].engine
    assert engine.cuda_graphs and engine.trt and engine.trt_cache_dir == str(tmp_path)
    args = cli.build_parser().parse_args(["serve", "m.onnx"])
    args.func(args)
    assert not seen["cfg"].engine.cuda_graphs and not seen["cfg"].engine.trt


# --- on a GPU ------------------------------------------------------------------------------------

def _max_diff(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_the_cuda_path_draws_the_cpu_images(tiny_onnx, cuda_graphs):
    cpu = Engine(tiny_onnx, EngineConfig(provider="cpu"))
    gpu = Engine(tiny_onnx, EngineConfig(provider="cuda", max_batch=8, cuda_graphs=cuda_graphs))
    assert gpu.provider == "CUDAExecutionProvider" and gpu.device_runner is not None
    assert (gpu.device_runner.buckets is not None) == cuda_graphs
    for n, first_seed in ((1, 0), (3, 5), (8, 10), (5, 20), (13, 40)):  # 13: two chunks
        z, y = _inputs(n, first_seed=first_seed)
        assert _max_diff(gpu.run(z, y), cpu.run(z, y)) <= 1  # float rounding of cuDNN vs MKL


@pytest.mark.gpu
def test_tensorrt_draws_the_cpu_images_and_caches_its_engine(tiny_onnx, tmp_path):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no TensorRT provider")
    cpu = Engine(tiny_onnx, EngineConfig(provider="cpu"))
    trt = Engine(tiny_onnx, EngineConfig(provider="cuda", max_batch=8, trt=True,
                                         trt_cache_dir=str(tmp_path)))
    assert trt.provider == "TensorrtExecutionProvider"
    z, y = _inputs(5)
    assert _max_diff(trt.run(z, y), cpu.run(z, y)) <= 2
    assert any(p.suffix == ".engine" for p in tmp_path.rglob("*"))
