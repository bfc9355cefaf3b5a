"""bench/quality_photos.py and bench/photos_scoring.py on a tiny photo folder: a run stops at its
CPU budget, records the CPU seconds of every checkpoint, continues under a larger budget with
its CPU count kept, and the scoring writes curves, grids, the nearest-neighbour panel and rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import photos_scoring, quality_photos

pytestmark = pytest.mark.e2e


def _photo_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(24):
            img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            img[..., 0 if k == 0 else 2] += 180
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


@pytest.mark.slow
def test_a_run_keeps_its_cpu_budget_across_a_resume_and_is_scored(tmp_path, monkeypatch):
    monkeypatch.setitem(quality_photos.DATASETS, "tiny", (_photo_folder(tmp_path / "src"), None, 32))
    monkeypatch.setitem(photos_scoring.CLASSIFIER, "tiny", dict(epochs=1, width=4, max_images=None, flip=False))
    # The bench's own recipe, cut to a few fast steps: width 4, batch 8.
    monkeypatch.setattr(quality_photos, "COMMON", [*quality_photos.COMMON, "model.ch=4", "model.d_ch=4",
                                                   "train.batch_size=8"])
    out = tmp_path / "out"
    first = quality_photos.train_run(out, "tiny", "biggan", 0, budget_sec=2.0, ckpt_every=2)
    assert first["steps"] >= 1 and first["cpu_sec"] >= 2.0
    record = json.loads((Path(first["run"]) / "cpu_sec.json").read_text())
    assert record["total"] == pytest.approx(first["cpu_sec"], rel=0.05)
    second = quality_photos.train_run(out, "tiny", "biggan", 0, budget_sec=first["cpu_sec"] + 2.0, ckpt_every=2)
    assert second["steps"] > first["steps"] and second["cpu_sec"] >= first["cpu_sec"] + 2.0
    at = json.loads((Path(first["run"]) / "cpu_sec.json").read_text())["at_step"]
    steps = sorted(at, key=int)
    assert [at[s] for s in steps] == sorted(at[s] for s in steps)  # CPU seconds only grow
    assert at[str(first["steps"])] == pytest.approx(first["cpu_sec"], rel=0.05)  # kept across the resume

    result = photos_scoring.score_all(out, "tiny", n_domain=16, n_inception=0)
    (row,) = result["rows"]
    assert (row["variant"], row["seed"], row["steps"]) == ("biggan", 0, second["steps"])
    assert [p["cpu_sec"] for p in row["curve"]] == [at[s] for s in steps]
    assert row["at_common"] == row["last"] and result["common_cpu_sec"] == row["cpu_sec"]  # one run
    assert row["nearest"]["k"] == 5 and Path(row["nearest"]["png"]).is_file()
    assert Path(row["grid_png"]).is_file() and Path(result["curves_png"]).is_file()
    assert Path(result["grids_png"]).is_file()
    assert json.loads((out / "photos-tiny.json").read_text())["rows"][0]["last"]["fid"] == row["last"]["fid"]
