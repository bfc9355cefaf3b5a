"""The truncation contract (issue 31): one psi range and one default for every path, one writer of
the ONNX metadata, psi over KServe v2 HTTP and gRPC for psi-input models (declared only where the
graph takes it, Triton-style errors naming the input), and the black-box check that /v1, v2 HTTP,
v2 gRPC, `bigan sample` and evaluation's sampler draw byte-equal images for the same (class, seed,
psi) on a plain model and on a psi-input model.

The psi-input model is a tiny BigGAN-deep with 11 random statistics sets (grid points at k / 10),
so psi = 0.6 lies on the grid (float32 0.6 lands above it) and 0.37 between two points."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from bigan import sampling
from bigan.onnx_metadata import MetadataError, ModelMetadata, TruncationError, check_truncation

from tests.helpers import http_and_grpc

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.serving

PLAIN_PSI, DEEP_PSI = 0.7, 0.6  # the recommended psi written into each served copy
CASES = [0.6, 0.37, "default"]  # on a grid point of the 11-set table, between two, none given


def _props(path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@pytest.fixture(scope="module")
def deep_onnx(tmp_path_factory):
    return make_deep_onnx(tmp_path_factory.mktemp("psi-model"))


def make_deep_onnx(root):
    """A psi-input export (tiny BigGAN-deep, 11 random statistics sets) with the default psi."""
    from bigan import models
    from bigan.config import ModelConfig
    from bigan.export.onnx import export_onnx
    from bigan.imports.common import write_checkpoint
    from tests.test_biggan_deep import TINY, _randomise_psi_stats

    cfg = ModelConfig(**{**TINY, "psi_stats": 11, "spectral_norm": False})
    torch.manual_seed(0)
    G = models.build_generator(cfg)
    _randomise_psi_stats(G)
    step = write_checkpoint(root / "run", cfg, G.state_dict(), None, {"format": "test"})
    return export_onnx(step, root / "deep.onnx").path


@pytest.fixture(scope="module")
def models_dir(tiny_onnx, deep_onnx, tmp_path_factory):
    """A repository of plain.onnx and deep.onnx, each with its recommended psi rewritten."""
    from bigan.export.metadata import rewrite_metadata

    root = tmp_path_factory.mktemp("psi-repo")
    for name, src, psi in (("plain", tiny_onnx, PLAIN_PSI), ("deep", deep_onnx, DEEP_PSI)):
        shutil.copy(src, root / f"{name}.onnx")
        rewrite_metadata(root / f"{name}.onnx", recommended_truncation=psi)
    return root


@pytest.fixture(scope="module")
def servers(models_dir):
    """(HTTP TestClient, tritonclient.grpc client) of one app serving plain and deep."""
    pytest.importorskip("tritonclient.grpc")
    with http_and_grpc(models_dir, provider="cpu") as both:
        yield both


def _graph_images(path, z, y, psi=None) -> np.ndarray:
    """The `images` output of the file itself (onnxruntime, no server), psi a float32 column."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"z": z, "y": y}
    if psi is not None:
        feed["psi"] = np.asarray(psi, np.float32)
    return session.run(["images"], feed)[0]


def _v2_body(z, y, psi=None, psi_dtype="FP32") -> dict:
    inputs = [{"name": "z", "datatype": "FP32", "shape": list(z.shape), "data": z.ravel().tolist()},
              {"name": "y", "datatype": "INT64", "shape": list(y.shape), "data": y.tolist()}]
    if psi is not None:
        psi = np.asarray(psi)
        inputs.append({"name": "psi", "datatype": psi_dtype, "shape": list(psi.shape),
                       "data": psi.ravel().tolist()})
    return {"inputs": inputs}


def _grpc_inputs(z, y, psi=None, psi_dtype="FP32"):
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, value, dtype in (("z", z, "FP32"), ("y", y, "INT64"), ("psi", psi, psi_dtype)):
        if value is None:
            continue
        value = np.asarray(value, {"FP32": np.float32, "INT64": np.int64}[dtype])
        tensor = grpcclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


# --- 1. one range, one default, one writer ---------------------------------------------------------

@pytest.mark.parametrize("psi", [0.005, 4.5])
def test_every_entry_point_refuses_a_psi_outside_the_one_range(psi, tmp_path, capsys, tiny_onnx):
    """Before: the CLI, evaluation and the config took any psi > 0, the server [0.01, 4]."""
    from bigan.cli import main
    from bigan.config import ConfigError, load_config
    from bigan.eval.errors import EvalError
    from bigan.eval.sweep import parse_psi

    with pytest.raises(TruncationError, match=r"psi=.* must be a truncation psi in \[0.01, 4\]"):
        check_truncation(psi, "psi")
    with pytest.raises(ConfigError, match=r"eval.psi.*in \[0.01, 4\]"):
        load_config(None, [f"eval.psi=[null,{psi}]"])
    with pytest.raises(EvalError, match=r"--psi.*in \[0.01, 4\]"):
        parse_psi(f"0.5,{psi}")
    for argv in (["sample", str(tiny_onnx)], ["export", str(tmp_path / "none")],
                 ["eval", str(tiny_onnx), "--data", str(tmp_path)]):
        assert main([*argv, "--truncation", str(psi), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert f"--truncation={psi}" in err and "[0.01, 4]" in err, (argv, err)
    assert check_truncation(0.01, "psi") == 0.01 and check_truncation(4, "psi") == 4.0
    load_config(None, ["eval.psi=[null,0.01,4.0]"])


def test_export_writes_the_psi_it_is_given_and_none_by_default(tiny_checkpoint, deep_onnx,
                                                              tmp_path, capsys):
    from bigan.cli import main

    assert ModelMetadata.from_props(_props(deep_onnx)).recommended_truncation is None
    out = tmp_path / "m.onnx"
    assert main(["export", str(tiny_checkpoint), "--out", str(out), "--truncation", "0.8"]) == 0
    assert "truncation  0.8" in capsys.readouterr().out
    assert ModelMetadata.from_props(_props(out)).recommended_truncation == 0.8


def test_the_one_writer_rewrites_metadata_atomically_keeping_the_graph(tiny_onnx, tmp_path):
    """`truncation-sweep --write` goes through `rewrite_metadata`: only the field changes, the
    graph stays byte for byte, no temporary file stays behind, a bad value leaves the file as it
    was."""
    import onnx

    from bigan.eval.sweep import write_truncation
    from bigan.export.metadata import rewrite_metadata
    from bigan.generation import OnnxSampler

    path = tmp_path / "m.onnx"
    shutil.copy(tiny_onnx, path)
    before = onnx.load(str(path))
    write_truncation(path, 0.55)
    after = onnx.load(str(path))
    assert after.graph.SerializeToString() == before.graph.SerializeToString()
    old, new = _props(tiny_onnx), _props(path)
    assert {k for k in old if old[k] != new[k]} == {"recommended_truncation"}
    assert new["recommended_truncation"] == "0.55" and set(new) == set(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert OnnxSampler(path).default_truncation == 0.55  # still opens, graph checked
    written = path.read_bytes()
    with pytest.raises(MetadataError, match="recommended_truncation"):
        rewrite_metadata(path, recommended_truncation=5.0)
    with pytest.raises(MetadataError, match="no field 'truncation'"):
        rewrite_metadata(path, truncation=0.5)
    assert path.read_bytes() == written


# --- 2. psi over KServe v2 HTTP and gRPC -----------------------------------------------------------

def test_v2_declares_psi_only_where_the_graph_takes_it(servers):
    http, grpc = servers
    for name, declared in (("plain", False), ("deep", True)):
        names = [i["name"] for i in http.get(f"/v2/models/{name}").json()["inputs"]]
        assert names == ["z", "y", "psi"][:2 + declared]
        over_grpc = grpc.get_model_metadata(name, as_json=True)["inputs"]
        assert [i["name"] for i in over_grpc] == names
        config = grpc.get_model_config(name, as_json=True)["config"]["input"]
        assert [i["name"] for i in config] == names
        if declared:
            assert http.get(f"/v2/models/{name}").json()["inputs"][2] == {
                "name": "psi", "datatype": "FP32", "shape": [-1]}
            assert config[2]["optional"] and config[2]["data_type"] == "TYPE_FP32"


@pytest.mark.parametrize("psi", [0.3, 0.37])  # on a grid point of the 11 sets, between two
def test_v2_psi_picks_the_statistics_over_http_and_grpc(servers, models_dir, psi):
    """psi [N] and [1] give the graph's own images at that psi on both transports; without psi a
    request gets the model's default (its recommended psi), not psi = 1."""
    http, grpc = servers
    z, y = sampling.latents([3, 4, 5], 16, psi), np.array([0, 2, 3], np.int64)
    want = _graph_images(models_dir / "deep.onnx", z, y, [psi] * 3)
    assert not np.array_equal(want, _graph_images(models_dir / "deep.onnx", z, y, [1.0] * 3))
    for column in ([psi] * 3, [psi]):
        r = http.post("/v2/models/deep/infer", json=_v2_body(z, y, np.array(column, np.float32)))
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["outputs"][0]["data"], np.uint8).reshape(want.shape)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(grpc.infer("deep", _grpc_inputs(z, y, column))
                                      .as_numpy("images"), want)
    default = _graph_images(models_dir / "deep.onnx", z, y, [DEEP_PSI] * 3)
    r = http.post("/v2/models/deep/infer", json=_v2_body(z, y))
    np.testing.assert_array_equal(np.asarray(r.json()["outputs"][0]["data"], np.uint8)
                                  .reshape(want.shape), default)
    np.testing.assert_array_equal(grpc.infer("deep", _grpc_inputs(z, y)).as_numpy("images"),
                                  default)


@pytest.mark.parametrize("model, psi, dtype, words", [
    ("plain", [0.5], "FP32", "unexpected inference input 'psi' for model 'plain'"),
    ("deep", [0.5, 0.5], "FP32", "unexpected shape for input 'psi' for model 'deep': expected "
                                 "[3] or [1]"),
    ("deep", [[0.5]] * 3, "FP32", "input 'psi' must have 1 dimension"),
    ("deep", [1, 1, 1], "INT64", "input 'psi' must have datatype FP32, got 'INT64'"),
    ("deep", [0.0], "FP32", "input 'psi'=0.0 must be a truncation psi in [0.01, 4]"),
    ("deep", [float("nan")], "FP32", "input 'psi'=nan must be a truncation psi"),
])
def test_v2_psi_errors_name_the_input_on_both_transports(servers, model, psi, dtype, words):
    from tritonclient.utils import InferenceServerException

    http, grpc = servers
    z, y = sampling.latents([3, 4, 5], 16, 0.5), np.array([0, 2, 3], np.int64)
    column = np.array(psi, np.float32 if dtype == "FP32" else np.int64)
    body = _v2_body(z, y, column, dtype)
    if np.isnan(column).any():  # JSON has no NaN: send it as binary, as tritonclient would
        body["inputs"][2].pop("data")
        body["inputs"][2]["parameters"] = {"binary_data_size": column.nbytes}
        header = json.dumps(body).encode()
        r = http.post(f"/v2/models/{model}/infer", content=header + column.tobytes(),
                      headers={"Inference-Header-Content-Length": str(len(header))})
    else:
        r = http.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 400 and words in r.json()["error"], r.text
    with pytest.raises(InferenceServerException) as info:
        grpc.infer(model, _grpc_inputs(z, y, column, dtype))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert words in info.value.message()


# --- 3. the black-box check: every path, byte for byte ----------------------------------------------

def _sample_cli(path, cls: int, seeds: list[int], psi, out) -> np.ndarray:
    """`bigan sample` of one class row, read back into uint8 [n, H, W, C] tiles."""
    from PIL import Image

    from bigan.cli import main

    argv = ["sample", str(path), "--classes", str(cls), "--n", str(len(seeds)),
            "--seed", str(seeds[0]), "--out", str(out)]
    assert main(argv + ([] if psi == "default" else ["--truncation", str(psi)])) == 0
    picture = np.asarray(Image.open(out))
    scale = picture.shape[0] // 36  # one row of 32 px tiles with 2 px gaps, upscaled to >= 256
    grid = picture[::scale, ::scale]
    return np.stack([grid[2:34, 2 + j * 34:34 + j * 34] for j in range(len(seeds))])


@pytest.mark.parametrize("model", ["plain", "deep"])
@pytest.mark.parametrize("psi", CASES)
def test_every_path_draws_the_same_bytes(servers, models_dir, model, psi, tmp_path):
    """/v1/generate, v2 HTTP, v2 gRPC (the client draws z with `bigan.sampling.latents` and
    sends psi), `bigan sample` and evaluation's sampler on one file: the same uint8 images for
    the same (class, seed, psi); "default" gives none anywhere, so each takes the model's."""
    from bigan import pictures
    from bigan.generation import OnnxSampler

    http, grpc = servers
    path, cls, seeds = models_dir / f"{model}.onnx", 2, [5, 6]
    recommended = {"plain": PLAIN_PSI, "deep": DEEP_PSI}[model]
    drawn = recommended if psi == "default" else psi
    z, y = sampling.latents(seeds, 16, drawn), np.full(2, cls, np.int64)
    column = None if psi == "default" else np.full(1, psi, np.float32)

    r = http.post("/v1/generate", json={"model": model, "class": cls, "seed": seeds[0], "n": 2,
                                        "format": "npy", **({} if column is None else
                                                            {"truncation": psi})})
    assert r.status_code == 200, r.text
    paths = {"v1": np.load(io.BytesIO(r.content))}
    body = _v2_body(z, y, column if model == "deep" else None)
    out = http.post(f"/v2/models/{model}/infer", json=body).json()["outputs"][0]
    paths["v2 http"] = np.asarray(out["data"], np.uint8).reshape(out["shape"])
    paths["v2 grpc"] = grpc.infer(model, _grpc_inputs(
        z, y, column if model == "deep" else None)).as_numpy("images")
    paths["bigan sample"] = _sample_cli(path, cls, seeds, psi, tmp_path / "s.png")
    sampler = OnnxSampler(path)
    paths["eval sampler"] = pictures.to_uint8(sampler.images(
        [cls] * 2, seeds, sampler.default_truncation if psi == "default" else psi))

    want = _graph_images(path, z, y, None if model == "plain" else [drawn] * 2)
    for name, got in paths.items():
        assert got.shape == want.shape and got.dtype == np.uint8, name
        np.testing.assert_array_equal(got, want, err_msg=name)
