"""`bigan eval` and `bigan truncation-sweep` end to end on the tiny checkpoint and its ONNX export:
metrics JSON naming extractor and N, grid and interpolation PNGs, the sweep's CSV/JSON/PNGs and
recommendation, `--write` into the ONNX metadata, checkpoint/ONNX samplers agreeing, and
one-line errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from bigan.cli import main
from bigan.eval import sweep
from bigan.eval.errors import EvalError
from bigan.generation import open_sampler

pytestmark = [pytest.mark.e2e,
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")]


def _inception_file(path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, stride=8), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    torch.jit.script(net).save(str(path))
    return path


def test_eval_cli_end_to_end(tiny_checkpoint, tiny_eval_shards, tiny_classifier, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", str(tiny_checkpoint), "--data", str(tiny_eval_shards), "--n", "24",
                 "--classifier", str(tiny_classifier), "--inception-weights",
                 str(_inception_file(tmp_path / "inc.pt")), "--truncation", "0.8", "--baseline",
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    results = json.loads((out / "metrics.json").read_text())
    assert results["n"] == 24 and results["truncation"] == 0.8
    inc, dom = results["metrics"]["inception-v3-fid"], results["metrics"]["domain-classifier"]
    assert inc["comparable_to_published_fid"] and not dom["comparable_to_published_fid"]
    for m in (inc, dom):
        assert m["n_real"] == 24 and m["n_generated"] == 24 and m["extractor"]
        assert np.isfinite(m["fid"]) and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
        assert m["real_vs_real"]["n_real"] == 24
    assert 0 <= dom["class_accuracy"] <= 1 and "domain_inception_score" in dom
    grid = Image.open(results["files"]["grid_png"])
    strip = Image.open(results["files"]["interpolation_png"])
    assert grid.size[0] >= 256 and strip.size[0] > strip.size[1]
    printed = capsys.readouterr().out
    assert "not comparable with published FID" in printed and "N real 24" in printed


def test_checkpoint_and_onnx_samplers_draw_the_same_images(tiny_checkpoint, tiny_onnx):
    a, b = open_sampler(tiny_checkpoint), open_sampler(tiny_onnx)
    assert (a.kind, b.kind) == ("checkpoint", "onnx") and a.class_names == b.class_names
    x, y = a.images([0, 3, 1], [5, 6, 7], 0.7), b.images([0, 3, 1], [5, 6, 7], 0.7)
    np.testing.assert_allclose(x, y, atol=1e-4)
    assert x.shape == (3, 3, 32, 32)


def test_truncation_sweep_writes_curves_and_recommendation_into_onnx(
        tiny_onnx, tiny_eval_shards, tiny_classifier, tmp_path, capsys):
    import onnx

    onnx_copy = tmp_path / "model.onnx"
    onnx_copy.write_bytes(tiny_onnx.read_bytes())
    out = tmp_path / "sweep"
    code = main(["truncation-sweep", str(onnx_copy), "--data", str(tiny_eval_shards),
                 "--psi", "0.5:1.5:0.5", "--n", "16", "--classifier", str(tiny_classifier),
                 "--min-recall", "0.0", "--write", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    result = json.loads((out / "truncation_sweep.json").read_text())
    assert [r["psi"] for r in result["rows"]] == [0.5, 1.0, 1.5]
    assert result["recommended_truncation"] == 0.5  # min recall 0: the smallest psi
    assert result["rule"].startswith("smallest psi") and result["extractor"]["extractor"] == "domain-classifier"
    with open(out / "truncation_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and set(sweep.COLUMNS) == set(rows[0])
    assert Image.open(result["files"]["curves_png"]).size[0] > 800
    assert Image.open(result["files"]["strip_png"]).size[0] > 0
    props = {p.key: p.value for p in onnx.load(str(onnx_copy)).metadata_props}
    assert json.loads(props["recommended_truncation"]) == 0.5
    assert open_sampler(onnx_copy).describe()["recommended_truncation"] == 0.5
    assert "written into" in capsys.readouterr().out


def test_parse_psi_and_recommend_rules():
    assert sweep.parse_psi("0.1:2.0:0.1") == pytest.approx([round(0.1 * i, 1) for i in range(1, 21)])
    assert sweep.parse_psi("0.5, 1,2") == [0.5, 1.0, 2.0]
    for bad in ("0:1:0.5", "1:0.5:0.1", "a:b", "0.5,-1"):
        with pytest.raises(EvalError, match="--psi"):
            sweep.parse_psi(bad)
    rows = [{"psi": 0.5, "fid": 9.0, "recall": 0.2}, {"psi": 1.0, "fid": 5.0, "recall": 0.5},
            {"psi": 1.5, "fid": 6.0, "recall": 0.6}]
    assert sweep.recommend(rows, None) == (1.0, "psi of the lowest FID")
    assert sweep.recommend(rows, 0.45)[0] == 1.0
    psi, rule = sweep.recommend(rows, 0.9)
    assert psi == 1.5 and "highest recall" in rule


@pytest.mark.parametrize("argv, message", [
    (["eval", "{ckpt}"], "needs --data SHARDS"),
    (["eval", "{ckpt}", "--data", "{data}", "--no-inception"], "no feature extractor"),
    (["eval", "{ckpt}", "--data", "{data}", "--classifier", "{tmp}/none.safetensors"],
     "train-classifier"),
    (["eval", "train-classifier", "{data}"], "needs SHARDS and --out"),
    (["truncation-sweep", "{ckpt}", "--data", "{data}", "--write"], "not one"),
    (["eval", "{tmp}/missing", "--data", "{data}"], "does not exist"),
])
def test_eval_errors_are_one_line(argv, message, tiny_checkpoint, tiny_eval_shards, tmp_path, capsys):
    fill = {"ckpt": str(tiny_checkpoint), "data": str(tiny_eval_shards), "tmp": str(tmp_path)}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_train_classifier_command(tiny_eval_shards, tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    assert main(["eval", "train-classifier", str(tiny_eval_shards), "--out", str(out),
                 "--epochs", "1", "--width", "4"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index("{"):])
    assert out.is_file() and report["classes"] == 4 and report["path"] == str(out)


def test_a_classifier_of_other_classes_is_refused(tiny_checkpoint, tiny_eval_shards, tmp_path, capsys):
    from bigan.data.shards import make_synthetic
    from bigan.eval.classifier import train_classifier

    other = tmp_path / "other"
    make_synthetic(other, classes=3, resolution=32, n=60, min_shards=2)
    clf = train_classifier(other, tmp_path / "c3.safetensors", epochs=1, width=4, log=lambda s: None)
    assert main(["eval", str(tiny_checkpoint), "--data", str(tiny_eval_shards), "--n", "8",
                 "--no-inception", "--classifier", clf["path"],
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "trained on classes" in capsys.readouterr().err
