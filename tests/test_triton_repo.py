"""bigan.export.triton_repo: `bigan export --triton-repo DIR` writes a Triton model repository whose
config.pbtxt parses with the `model_config` protobuf tritonclient ships and says what the server
does (onnxruntime backend, dynamic batching over the engine's buckets, a max queue delay, the
inputs and outputs with their dims, a warm-up per bucket, and the parameters a Triton client needs
to draw z and pick psi: the recommended psi, the per-class vector and the z sampling), beside
NAME/1/model.onnx (and its external weights); the defaults repeated below `serving` agree with the
server's."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient (dev extra) parses the config")

from google.protobuf import json_format, text_format  # noqa: E402

from bigan.config import ConfigError  # noqa: E402
from bigan.export import triton_repo  # noqa: E402
from bigan.ort_session import batch_buckets  # noqa: E402

pytestmark = pytest.mark.unit


def _parse(path) -> "model_config_pb2.ModelConfig":
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_the_config_parses_as_tritons_model_config(tiny_onnx, tmp_path):
    model_dir = triton_repo.write_triton_repo(tiny_onnx, tmp_path / "repo", "gan", max_batch=12,
                                              max_queue_delay_us=700)
    assert model_dir == tmp_path / "repo" / "gan"
    assert (model_dir / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    c = _parse(model_dir / "config.pbtxt")
    assert c.name == "gan" and c.backend == "onnxruntime" and c.max_batch_size == 12
    T = model_config_pb2.DataType
    assert [(i.name, i.data_type, list(i.dims), i.HasField("reshape"), list(i.reshape.shape))
            for i in c.input] == [("z", T.Value("TYPE_FP32"), [16], False, []),
                                  ("y", T.Value("TYPE_INT64"), [1], True, [])]
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [
        ("images", T.Value("TYPE_UINT8"), [32, 32, 3]),
        ("images_float", T.Value("TYPE_FP32"), [3, 32, 32])]
    assert list(c.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8, 12] \
        == list(batch_buckets(12))
    assert c.dynamic_batching.max_queue_delay_microseconds == 700
    assert [(w.name, w.batch_size, sorted(w.inputs)) for w in c.model_warmup] == [
        (f"batch_{n}", n, ["y", "z"]) for n in (1, 2, 4, 8, 12)]
    assert all(w.inputs["z"].zero_data and list(w.inputs["z"].dims) == [16]
               for w in c.model_warmup)
    assert _parameters(c) == {"class_names": ["disc-0", "square-1", "triangle-2", "ring-3"],
                              "recommended_truncation": None,
                              "recommended_truncation_per_class": None,
                              "z_sampling": "resample"}


def _parameters(config) -> dict:
    """The config's `parameters`, JSON-decoded (z_sampling is a plain string)."""
    return {k: v.string_value if k == "z_sampling" else json.loads(v.string_value)
            for k, v in config.parameters.items()}


PER_CLASS = [0.3, 0.9, 0.45, 1.2]  # the tiny model's 4 classes


@pytest.fixture
def per_class_onnx(tiny_onnx, tmp_path):
    """The tiny model with a recommended psi, one psi per class and TF-Hub z sampling, written by
    the one metadata writer."""
    from bigan.export.metadata import rewrite_metadata

    model = tmp_path / "gen.onnx"
    shutil.copy(tiny_onnx, model)
    rewrite_metadata(model, recommended_truncation=0.6, recommended_truncation_per_class=PER_CLASS,
                     z_sampling="tfhub-scaled")
    return model


def test_the_config_carries_per_class_psi_and_z_sampling(per_class_onnx, tmp_path):
    """Triton applies no defaults and exposes no ONNX metadata over its API: its client draws z
    and picks each row's psi itself, so the config's parameters carry what it needs for that,
    and they rebuild the file's own defaults."""
    from bigan import sampling
    from bigan.onnx_metadata import ModelMetadata

    c = _parse(triton_repo.write_triton_repo(per_class_onnx, tmp_path / "repo") / "config.pbtxt")
    params = _parameters(c)
    assert params["recommended_truncation_per_class"] == PER_CLASS
    assert params["recommended_truncation"] == 0.6 and params["z_sampling"] == "tfhub-scaled"
    meta = ModelMetadata.from_props(_props(per_class_onnx))
    assert [meta.default_truncation(k) for k in range(4)] == PER_CLASS
    z = sampling.latents([5], meta.dim_z, PER_CLASS[2], params["z_sampling"])
    assert np.abs(z).max() > PER_CLASS[2]  # TF-Hub's z reaches past psi; bigan's resample does not


def test_a_psi_input_graph_declares_psi_as_a_required_input(tmp_path):
    """A psi-input graph (BigGAN-deep) needs `psi` in every run: Triton's onnxruntime backend
    feeds the graph what the request holds, and the graph has no default for it, so the config
    declares it required (the server's own config marks it optional because the server fills
    the default in) and warms it up with the rest."""
    from tests.test_truncation_contract import make_deep_onnx

    deep = make_deep_onnx(tmp_path / "deep")
    c = _parse(triton_repo.write_triton_repo(deep, tmp_path / "repo", max_batch=2) /
               "config.pbtxt")
    T = model_config_pb2.DataType
    (psi,) = [i for i in c.input if i.name == "psi"]
    assert (psi.data_type, list(psi.dims), psi.HasField("reshape"), psi.optional) == \
        (T.Value("TYPE_FP32"), [1], True, False)
    assert all(sorted(w.inputs) == ["psi", "y", "z"] for w in c.model_warmup)
    assert _parameters(c)["z_sampling"] == "resample"


def _props(path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_the_config_says_what_the_server_serves(per_class_onnx, tmp_path):
    """The repository is one `bigan serve` reads too, and the dims, batching and parameters (psi
    defaults, z sampling) it declares are those of the server's own /v2 config for the same model;
    the defaults are the server's."""
    pytest.importorskip("fastapi")
    from serving.core.config import EngineConfig
    from serving.core.engine import DEFAULT_WAIT_MS
    from serving.core.repository import ModelRepository
    from serving.transports.v2_protocol import model_config

    assert triton_repo.DEFAULT_MAX_BATCH == EngineConfig().max_batch
    assert triton_repo.DEFAULT_QUEUE_DELAY_US == DEFAULT_WAIT_MS["CUDAExecutionProvider"] * 1000
    triton_repo.write_triton_repo(per_class_onnx, tmp_path / "repo")
    written = _parse(tmp_path / "repo" / "gen" / "config.pbtxt")
    assert list(written.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8, 16, 32]
    repo = ModelRepository.open(tmp_path / "repo", EngineConfig(max_batch=32, max_wait_ms=5))
    served = json_format.ParseDict(model_config(repo.get("gen"), 32),
                                   model_config_pb2.ModelConfig())
    assert [(i.name, list(i.dims)) for i in written.input] == \
        [(i.name, list(i.dims)) for i in served.input]
    assert [(o.name, list(o.dims)) for o in written.output][:1] == \
        [(o.name, list(o.dims)) for o in served.output]
    assert written.dynamic_batching.max_queue_delay_microseconds == \
        served.dynamic_batching.max_queue_delay_microseconds
    assert _parameters(written) == _parameters(served)


def test_external_weights_travel_with_the_model(tiny_onnx, tmp_path):
    import onnx
    import onnxruntime as ort

    big = tmp_path / "big.onnx"
    onnx.save(onnx.load(str(tiny_onnx)), str(big), save_as_external_data=True,
              location="big.onnx.data", size_threshold=4096)  # shape constants stay inline
    model_dir = triton_repo.write_triton_repo(big, tmp_path / "repo", "g")
    version = model_dir / "1"
    assert sorted(p.name for p in version.iterdir()) == ["big.onnx.data", "model.onnx"]
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    images, _ = session.run(None, {"z": np.zeros((2, 16), np.float32), "y": np.array([0, 1])})
    assert images.shape == (2, 32, 32, 3)


@pytest.mark.parametrize("name,max_batch,delay,flag", [
    ("a/b", 8, 0, "--triton-name='a/b'"), ("..", 8, 0, "--triton-name='..'"),
    ("", 8, 0, "--triton-name=''"), ("g", 0, 0, "--triton-max-batch=0"),
    ("g", 8, -1, "--triton-queue-delay-us=-1")])
def test_bad_options_are_refused_naming_the_flag(name, max_batch, delay, flag):
    with pytest.raises(ConfigError, match=flag.replace(".", r"\.")):
        triton_repo.check_options(name, max_batch, delay)


def test_export_command_writes_the_repository(tiny_checkpoint, tmp_path, capsys):
    from bigan.export.commands import add_export_command

    parser = argparse.ArgumentParser(prog="bigan")
    add_export_command(parser.add_subparsers(dest="command"))
    bad = parser.parse_args(["export", str(tiny_checkpoint), "--out", str(tmp_path / "x.onnx"),
                             "--triton-repo", str(tmp_path / "r"), "--triton-name", "a/b"])
    with pytest.raises(ConfigError, match="--triton-name='a/b'"):
        bad.func(bad)
    assert not (tmp_path / "x.onnx").exists()  # refused before the export ran
    out = tmp_path / "gen.onnx"
    args = parser.parse_args(["export", str(tiny_checkpoint), "--out", str(out),
                              "--triton-repo", str(tmp_path / "repo"), "--triton-max-batch", "4"])
    assert args.func(args) == 0
    assert f"triton      {tmp_path / 'repo' / 'gen'}/config.pbtxt" in capsys.readouterr().out
    c = _parse(tmp_path / "repo" / "gen" / "config.pbtxt")
    assert c.name == "gen" and list(c.dynamic_batching.preferred_batch_size) == [1, 2, 4]
    assert (tmp_path / "repo" / "gen" / "1" / "model.onnx").read_bytes() == out.read_bytes()
