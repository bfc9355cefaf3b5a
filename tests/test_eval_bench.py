"""bench/quality.py --quick end to end: both mixtures and the digits part write their JSON,
tables and PNGs (the numbers of a quick run mean nothing; the full run's are in the README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.e2e



@pytest.mark.slow
def test_quality_bench_quick(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BIGAN_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--quick",
                           "--parts", "ring,grid,digits", "--out", str(tmp_path / "q")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PacGAN Table 1 GAN" in proc.stdout and "class accuracy of generated samples" in proc.stdout
    summary = json.loads((tmp_path / "q" / "quality.json").read_text())
    for kind in ("ring", "grid"):
        s = summary[kind]["summary"]
        assert s["seeds"] == 1 and Path(s["png"]).is_file() and 0 <= s["high_quality_pct_mean"] <= 100
    digits = summary["digits"]
    assert digits["training"]["steps"] >= 1 and Path(digits["grid_png"]).is_file()
    assert not digits["domain"]["comparable_to_published_fid"] and digits["domain"]["n_generated"] == 100
    assert Path(digits["sweep"]["files"]["curves_png"]).is_file()
    assert Path(digits["sweep"]["files"]["strip_png"]).is_file()


def test_lowdata_summary_closes_the_gap_of_its_own_fraction():
    from bench.lowdata_table import summarize

    row = lambda variant, fid: {"variant": variant, "fid": fid, "kid": 0.0, "precision": 0.5,  # noqa: E731
                                "recall": 0.5, "class_accuracy": 0.9}
    runs = [row("baseline-2%", 10.0), row("baseline-2%", 12.0), row("diffaugment-2%", 8.0),
            row("ada-2%", 10.5), row("baseline-100%", 5.0), row("train-copies-2%", 4.0)]
    s = summarize(runs, fraction=0.02)
    # the training images themselves are a reference row, never the best variant
    assert s["train-copies-2%"]["gap_closed"] == pytest.approx(7 / 6)
    assert s["baseline-2%"]["fid"] == 11.0 and s["baseline-2%"]["fid_std"] == 1.0
    assert s["diffaugment-2%"]["gap_closed"] == pytest.approx(0.5)  # (11 - 8) / (11 - 5)
    assert s["_goal"] == {"best": "diffaugment-2%", "gap_closed": pytest.approx(0.5), "met": True}
    assert "_goal_best" not in s and "best_fid" not in s["diffaugment-2%"]  # not scored in training
    # No gap (the subset baseline as good as all the data): nothing to close, no goal verdict.
    assert "_goal" not in summarize([row("baseline-10%", 1.0), row("baseline-100%", 1.2)], 0.1)
    # Scored during training: the best snapshots' gap, from the baselines' best snapshots
    best = lambda r, fid, step: {**r, "best": {"fid": fid, "step": step}}  # noqa: E731
    s = summarize([best(row("baseline-2%", 10.0), 9.0, 100), best(row("baseline-2%", 12.0), 11.0, 300),
                   best(row("diffaugment-2%", 8.0), 5.0, 200), best(row("baseline-100%", 5.0), 4.0, 300),
                   row("train-copies-2%", 4.0)], fraction=0.02)
    assert s["baseline-2%"]["best_fid"] == 10.0 and s["baseline-2%"]["best_step"] == 200
    assert s["diffaugment-2%"]["best_gap_closed"] == pytest.approx(5 / 6)  # (10 - 5) / (10 - 4)
    assert s["train-copies-2%"]["best_gap_closed"] == pytest.approx(1.0)  # its FID is its best
    assert s["_goal_best"] == {"best": "diffaugment-2%", "gap_closed": pytest.approx(5 / 6), "met": True}


def test_copying_sampler_returns_the_training_images_of_each_class():
    from bench.lowdata_variants import CopyingSampler

    images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    labels = np.array([0, 1, 0, 1, 1])
    out = CopyingSampler(images, labels, ["a", "b"]).images([0, 0, 1, 1, 1, 1], [0, 1, 0, 1, 2, 3])
    assert out.shape == (6, 3, 4, 4) and out.dtype == np.float32
    back = np.round((out + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(back, images[[0, 2, 1, 3, 4, 1]])  # seed s: the (s mod n_c)-th


def test_lowdata_grids_png_puts_each_variants_lowest_seed_side_by_side(tmp_path):
    from PIL import Image

    from bench.lowdata_table import grids_png

    def row(variant, seed, shade):
        png = tmp_path / f"{variant}-{seed}.png"
        Image.fromarray(np.full((40, 30, 3), shade, np.uint8)).save(png)
        return {"variant": variant, "seed": seed, "grid_png": str(png), "fid": 1.0, "recall": 0.5,
                "class_accuracy": 0.9}

    runs = [row("baseline-100%", 0, 255), row("baseline-2%", 1, 0), row("baseline-2%", 0, 128),
            {"variant": "train-copies-2%", "seed": None, "fid": 2.0}]  # no grid: not shown
    out = np.asarray(Image.open(grids_png(runs, tmp_path / "grids.png")).convert("L"))
    # two panels, left to right: the subset baseline's seed 0 (grey), then the reference (white)
    middle = out[out.shape[0] // 2]
    grey, white = np.flatnonzero(np.abs(middle.astype(int) - 128) < 3), np.flatnonzero(middle > 250)
    assert grey.size and white.size and grey.mean() < out.shape[1] / 2
    assert not np.any(middle < 3)  # seed 1's black grid is not drawn
    assert white[white > grey.max()].size > 20


def test_lowdata_kimg_settings_follow_each_variants_own_images_per_g_step(tmp_path):
    """Every 50 G steps and ADA's speed (a quarter of the run) are converted to kimg from the
    variant's own batch x D steps: R3GAN's one D step per G step takes half the baseline's images."""
    from bench.lowdata_variants import VARIANTS
    from bench.quality_lowdata import _config

    scoring = (tmp_path / "clf.safetensors", tmp_path / "heldout", 500, tmp_path)
    base = _config(tmp_path, tmp_path / "b", 1000, 0, [], eval_every=50, eval_with=scoring)
    one_d = _config(tmp_path, tmp_path / "r", 1000, 0, VARIANTS["diffaugment-translation+r3gan-1d"][1],
                    eval_every=50, eval_with=scoring)
    assert (base.optim.d_steps, one_d.optim.d_steps) == (2, 1)
    assert (base.eval.every_kimg, one_d.eval.every_kimg) == pytest.approx((3.2, 1.6))
    assert (base.augment.ada_kimg, one_d.augment.ada_kimg) == pytest.approx((16.0, 8.0))
    assert _config(tmp_path, tmp_path / "n", 1000, 0, []).eval.every_kimg == 0


def test_lowdata_equal_cpu_budget_scales_each_variants_steps_by_its_measured_cost():
    from bench.quality_lowdata import equal_cpu_steps, step_seconds

    # the interval up to the first stamp (start-up) is left out
    assert step_seconds([(10, 100.0), (20, 105.0), (30, 108.0), (50, 112.0)]) == pytest.approx([0.5, 0.3, 0.2])
    with pytest.raises(ValueError, match="two log stamps"):
        step_seconds([(10, 1.0)])
    assert equal_cpu_steps(1000, {"baseline": 1.0, "r3gan": 2.7, "cheap": 0.8, "huge": 5000.0}) == {
        "baseline": 1000, "r3gan": 370, "cheap": 1250, "huge": 1}


def test_lowdata_cost_ratios_are_reused_from_the_cost_file(tmp_path, monkeypatch):
    import bigan.train.trainer
    from bench.quality_lowdata import cost_ratios

    def no_training(*args, **kwargs):
        raise AssertionError("a variant with a known cost was timed again")

    monkeypatch.setattr(bigan.train.trainer, "train", no_training)
    (tmp_path / "quality_lowdata-2%.cost.json").write_text(
        json.dumps({"baseline": 1.0, "diffaugment-translation+r3gan": 2.6, "ada": 1.3}))
    ratios = cost_ratios(tmp_path, ["baseline", "diffaugment-translation+r3gan", "baseline-all"], tmp_path, 0.02)
    # the all-digits baseline trains the baseline's step on other images: not timed again
    assert ratios == {"baseline": 1.0, "diffaugment-translation+r3gan": 2.6, "baseline-all": 1.0}


def test_lowdata_rows_are_one_file_per_run_and_runs_are_taken_by_one_process(tmp_path):
    from bench.lowdata_table import read_rows
    from bench.quality_lowdata import _locked, _write_json

    for name, seed, steps in [("baseline-100%", 0, 799), ("diffaugment-translation+r3gan-2%", 1, 429),
                              ("baseline-2%", 1, 1000), ("baseline-2%", 0, 1000),
                              ("train-copies-2%", None, None)]:
        _write_json(tmp_path / f"{name}-{steps}-{seed}.json", {"variant": name, "seed": seed, "steps": steps})
    assert [(r["variant"], r["seed"]) for r in read_rows(tmp_path)] == [
        ("train-copies-2%", None), ("baseline-2%", 0), ("baseline-2%", 1),
        ("diffaugment-translation+r3gan-2%", 1), ("baseline-100%", 0)]
    assert not list(tmp_path.glob("*.tmp"))
    with _locked(tmp_path / ".run.lock", wait=False) as first:
        with _locked(tmp_path / ".run.lock", wait=False) as second:  # another open file: refused
            assert first and not second
    with _locked(tmp_path / ".run.lock", wait=False) as again:  # released on leaving
        assert again


def _fake_run(run_dir: Path, cfg, step: int | None = None) -> Path:
    """A run directory holding one complete checkpoint of cfg (its config and a manifest) at
    `step` (cfg's steps unless given) and an evaluation history."""
    from bigan.config import dump_config

    ckpt = run_dir / "checkpoints" / f"step-{step or cfg.train.steps:08d}"
    ckpt.mkdir(parents=True)
    (ckpt / "config.yaml").write_text(dump_config(cfg))
    (ckpt / "manifest.json").write_text("{}")
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "history.jsonl").write_text("{}\n")
    return ckpt


def test_lowdata_longer_run_resumes_its_shorter_run_only_where_it_continues_it_exactly(tmp_path):
    """A run's directory has no length in its name: a larger budget resumes what is there when
    only the length differs, and empties it (the history too) when it holds another trajectory."""
    from bench.lowdata_variants import VARIANTS
    from bench.quality_lowdata import _config, resume_point

    data, lazy, ada = tmp_path / "data", "diffaugment-translation+r1r2-lazy", "ada-digits"

    def cfg(variant, steps, seed=0, extra=()):
        return _config(data, tmp_path / f"{variant}-s{seed}", steps, seed, [*VARIANTS[variant][1], *extra])

    assert resume_point(cfg(lazy, 2000)) is None  # nothing there: a fresh run
    # the EMA's start, ADA's speed and LeCam's start scale with the steps: only the first may differ
    shorter = _fake_run(tmp_path / f"{lazy}-s0", cfg(lazy, 905))
    assert resume_point(cfg(lazy, 2000)) == shorter and (shorter.parent.parent / "eval").is_dir()
    assert resume_point(cfg(lazy, 905)) is None and shorter.is_dir()  # at its steps: only scored
    assert resume_point(cfg(lazy, 800)) is None  # a longer run is not a prefix: emptied
    assert not (tmp_path / f"{lazy}-s0").exists()
    # the same name and seed, but other settings (the run was made with other overrides)
    _fake_run(tmp_path / f"{lazy}-s0", cfg(lazy, 950, extra=["loss.penalty_weight=2.0"]))
    assert resume_point(cfg(lazy, 2000)) is None and not (tmp_path / f"{lazy}-s0").exists()
    # ADA's speed is a quarter of the run's kimg: a longer run is another trajectory
    _fake_run(tmp_path / f"{ada}-s0", cfg(ada, 1000))
    assert resume_point(cfg(ada, 2000)) is None and not (tmp_path / f"{ada}-s0").exists()
    # a run of this very length that stopped at 1200 (a crash) goes on from there
    crashed = _fake_run(tmp_path / f"{lazy}-s1", cfg(lazy, 2000, seed=1), step=1200)
    assert resume_point(cfg(lazy, 2000, seed=1)) == crashed


@pytest.mark.slow
def test_lowdata_run_extended_from_a_shorter_one_equals_a_fresh_run(tmp_path):
    """What makes reuse exact: resuming the 3-step run to 6 steps in its directory gives a fresh
    6-step run's G and D bit for bit; only the EMA, started at another step, may differ (by its
    decayed start)."""
    from safetensors.torch import load_file

    from bench.lowdata_variants import VARIANTS, splits
    from bench.quality_lowdata import _config, resume_point
    from bigan.train.trainer import train

    subset, _, _ = splits(tmp_path, 0.02)
    run, extra = tmp_path / "runs" / "v-s0", [*VARIANTS["diffaugment-translation"][1], "train.batch_size=8"]
    train(_config(subset, run, 3, 0, extra), resume="auto")
    longer = _config(subset, run, 6, 0, extra)
    prefix = resume_point(longer)
    assert prefix is not None and prefix.name == "step-00000003"
    extended = train(longer, resume="auto").last_checkpoint
    fresh = train(_config(subset, tmp_path / "fresh", 6, 0, extra), resume="auto").last_checkpoint
    assert extended.parent.parent == run and extended.name == "step-00000006"
    for part in ("G", "D"):
        a, b = load_file(extended / f"{part}.safetensors"), load_file(fresh / f"{part}.safetensors")
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), part


@pytest.mark.slow
def test_lowdata_run_scored_during_training_reports_its_best_snapshot_and_trains_the_same(tmp_path):
    """In-training evaluation neither changes what is trained (the same G and D bit for bit) nor
    scores differently from the bench: its last record equals the row's own last-snapshot scores.
    The scored run is a 5-step run extended to 6 (`--resume auto` with the larger train.steps in
    its directory): it trains what a fresh run does (the EMA too: both start it at step 6 // 5 =
    5 // 5), and its history goes on from the shorter run's, whose last step was scored."""
    from safetensors.torch import load_file

    from bench.quality_lowdata import SCORES, run_lowdata

    def bench(steps, eval_every):
        return run_lowdata(tmp_path, [0], steps, 40, True, ["baseline"], 0.02, eval_every=eval_every)

    plain, shorter = bench(6, 0)["runs"], bench(5, 2)["runs"]
    assert next(r for r in shorter if r["seed"] == 0)["resumed_from"] is None
    scored = bench(6, 2)
    row = next(r for r in scored["runs"] if r["seed"] == 0)
    assert row["resumed_from"] == "runs/baseline-2%-s0-eval2/checkpoints/step-00000005"
    assert row["eval_every"] == 2 and row["evaluations"] == 4  # steps 2, 4, 5 (the shorter's last) and 6
    assert Path(scored["curves_png"]).read_bytes()[:4] == b"\x89PNG"
    history = [json.loads(line) for line in
               (tmp_path / "runs" / "baseline-2%-s0-eval2" / "eval" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4, 5, 6]
    assert row["fid_curve"] == [[h["step"], h["metrics"]["eval/fid"]] for h in history]
    best = min(history, key=lambda h: h["metrics"]["eval/fid"])
    assert row["best"] == {"step": best["step"], "kimg": best["kimg"],
                           **{k: best["metrics"][f"eval/{k}"] for k in SCORES}}
    assert {k: row[k] for k in SCORES} == pytest.approx({k: history[-1]["metrics"][f"eval/{k}"] for k in SCORES})
    s = scored["summary"]["baseline-2%"]
    assert s["best_fid"] == row["best"]["fid"] <= s["fid"] and s["best_step"] == row["best"]["step"]
    ckpts = [tmp_path / "runs" / run / "checkpoints" / "step-00000006"
             for run in ("baseline-2%-s0", "baseline-2%-s0-eval2")]
    for part in ("G", "D"):
        a, b = (load_file(c / f"{part}.safetensors") for c in ckpts)
        assert all(a[k].equal(b[k]) for k in a), part
    assert plain[-1]["fid"] == pytest.approx(row["fid"])
