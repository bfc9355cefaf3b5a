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


@pytest.mark.slow
def test_a_progan_run_is_scored_phase_by_phase_against_reals_at_each_phase_side(tmp_path, monkeypatch):
    src = _photo_folder(tmp_path / "src")
    monkeypatch.setitem(quality_photos.DATASETS, "tiny", (src, None, 16))
    monkeypatch.setitem(photos_scoring.CLASSIFIER, "tiny", dict(epochs=1, width=4, max_images=None, flip=False))
    # The bench's ProGAN recipe, cut to phases of 16 images at widths 8, batch 8: 4 -> 8 -> 16 px.
    monkeypatch.setitem(quality_photos.VARIANTS, "progan", [
        *quality_photos.PROGAN, "model.fmap_base=32", "model.fmap_max=8", "progressive.fade_kimg=0.016",
        "progressive.stab_kimg=0.016", "progressive.batch_size={4: 8, 8: 8, 16: 8}", "train.batch_size=8"])
    out = tmp_path / "out"
    # 5 phases of 2 steps each (4 stable, 8 fade, 8 stable, 16 fade, 16 stable): stop after 12 steps.
    monkeypatch.setattr(quality_photos.CpuBudget, "should_stop", lambda self, step: step >= 12)
    row = quality_photos.train_run(out, "tiny", "progan", 0, budget_sec=1e9, ckpt_every=1)
    run = Path(row["run"])
    shards, _ = quality_photos.shards_for("tiny", out)
    clf_path, _ = photos_scoring.classifier_for("tiny", shards, None, out)

    from bench import photos_progan

    scores = photos_progan.score_phases(run, "tiny", src, out, clf_path, n_domain=16, n_inception=0)
    phases = scores["phases"]
    assert sorted(phases, key=int) == ["4", "8", "16"]
    cpu = json.loads((run / "cpu_sec.json").read_text())["at_step"]
    for side, p in phases.items():
        # The last fully faded-in checkpoint of the phase, scored against reals packed at its side.
        ref = json.loads((out / "data" / f"tiny-phase-{side}" / "dataset.json").read_text())
        assert ref["resolution"] == int(side) and p["n"] == 16 and p["cpu_sec"] == cpu[str(p["step"])]
    # Each phase's row is its last checkpoint at that side with the block faded in: the next
    # checkpoint is already fading in the next side.
    from bigan.generation import open_sampler

    assert phases["16"]["step"] == 12
    for side, nxt in (("4", 8), ("8", 16)):
        G = open_sampler(run / "checkpoints" / f"step-{phases[side]['step'] + 1:08d}").G
        assert (G.current_resolution, G.alpha < 1.0) == (nxt, True)
    png = Image.open(scores["phase_grids_png"])
    side = photos_progan.DISPLAY_SIDE
    assert png.size == (3 * photos_progan.PHASE_GRID_PER_CLASS * side + 2 * 8, 2 * side + 16)


def test_the_spread_is_zero_for_a_generator_that_ignores_z_and_one_for_real_variety():
    from bench import photos_diagnostics as diag

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (2, diag.PER_CLASS, 32, 32, 3), dtype=np.uint8)  # 2 classes
    real_d = np.mean([diag.mean_pairwise_distance(diag._small(real[c])) for c in range(2)])

    class Sampler:  # the ImageSampler interface: float NCHW in [-1, 1] for (class, seed) pairs
        def __init__(self, collapsed: bool):
            self.collapsed = collapsed

        def images(self, classes, seeds):
            picks = [real[c][0 if self.collapsed else s] for c, s in zip(classes, seeds)]
            return np.stack(picks).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1

    assert diag.spread(Sampler(collapsed=True), real_d, 2) == 0.0
    assert diag.spread(Sampler(collapsed=False), real_d, 2) == pytest.approx(1.0, rel=1e-5)
    import torch

    assert diag.mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
