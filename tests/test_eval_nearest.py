"""bigan/eval/nearest.py and `bigan eval nearest`: the nearest training images of generated ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bigan import cli, pictures
from bigan.eval.features import ClassifierExtractor
from bigan.eval.nearest import nearest_neighbours, nearest_panel, pairwise_sq_distances
from bigan.eval.real_data import read_shard_images
from bigan.generation import open_sampler

pytestmark = pytest.mark.unit


def test_nearest_neighbours_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(37, 5)), rng.normal(size=(101, 5))
    idx, dist = nearest_neighbours(q, r, 4, chunk=8)
    brute = np.linalg.norm(q[:, None] - r[None], axis=-1)
    np.testing.assert_array_equal(idx, np.argsort(brute, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(dist, np.sort(brute, axis=1)[:, :4], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pairwise_sq_distances(q, r), brute ** 2, rtol=1e-9, atol=1e-9)


def test_the_panel_finds_an_exact_copy_planted_among_generated_images(tiny_checkpoint, tiny_eval_shards,
                                                                      tiny_classifier, tmp_path):
    clf = ClassifierExtractor(tiny_classifier)
    train, _, _ = read_shard_images(tiny_eval_shards, 240, 32)
    sampler = open_sampler(tiny_checkpoint)
    generated = pictures.to_uint8(sampler.images(np.arange(8) % 4, range(8), None))
    planted = 173
    generated[5] = train[planted]
    report = nearest_panel(generated, clf.extract(generated)[0], train, clf.extract(train)[0],
                           tmp_path / "nn.png", k=3)
    assert report.indices[5, 0] == planted and report.distances[5, 0] == pytest.approx(0, abs=1e-6)
    others = np.delete(report.distances[:, 0], 5)
    assert (others > 0).all()
    d = report.to_dict()
    assert d["near_copies"] >= 1 and d["copy_ratio_min"] == pytest.approx(0, abs=1e-6)
    # 8 rows of 5 cells (the image, a blank, 3 neighbours), 32 px with 2 px gaps, upscaled.
    width, height = Image.open(report.png).size
    assert width / height == pytest.approx((5 * 34 + 2) / (8 * 34 + 2), rel=0.01)
    assert report.indices.shape == (8, 3)


def test_cli_writes_the_panel_and_its_numbers(tiny_checkpoint, tiny_eval_shards, tiny_classifier, tmp_path,
                                              capsys):
    out = tmp_path / "nn"
    assert cli.main(["eval", "nearest", str(tiny_checkpoint), "--data", str(tiny_eval_shards),
                     "--classifier", str(tiny_classifier), "--n", "6", "--k", "4", "--out", str(out)]) == 0
    report = json.loads((out / "nearest.json").read_text())
    assert (report["n"], report["k"], report["train_images_searched"]) == (6, 4, 240)
    assert Image.open(out / "nearest.png").size[0] >= 384
    assert "near copies" in capsys.readouterr().out


def test_cli_refuses_a_missing_classifier_in_one_line(tiny_checkpoint, tiny_eval_shards, capsys):
    assert cli.main(["eval", "nearest", str(tiny_checkpoint), "--data", str(tiny_eval_shards)]) == 2
    err = capsys.readouterr().err
    assert "nearest needs MODEL, --data SHARDS and --classifier PATH" in err
