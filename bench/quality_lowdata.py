"""The `lowdata` part of bench/quality.py: data-efficient training on a fraction of the digits.

A class-conditional BigGAN (configs/demo.yaml) is trained on a stratified share (`fraction`,
default 10%) of scikit-learn's 1,797 digits; the rest is held out and is what every variant is
scored against. Variants, each with the same seeds: the baseline, DiffAugment (colour,
translation, cutout), DiffAugment + LeCam (lambda 0.3, hinge), DiffAugment with translation
alone, alone and with LeCam (lambda 0.1) or with R3GAN's objective (R1 + R2 at every D step or
lazily; BigGAN's two D steps per G step or R3GAN's one), ADA with its full pipeline and without
class-changing transforms, and the baseline on all the digits (which has seen the held-out
images: it is the "all data" reference of DiffAugment's Table 2, not a held-out score). Scored
with the domain classifier's features (FID, KID, precision, recall) and its class accuracy on the
generated images, plus a reference row of the training images themselves (`train-copies`: what
perfect memorisation scores). The variants and the data are in `lowdata_variants.py`, the table
and pictures in `lowdata_table.py`; this module drives the runs.

The budget is CPU time (`equal_cpu`, the default): the baseline trains `steps` G steps and every
other variant the G steps that cost the same, from its cost per step measured in alternating
short runs on this machine (`cost_ratios`; R3GAN's double backward makes its step 2.0x the
baseline's in process CPU time with two D steps per G step, 1.2x with one). `train_cpu_sec` in
every row shows what each run took.
`equal_cpu=False` gives every variant the same G steps instead. A run's directory is named by
its variant, seed and evaluation cadence, not its length: a larger budget is `bigan train
--resume auto` with a larger `train.steps` in the same directory (`resume_point`: resume is
bit-identical), so a row of an extended run counts only the extra steps' seconds and names the
checkpoint it continued (`resumed_from`), and its evaluation history goes on from the shorter
run's. The goal: the best subset variant closes >= half of the FID gap between the subset and
the all-data baselines (gap closed = (FID_subset_base - FID_variant) / (FID_subset_base -
FID_base100)), judged on the last snapshot and, for runs scored during training (`eval_every`),
on the best one.

ADA's speed is scaled to the run: the paper's 500 kimg for p to move by 1 is longer than the
whole budget here, so `augment.ada_kimg` is a quarter of the run's kimg (p can reach its cap
within the run); LeCam's EMA start is scaled the same way (its BigGAN script: 1000 of 100k+ steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from bench.lowdata_table import best_snapshot, curves_png, grids_png, print_lowdata, read_rows, summarize
from bench.lowdata_variants import COPIES, SCORES, VARIANTS, copies_row, pct, splits

__all__ = ["VARIANTS", "print_lowdata", "run_lowdata"]  # what bench/quality.py takes


@dataclasses.dataclass
class _Bench:
    """What every run of one call shares: where it writes, the data, the scorer and the budget."""

    out: Path
    fraction: float
    n_eval: int
    mode: str  # "cpu": every variant the baseline's CPU time; "steps": the same G steps
    steps: int  # the baseline's G steps
    eval_every: int
    subset: Path
    heldout: Path
    everything: Path
    clf_path: Path
    clf: object  # the ClassifierExtractor of clf_path
    budget: dict[str, int]  # variant -> its G steps
    rows: Path  # one row file per run


def run_lowdata(out: Path, seeds: list[int], steps: int, n_eval: int, quick: bool,
                variants: list[str] | None = None, fraction: float = 0.1,
                equal_cpu: bool = True, eval_every: int = 0) -> dict:
    """Train and score each variant and seed that has no row file under out yet. `steps` is the
    baseline's G steps; with `equal_cpu` every other variant gets the G steps that cost the
    same CPU time (cost_ratios), as DiffAugment's and the issue's "same budget" comparison
    asks, otherwise the same G steps. Processes may share `out`: set-up runs once under a lock,
    and each run is taken by one process (a lock per run directory). With `eval_every` each run
    is also scored every that many G steps by the trainer's own evaluation
    (`bigan.train.evaluation`, blocking, the same features and N), and its row adds the best
    snapshot (`best`) and the curves PNG: GAN papers report the best FID over training
    (BigGAN-PyTorch and StudioGAN keep the best checkpoint), and at this size the last
    snapshot's FID swings between neighbouring steps."""
    chosen, mode = variants or list(VARIANTS), "cpu" if equal_cpu and not quick else "steps"
    with _locked(out / ".lowdata.lock"):  # parallel processes into one --out set up once
        bench = _set_up(out, chosen, mode, steps, n_eval, quick, fraction, eval_every)
    for variant in chosen:
        for seed in seeds:
            _run(bench, variant, seed)
    # The table: this budget's rows, including those of other processes and earlier calls.
    runs = [r for r in read_rows(bench.rows) if r["seed"] is None or
            (r["budget"], r["base_steps"], r.get("eval_every", 0)) == (mode, steps, eval_every)]
    return {"steps": steps, "equal_cpu": mode == "cpu", "budget_steps": bench.budget, "n_eval": n_eval,
            "seeds": seeds, "runs": runs, "eval_every": eval_every,
            "summary": summarize(runs, fraction), "fraction": fraction, "heldout": str(bench.heldout),
            "train": str(bench.subset),
            "grids_png": str(grids_png(runs, out / f"lowdata_grids-{pct(fraction)}.png")),
            "curves_png": eval_every and str(curves_png(runs, out / f"lowdata_curves-{pct(fraction)}.png"))}


def _set_up(out: Path, chosen: list[str], mode: str, steps: int, n_eval: int, quick: bool,
            fraction: float, eval_every: int) -> _Bench:
    """The shards, the digits classifier (the evaluator's features, trained on all the digits),
    each variant's G steps, the rows directory and its train-copies reference row."""
    from bigan.eval.classifier import train_classifier
    from bigan.eval.features import ClassifierExtractor

    subset, heldout, everything = splits(out, fraction)
    clf_path = out / "digits-all-classifier.safetensors"
    if not clf_path.is_file() or quick:
        report = train_classifier(everything, clf_path, epochs=2 if quick else 15,
                                  width=8 if quick else 32, log=lambda s: None)
        clf_path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    clf = ClassifierExtractor(clf_path)
    budget = (equal_cpu_steps(steps, cost_ratios(out, chosen, subset, fraction))
              if mode == "cpu" else dict.fromkeys(chosen, steps))
    # One row file per run, per fraction: each fraction has its own held-out set, so a row
    # scored against one is not comparable with another's.
    rows = out / f"lowdata-rows-{pct(fraction)}"
    if quick:
        shutil.rmtree(rows, ignore_errors=True)
    rows.mkdir(parents=True, exist_ok=True)
    if not (rows / f"{COPIES}.json").is_file():
        _write_json(rows / f"{COPIES}.json", copies_row(heldout, clf, n_eval, fraction, out))
    return _Bench(out, fraction, n_eval, mode, steps, eval_every, subset, heldout, everything,
                  clf_path, clf, budget, rows)


def _run(b: _Bench, variant: str, seed: int) -> None:
    """Train (or extend) and score one run of `variant` unless its row exists or another
    process holds its directory."""
    on_subset, extra = VARIANTS[variant]
    name = f"{variant}-{pct(b.fraction)}" if on_subset else "baseline-100%"
    cadence = f"-eval{b.eval_every}" if b.eval_every else ""
    # The steps are in the row's name: the rows of one variant at other budgets stay apart (the
    # all-digits runs are shared by every fraction, and only re-scored). Its directory has none:
    # a larger budget resumes it.
    run = f"{name}-{b.budget[variant]}steps-s{seed}{cadence}"
    run_dir, row_file = b.out / "runs" / f"{name}-s{seed}{cadence}", b.rows / f"{run}.json"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir.parent / f".{run_dir.name}.lock", wait=False) as mine:
        if not mine or row_file.is_file():  # another process has it, or it is done
            return
        cfg = _config(b.subset if on_subset else b.everything, run_dir, b.budget[variant], seed, extra,
                      eval_every=b.eval_every, eval_with=(b.clf_path, b.heldout, b.n_eval, b.out))
        measured = _train_and_score(b, cfg, run)
        best = measured.pop("best_snapshot")
        row = {"variant": name, "seed": seed, "fraction": b.fraction if on_subset else 1.0,
               "overrides": extra, "budget": b.mode, "base_steps": b.steps,
               **measured, "eval_every": b.eval_every, **best}
        _write_json(row_file, row)
    print(f"  {name} seed {seed}: FID {row['fid']:.3f} KID {row['kid']:.4f} "
          f"P {row['precision']:.3f} R {row['recall']:.3f} acc {row['class_accuracy']:.3f}"
          f" ({b.budget[variant]} steps, {row['train_cpu_sec']:.0f} CPU s)", flush=True)


def _train_and_score(b: _Bench, cfg, run: str) -> dict:
    """`bigan train --resume auto` of cfg (its evaluator included), then its last snapshot
    scored against the held-out images: the row's measured fields."""
    from bigan.eval.evaluate import class_grid_png, evaluate
    from bigan.eval.run_evaluator import make_evaluator, read_history
    from bigan.generation import open_sampler
    from bigan.train.trainer import train

    start = resume_point(cfg)
    t0, cpu0 = time.perf_counter(), time.process_time()
    res = train(cfg, resume="auto", evaluator=make_evaluator(cfg))
    train_sec, train_cpu_sec = time.perf_counter() - t0, time.process_time() - cpu0
    sampler = open_sampler(res.last_checkpoint)
    grid = class_grid_png(sampler, b.out / f"lowdata_{run}.png")
    m = evaluate(sampler, b.heldout, [b.clf], b.n_eval, baseline=True,
                 cache_dir=b.out / "feature-cache", log=lambda s: None)["metrics"][b.clf.name]
    return {"steps": res.step, "kimg": res.cur_nimg / 1000, "train_sec": train_sec,
            "train_cpu_sec": train_cpu_sec,
            # A run extended from a shorter one: its train seconds count this part only.
            "resumed_from": start and str(start.relative_to(b.out)),
            "grid_png": str(grid), "ada_p": res.metrics.get("augment/p"),
            **{k: m[k] for k in SCORES},
            "real_vs_real_fid": (m.get("real_vs_real") or {}).get("fid"),
            "best_snapshot": best_snapshot(read_history(res.run_dir))}


def _eval_overrides(every_kimg: float, clf: Path | None = None, heldout: Path | None = None,
                    n_eval: int = 0, out: Path | None = None) -> list[str]:
    """In-training evaluation every `every_kimg` (none at 0) with the bench's own protocol:
    the digits classifier's features against the held-out images, N = n_eval, inside the
    training process (one core per run)."""
    if not every_kimg:
        return []
    return [f"eval.every_kimg={every_kimg}", "eval.mode=blocking", f"eval.n={n_eval}",
            f"eval.metrics=[{','.join(SCORES)}]", f"eval.extractor={clf}", f"eval.data={heldout}",
            f"eval.cache_dir={out / 'feature-cache'}"]


def _config(shards: Path, run_dir: Path, steps: int, seed: int, extra: list[str], log_every: int = 50,
            eval_every: int = 0, eval_with: tuple = ()):
    """demo.yaml on `shards` for `steps` G steps, logged every `log_every` G steps, checkpointed
    at the end only. The cadences and starts (kimg in the config) are whole G steps of this
    variant's own: batch x D steps images, so a variant with one D step per G step is scaled and
    scored on its own steps. The EMA starts at a fifth of the run, LeCam at a tenth of its D
    updates; the schedules that the paper sets in kimg are scaled to the run (see the module
    docstring), and `eval_every` G steps become eval.every_kimg (`_eval_overrides(...,
    *eval_with)`)."""
    from bigan.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    fixed = [f"data.path={shards}", f"train.out_dir={run_dir}", f"train.steps={steps}",
             f"train.seed={seed}", "train.keep_ckpts=1", "data.num_workers=0"]
    own = load_config(path, [*fixed, *extra])
    step_img = own.train.batch_size * own.optim.d_steps

    def kimg(images: int) -> str:  # an integer image count: exact in kimg (units.nimg)
        return repr(images / 1000)

    step_kimg = step_img / 1000
    cadences = [f"train.log_every_kimg={kimg(log_every * step_img)}",
                f"train.sample_every_kimg={kimg(1000000 * step_img)}",  # no grids while training
                f"train.ckpt_every_kimg={kimg(steps * step_img)}",
                f"ema.start_kimg={kimg(steps // 5 * step_img)}",
                f"augment.lecam_start_kimg={kimg(steps * 2 // 10 * own.train.batch_size)}"]  # D updates
    scaled = [f"augment.ada_kimg={max(steps * step_kimg / 4, 1e-3)}",
              *_eval_overrides(eval_every * step_kimg, *eval_with)]
    return load_config(path, [*fixed, *cadences, *scaled, *extra])

def step_seconds(stamps: list[tuple[int, float]]) -> list[float]:
    """Seconds per G step in each interval between (step, time) log stamps; the interval up to
    the first stamp (start-up, first-call allocation) has no stamp before it and is left out."""
    if len(stamps) < 2:
        raise ValueError(f"need at least two log stamps to time a step (got {len(stamps)})")
    return [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(stamps, stamps[1:])]


def equal_cpu_steps(steps: int, ratios: dict[str, float]) -> dict[str, int]:
    """G steps per variant for the CPU time of `steps` baseline steps: steps / cost ratio."""
    return {v: max(1, round(steps / r)) for v, r in ratios.items()}


def cost_ratios(out: Path, variants: list[str], subset: Path, fraction: float,
                probe_steps: int = 50, log_every: int = 10, rounds: int = 2) -> dict[str, float]:
    """Each variant's CPU time per G step over the baseline's, measured here: short runs of the
    baseline and of every variant not yet in out's cost file, in alternating rounds (this
    machine's speed drifts 20-30% within minutes, so a ratio is only taken within one session),
    the median over all their logged intervals. Variants with the baseline's overrides (the
    all-digits run) take the same step on other images: their ratio is 1 by construction. Kept
    in out/quality_lowdata-{pct}.cost.json so later and parallel runs give each variant the
    same steps."""
    from bigan.train.hooks import TrainHooks
    from bigan.train.trainer import train

    class StepClock(TrainHooks):
        def __init__(self):
            self.stamps: list[tuple[int, float]] = []

        def on_metrics(self, step: int, metrics: dict) -> None:
            # CPU time of this process, not wall time: time spent descheduled while another
            # process had the core is not this variant's cost.
            self.stamps.append((step, time.process_time()))

    path = out / f"quality_lowdata-{pct(fraction)}.cost.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    known = dict(stored)
    known.update({v: 1.0 for v in variants if v not in known and not VARIANTS[v][1]})
    todo = [v for v in variants if v not in known]
    if todo:
        names = ["baseline", *todo]
        secs: dict[str, list[float]] = {v: [] for v in names}
        for r in range(rounds):
            for v in names:
                run_dir = out / "cost-probe" / f"{v}-r{r}"
                clock = StepClock()
                train(_config(subset, run_dir, probe_steps, 0, VARIANTS[v][1], log_every), hooks=clock)
                secs[v] += step_seconds(clock.stamps)
                shutil.rmtree(run_dir)
        base = float(np.median(secs["baseline"]))
        for v in todo:
            known[v] = float(np.median(secs[v])) / base
            print(f"  cost of {v}: {known[v]:.2f}x the baseline's per G step "
                  f"({1000 * float(np.median(secs[v])):.0f} ms against {1000 * base:.0f} ms)", flush=True)
    if known != stored:  # atomic, as the rows: a parallel process reads the whole file or none
        _write_json(path, known)
    return {v: known[v] for v in variants}


# Fields a longer run of one variant and seed may differ in from the shorter one it extends:
# the length itself and the EMA's start (steps // 5: the EMA only follows G and feeds nothing
# back, and with decay 0.99 what it averaged before the longer run's start weighs
# 0.99^(steps - start) < 1e-6 at the end); out_dir and data.path for a directory or --out moved
# by hand (the shards are rebuilt per --out from the same seed). ADA's speed and LeCam's start
# also scale with the steps: they may differ only where ADA or LeCam is off.
_LENGTH_FIELDS = {"train.steps", "train.out_dir", "train.ckpt_every_kimg", "ema.start_kimg", "data.path"}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _trajectory(cfg) -> dict:
    """cfg's fields that decide G's and D's weights at a given step, flat: not those in
    _LENGTH_FIELDS, nor the settings of ADA or LeCam when they are off."""
    flat = {k: v for k, v in _flat(dataclasses.asdict(cfg)).items() if k not in _LENGTH_FIELDS}
    if flat["augment.kind"] != "ada":
        flat = {k: v for k, v in flat.items() if not k.startswith("augment.ada_")}
    if not flat["augment.lecam_weight"]:
        flat = {k: v for k, v in flat.items() if not k.startswith("augment.lecam_")}
    return flat


def resume_point(cfg) -> Path | None:
    """The checkpoint in cfg's run directory that `--resume auto` with cfg's (larger)
    `train.steps` continues exactly: its newest, when that is short of cfg's steps and differs
    from cfg only in _LENGTH_FIELDS (a run of a smaller budget: only the extra steps are
    trained). None when the run is already at its steps (it is only scored) or starts fresh. A
    directory holding another trajectory (a longer run; ADA's speed or LeCam's start scaled to
    another length; other settings) is emptied first: the rows of the budgets it ran keep
    their results."""
    from bigan.checkpoint.checks import STEP_DIR
    from bigan.checkpoint.store import list_checkpoints
    from bigan.config import load_config

    run_dir = Path(cfg.train.out_dir)
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if ckpts:
        at = int(STEP_DIR.match(ckpts[-1].name).group(1))
        if at <= cfg.train.steps and _trajectory(load_config(ckpts[-1] / "config.yaml")) == _trajectory(cfg):
            return ckpts[-1] if at < cfg.train.steps else None
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return None


@contextlib.contextmanager
def _locked(path: Path, wait: bool = True):
    """An exclusive lock on `path` (flock: the kernel drops it when a process dies, so a killed
    run never leaves a stale lock); yields False when `wait` is off and another process holds it."""
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_json(path: Path, obj: dict) -> None:
    """fsync'd and renamed into place (the checkpoint package's write): a parallel process, or
    the next call after a crash, reads the whole file or none."""
    from bigan.checkpoint.durable import write_atomically

    write_atomically(path, json.dumps(obj, indent=2).encode())
