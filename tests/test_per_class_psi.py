"""Per-class truncation and the TF-Hub z sampling mode (issue 31, items 4 and 5).

Per-class psi: `truncation-sweep --per-class` writes one psi per class (by the sweep's own rule,
applied to each class's precision/recall) into the metadata through the one writer, which refuses
a vector of the wrong length or out of range naming the field; every path (/v1/generate,
/v1/interpolate, KServe v2 HTTP and gRPC per row, `bigan sample`, evaluation's sampler) takes a
sample's default psi from its class: a request without psi gives the images of psi = that class's
value, for two classes with different values (and not those of the model's one psi).

z sampling: "tfhub-scaled" draws z = psi * truncnorm(-2, 2) as scipy draws it from
`np.random.RandomState(seed)` (pytorch-pretrained-BigGAN's `truncated_noise_sample`), checked
against scipy itself; a model whose metadata names it is sampled that way by the server, `bigan
sample` and evaluation, and a checkpoint whose manifest names it (`bigan import hf-biggan`) too.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from bigan import sampling
from bigan.onnx_metadata import MetadataError, ModelMetadata

from tests.helpers import http_and_grpc

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

GLOBAL_PSI = 0.6
PER_CLASS = [0.3, 0.9, 0.45, 1.2]  # classes 0 and 1 differ from each other and from GLOBAL_PSI


def _props(path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _graph_images(path, z, y, psi=None) -> np.ndarray:
    import onnxruntime as ort

    feed = {"z": z, "y": np.asarray(y, np.int64)}
    if psi is not None:
        feed["psi"] = np.asarray(psi, np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["images"], feed)[0]


@pytest.fixture(scope="module")
def per_class_dir(tiny_onnx, tmp_path_factory):
    """plain.onnx (the tiny BigGAN) and deep.onnx (a psi-input BigGAN-deep, 11 statistics sets)
    with recommended psi GLOBAL_PSI and the per-class vector PER_CLASS, written by the one
    writer; and tfhub.onnx, the tiny BigGAN marked z_sampling tfhub-scaled."""
    from bigan.export.metadata import rewrite_metadata
    from tests.test_truncation_contract import make_deep_onnx

    root = tmp_path_factory.mktemp("per-class")
    deep = make_deep_onnx(tmp_path_factory.mktemp("per-class-deep"))
    for name, src in (("plain", tiny_onnx), ("deep", deep)):
        shutil.copy(src, root / f"{name}.onnx")
        rewrite_metadata(root / f"{name}.onnx", recommended_truncation=GLOBAL_PSI,
                         recommended_truncation_per_class=PER_CLASS)
    shutil.copy(tiny_onnx, root / "tfhub.onnx")
    rewrite_metadata(root / "tfhub.onnx", z_sampling="tfhub-scaled")
    return root


@pytest.fixture(scope="module")
def servers(per_class_dir):
    pytest.importorskip("fastapi")
    pytest.importorskip("tritonclient.grpc")
    with http_and_grpc(per_class_dir, provider="cpu") as both:
        yield both


def _v1(http, route: str, body: dict) -> np.ndarray:
    r = http.post(route, json={**body, "format": "npy"})
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


# --- per-class psi --------------------------------------------------------------------------------

@pytest.mark.e2e
def test_sweep_per_class_writes_one_psi_per_class_by_the_sweeps_rule(
        tiny_onnx, tiny_eval_shards, tiny_classifier, tmp_path, capsys):
    """On the tiny model (4 classes): the vector has 4 entries, each the smallest psi of the grid
    whose class recall >= 0.5 (recomputed here from the written per-class rows), stored in the
    metadata with the global psi, and the PNG is drawn."""
    from PIL import Image

    from bigan.cli import main
    from bigan.generation import OnnxSampler

    model = tmp_path / "model.onnx"
    shutil.copy(tiny_onnx, model)
    out = tmp_path / "sweep"
    assert main(["truncation-sweep", str(model), "--data", str(tiny_eval_shards), "--psi",
                 "0.3,0.7,1.2,2", "--n", "32", "--classifier", str(tiny_classifier),
                 "--min-recall", "0.5", "--per-class", "--write", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    result = json.loads((out / "truncation_sweep.json").read_text())
    vector = result["recommended_truncation_per_class"]
    assert len(vector) == 4 and set(vector) <= {0.3, 0.7, 1.2, 2.0}
    for k in range(4):
        recalls = [(r["psi"], r["per_class"][k]["recall"]) for r in result["rows"]]
        ok = [psi for psi, recall in recalls if recall >= 0.5]
        want = min(ok) if ok else max(recalls, key=lambda pr: (pr[1], -pr[0]))[0]
        assert vector[k] == want, (k, recalls)
    meta = ModelMetadata.from_props(_props(model))
    assert meta.recommended_truncation_per_class == vector
    assert meta.recommended_truncation == result["recommended_truncation"]
    assert OnnxSampler(model).default_truncation == tuple(vector)
    assert Image.open(result["files"]["per_class_png"]).size[0] > 1000
    assert Image.open(result["files"]["per_class_samples_png"]).size[0] > 300
    assert "per-class psi:" in capsys.readouterr().out
    # a later sweep without --per-class removes the vector, which would outvote its psi
    assert main(["truncation-sweep", str(model), "--data", str(tiny_eval_shards), "--psi", "0.5",
                 "--n", "16", "--classifier", str(tiny_classifier), "--write", "--out",
                 str(tmp_path / "again"), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert ModelMetadata.from_props(_props(model)).recommended_truncation_per_class is None


@pytest.mark.unit
def test_the_samples_picture_shows_each_class_at_its_default_psi(per_class_dir):
    """Row r of the sweep's samples picture is class hungry_classes[r] (smallest psi first): its
    seeds as a request without psi gets them (the written vector), then at the overall psi."""
    from bigan import pictures
    from bigan.eval.sweep import hungry_classes, per_class_samples
    from bigan.generation import OnnxSampler

    sampler = OnnxSampler(per_class_dir / "plain.onnx")
    classes, seeds = hungry_classes(PER_CLASS), [4, 5, 6]
    assert classes == [0, 2, 1, 3]
    assert hungry_classes([1.0] * 7 + [0.2] * 3 + [2.0] * 3) == [7, 8, 9, 0, 1, 5, 6, 10, 11, 12]
    grid = per_class_samples(sampler, PER_CLASS, classes, seeds, GLOBAL_PSI)
    cell = 32 + 2  # image side + the grid's padding
    assert grid.shape == (2 + len(classes) * cell, 2 + (2 * len(seeds) + 1) * cell, 3)
    for r, k in enumerate(classes):
        row = grid[2 + r * cell:r * cell + cell]
        cells = [row[:, 2 + j * cell:j * cell + cell] for j in range(2 * len(seeds) + 1)]
        default = pictures.to_uint8(sampler.images([k] * 3, seeds, sampler.default_truncation))
        overall = pictures.to_uint8(sampler.images([k] * 3, seeds, GLOBAL_PSI))
        np.testing.assert_array_equal(np.stack(cells[:3]), default)
        np.testing.assert_array_equal(np.stack(cells[4:]), overall)
        assert (cells[3] == 32).all()  # the blank between the two blocks
        assert not np.array_equal(default, overall)  # the class's psi is not the overall one


@pytest.mark.unit
def test_a_bad_vector_is_refused_at_write_time_naming_the_field(tiny_onnx, tmp_path):
    from bigan.eval.sweep import write_truncation
    from bigan.export.metadata import rewrite_metadata

    path = tmp_path / "m.onnx"
    shutil.copy(tiny_onnx, path)
    before = path.read_bytes()
    cases = [([0.5, 0.5, 0.5], r"'recommended_truncation_per_class' .* has 3 values but "
                               r"num_classes is 4"),
             ([0.5, 0.5, 4.5, 0.5], r"'recommended_truncation_per_class' .* holds 4.5 at class 2"),
             ([0.5, None, 0.5, 0.5], r"'recommended_truncation_per_class' .* holds None at class 1"),
             ("0.5", r"'recommended_truncation_per_class' = '0.5' must be a list")]
    for vector, words in cases:
        with pytest.raises(MetadataError, match=words):
            rewrite_metadata(path, recommended_truncation_per_class=vector)
        assert path.read_bytes() == before
    with pytest.raises(MetadataError, match="recommended_truncation_per_class"):
        write_truncation(path, 0.5, [0.5] * 5)
    with pytest.raises(MetadataError, match="'z_sampling' = 'tfhub' must be one of resample, "
                                            "tfhub-scaled"):
        rewrite_metadata(path, z_sampling="tfhub")
    assert path.read_bytes() == before


@pytest.mark.serving
def test_v1_default_is_the_requests_class_psi(servers):
    """/v1/generate and /v1/interpolate without truncation == with truncation = the class's psi,
    for classes 0 and 1 (0.3, 0.9), and not the images of the model's one psi (0.6)."""
    http, _ = servers
    for cls in (0, 1):
        body = {"model": "plain", "class": cls, "seed": 11, "n": 2}
        default = _v1(http, "/v1/generate", body)
        np.testing.assert_array_equal(
            default, _v1(http, "/v1/generate", {**body, "truncation": PER_CLASS[cls]}))
        assert not np.array_equal(
            default, _v1(http, "/v1/generate", {**body, "truncation": GLOBAL_PSI}))
        path = {"model": "deep", "class": cls, "seed_a": 3, "seed_b": 4, "steps": 3}
        np.testing.assert_array_equal(
            _v1(http, "/v1/interpolate", path),
            _v1(http, "/v1/interpolate", {**path, "truncation": PER_CLASS[cls]}))


@pytest.mark.serving
def test_v2_rows_without_psi_take_their_class_psi_over_http_and_grpc(servers, per_class_dir):
    """A psi-input model, one request of rows of classes 1, 0, 1 without psi: each row gets its
    class's psi (the graph's images at psi [0.9, 0.3, 0.9]), on both transports; the model
    configuration names the vector and the z sampling for clients that draw z."""
    from tests.test_truncation_contract import _grpc_inputs, _v2_body

    http, grpc = servers
    y = np.array([1, 0, 1], np.int64)
    z = sampling.latents([5, 6, 7], 16, [PER_CLASS[c] for c in y])
    want = _graph_images(per_class_dir / "deep.onnx", z, y, [PER_CLASS[c] for c in y])
    assert not np.array_equal(want, _graph_images(per_class_dir / "deep.onnx", z, y,
                                                  [GLOBAL_PSI] * 3))
    out = http.post("/v2/models/deep/infer", json=_v2_body(z, y)).json()["outputs"][0]
    np.testing.assert_array_equal(np.asarray(out["data"], np.uint8).reshape(want.shape), want)
    np.testing.assert_array_equal(grpc.infer("deep", _grpc_inputs(z, y)).as_numpy("images"), want)
    params = http.get("/v2/models/deep/config").json()["parameters"]
    assert json.loads(params["recommended_truncation_per_class"]["string_value"]) == PER_CLASS
    assert params["z_sampling"]["string_value"] == "resample"


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["plain", "deep"])
def test_sample_and_eval_sampler_default_to_each_class_psi(per_class_dir, model, tmp_path):
    """`bigan sample` of classes 0 and 1 without --truncation draws each row at its class's psi
    (== one row per class with --truncation that psi); evaluation's sampler likewise."""
    from bigan import pictures
    from bigan.generation import OnnxSampler
    from tests.test_truncation_contract import _sample_cli

    path = per_class_dir / f"{model}.onnx"
    sampler = OnnxSampler(path)
    default = pictures.to_uint8(sampler.images([0, 1], [9, 9], sampler.default_truncation))
    for cls in (0, 1):
        want = _graph_images(path, sampling.latents([9], 16, PER_CLASS[cls]), [cls],
                             None if model == "plain" else [PER_CLASS[cls]])
        got = _sample_cli(path, cls, [9], "default", tmp_path / f"{cls}.png")
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(
            got, _sample_cli(path, cls, [9], PER_CLASS[cls], tmp_path / f"{cls}x.png"))
        np.testing.assert_array_equal(default[cls:cls + 1], want)


# --- TF-Hub z sampling ------------------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("psi", [0.04, 0.4, 1.0, 1.7])
def test_tfhub_scaled_is_psi_times_scipys_truncnorm_of_the_seed(psi):
    """z = psi * truncnorm(-2, 2) with scipy's draw from RandomState(seed) (the package's
    `truncated_noise_sample` formula), equal in float32; bigan's resample draws other values."""
    stats = pytest.importorskip("scipy.stats")
    seeds, dim_z = [0, 1, 7, 123456, 2**32 - 1], 128
    got = sampling.latents(seeds, dim_z, psi, "tfhub-scaled")
    for row, seed in zip(got, seeds):
        x = stats.truncnorm.rvs(-2, 2, size=(1, dim_z), random_state=np.random.RandomState(seed))
        np.testing.assert_array_equal(row, psi * x.astype(np.float32)[0])
    assert got.dtype == np.float32 and np.abs(got).max() <= 2 * psi
    assert not np.allclose(got, sampling.latents(seeds, dim_z, psi))
    # no truncation means N(0, 1) under both modes; seeds past RandomState's 32 bits still draw
    np.testing.assert_array_equal(sampling.latents(seeds, dim_z, None, "tfhub-scaled"),
                                  sampling.latents(seeds, dim_z, None))
    big = sampling.latents([2**40, 2**40 + 1], dim_z, psi, "tfhub-scaled")
    assert np.abs(big).max() <= 2 * psi and not np.array_equal(big[0], big[1])
    with pytest.raises(ValueError, match="unknown z sampling 'tfhub'"):
        sampling.latents([0], dim_z, psi, "tfhub")


@pytest.mark.serving
def test_every_path_draws_z_by_the_models_mode(servers, per_class_dir, tmp_path):
    """A model whose metadata says tfhub-scaled: /v1/generate, /v1/interpolate's ends, `bigan
    sample`, evaluation's sampler and its interpolation strip all draw psi * truncnorm(-2, 2)."""
    from PIL import Image

    from bigan import pictures
    from bigan.eval.evaluate import interpolation_png
    from bigan.generation import OnnxSampler
    from tests.test_truncation_contract import _sample_cli

    stats = pytest.importorskip("scipy.stats")
    http, _ = servers
    path, psi, cls, seeds = per_class_dir / "tfhub.onnx", 0.5, 2, [4, 5]
    z = np.stack([psi * stats.truncnorm.rvs(-2, 2, size=16, random_state=np.random.RandomState(s))
                  .astype(np.float32) for s in seeds])
    want = _graph_images(path, z, [cls] * 2)
    assert not np.array_equal(want, _graph_images(path, sampling.latents(seeds, 16, psi), [cls] * 2))
    body = {"model": "tfhub", "class": cls, "truncation": psi}
    np.testing.assert_array_equal(_v1(http, "/v1/generate", {**body, "seed": 4, "n": 2}), want)
    ends = _v1(http, "/v1/interpolate", {**body, "seed_a": 4, "seed_b": 5, "steps": 3})
    np.testing.assert_array_equal(ends[[0, -1]], want)
    np.testing.assert_array_equal(_sample_cli(path, cls, seeds, psi, tmp_path / "s.png"), want)
    sampler = OnnxSampler(path)
    assert sampler.z_sampling == "tfhub-scaled"
    np.testing.assert_array_equal(pictures.to_uint8(sampler.images([cls] * 2, seeds, psi)), want)
    strip = np.asarray(Image.open(interpolation_png(sampler, tmp_path / "i.png", (4, 5), steps=3,
                                                    classes=3, psi=psi)))
    scale = strip.shape[1] // (3 * 34 + 2)  # 3 columns of 32 px tiles, 2 px gaps, upscaled
    row = (2 * cls) * 34 + 2  # the linear row of class 2
    tile = strip[::scale, ::scale][row:row + 32, 2:34]
    np.testing.assert_array_equal(tile, want[0])


@pytest.mark.e2e
def test_hf_import_records_tfhub_scaled_and_resample_on_request(tmp_path, capsys):
    """`bigan import hf-biggan` writes z_sampling tfhub-scaled into the manifest (the checkpoint
    sampler draws by it), `--z-sampling resample` keeps bigan's; the other format refuses it."""
    pytest.importorskip("pytorch_pretrained_biggan")
    from bigan.checkpoint.weights import read_weights
    from bigan.cli import main
    from bigan.generation import open_sampler
    from tests.test_hf_biggan import make_hf_model

    make_hf_model(tmp_path / "src")
    for flag, mode in (([], "tfhub-scaled"), (["--z-sampling", "resample"], "resample")):
        out = tmp_path / mode
        assert main(["import", "hf-biggan", str(tmp_path / "src"), "--out", str(out), *flag]) == 0
        assert f"z sampling {mode}" in capsys.readouterr().out
        assert read_weights(out).manifest["z_sampling"] == mode
        assert open_sampler(out).z_sampling == mode
    assert main(["import", "biggan-pytorch", str(tmp_path / "src"), "--out", str(tmp_path / "x"),
                 "--z-sampling", "resample"]) == 2
    assert "--z-sampling applies to format hf-biggan only" in capsys.readouterr().err
