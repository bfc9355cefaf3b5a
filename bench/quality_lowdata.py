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
perfect memorisation scores).

The budget is CPU time (`equal_cpu`, the default): the baseline trains `steps` G steps and every
other variant the G steps that cost the same, from its cost per step measured in alternating
short runs on this machine (`cost_ratios`; R3GAN's double backward makes its step 2.0x the
baseline's in process CPU time with two D steps per G step, 1.2x with one). `train_cpu_sec` in
every row shows what each run took.
`equal_cpu=False` gives every variant the same G steps instead. A larger budget extends the runs
already in `out` (`shorter_run`: resume is bit-identical), so a row of an extended run counts
only the extra steps' seconds and names the run it continued (`resumed_from`). The goal: the
best subset variant closes >= half of the FID gap between the subset and the all-data baselines
(gap closed = (FID_subset_base - FID_variant) / (FID_subset_base - FID_base100)), judged on the
last snapshot and, for runs scored during training (`eval_every`), on the best one.

ADA's speed is scaled to the run: the paper's 500 kimg for p to move by 1 is longer than the
whole budget here, so `augment.ada_kimg` is a quarter of the run's kimg (p can reach its cap
within the run); LeCam's EMA start is scaled the same way (its BigGAN script: 1000 of 100k+ steps).
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from pathlib import Path

import numpy as np

VARIANTS = {  # name -> (trained on the subset, not all the digits; overrides)
    "baseline": (True, []),
    "diffaugment": (True, ["augment.kind=diffaugment"]),
    "diffaugment+lecam": (True, ["augment.kind=diffaugment", "augment.lecam_weight=0.3"]),
    # Cutout erases up to half of a thin-stroke digit, which can leave a real image that no
    # longer shows its class; DiffAugment's paper also ran translation alone on small data.
    "diffaugment-translation": (True, ["augment.kind=diffaugment", "augment.policy=translation"]),
    "ada": (True, ["augment.kind=ada"]),
    # ADA without the transforms that turn one digit into another (flips, 90-degree and free
    # rotations, which make a 6 a 9) or invert the ink (luma flip): StyleGAN2-ADA's --augpipe.
    "ada-digits": (True, ["augment.kind=ada",
                          "augment.ada_pipeline=xint,scale,aniso,xfrac,brightness,contrast"]),
    # LeCam at a third of the paper's lambda: 0.3 collapsed the classes with DiffAugment on 10%.
    "diffaugment-translation+lecam": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                             "augment.lecam_weight=0.1"]),
    # R3GAN's objective (relativistic pairing + R1 + R2) on top: gamma 1, not R3GAN's 0.05,
    # because this D is spectrally normalised: its squared input-gradient norm on real digits
    # measured 0.57-0.66 after 1,000 steps, so gamma 0.05 would add ~0.02 to a loss of ~1.
    "diffaugment-translation+r3gan": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                             "loss.kind=rpgan", "loss.penalty=r1+r2",
                                             "loss.penalty_weight=1.0"]),
    # Its two halves apart: the pairing loss alone, and lazy R1 + R2 with the hinge loss.
    "diffaugment-translation+rpgan": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                             "loss.kind=rpgan"]),
    "diffaugment-translation+r1r2-lazy": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                                 "loss.penalty=r1+r2", "loss.penalty_weight=1.0",
                                                 "loss.penalty_interval=4"]),
    # The same with lazy R1 + R2 (StyleGAN2): every 4th D step, weighted by 4, which cuts most
    # of the double backward's cost.
    "diffaugment-translation+r3gan-lazy": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                                  "loss.kind=rpgan", "loss.penalty=r1+r2",
                                                  "loss.penalty_weight=1.0", "loss.penalty_interval=4"]),
    # R3GAN's own schedule: one D step per G step (its configs), not BigGAN's two. That halves
    # the double backwards per G step, which is what made R3GAN's step 2.0x the baseline's.
    "diffaugment-translation+r3gan-1d": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                                "loss.kind=rpgan", "loss.penalty=r1+r2",
                                                "loss.penalty_weight=1.0", "optim.d_steps=1"]),
    "baseline-all": (False, []),
}
COPIES = "train-copies"  # a reference row: the training images themselves, scored as a generator


class CopyingSampler:
    """The training images as a "generator": (class c, seed s) gives the (s mod n_c)-th training
    image of class c. Scored like a trained G, it is what perfect memorisation reaches."""

    kind, path, dim_z = "copies", None, 0

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str]):
        self.by_class = [images[labels == k] for k in range(len(class_names))]
        self.class_names, self.resolution = class_names, images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        return {"path": None, "kind": self.kind, "classes": self.num_classes, "dim_z": 0,
                "resolution": self.resolution}

    def images(self, classes, seeds, psi=None, batch_size=64, progress=None) -> np.ndarray:
        picks = np.stack([self.by_class[c][s % len(self.by_class[c])] for c, s in zip(classes, seeds)])
        return picks.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0  # uint8 NHWC -> [-1, 1] NCHW


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _subset_mask(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Stratified: the same share of every class, drawn with seed 0."""
    rng = np.random.default_rng(0)
    train = np.zeros(len(labels), bool)
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        train[idx[:max(1, round(fraction * len(idx)))]] = True
    return train


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits at 32 px, RGB (uint8 NHWC) and their labels."""
    from bigan.data import synthetic

    return synthetic.digits(32, channels=3)


def _splits(out: Path, fraction: float) -> tuple[Path, Path, Path]:
    """(train shards: `fraction` of every class, held-out shards: the rest, all-digits shards)
    under out/data, made once."""
    from bigan.data import synthetic
    from bigan.data.shards import pack
    from bigan.data.sources import ImageSource

    images, labels = _digits()
    train = _subset_mask(labels, fraction)
    tag = f"digits{100 * fraction:g}"
    dirs = {}
    for name, mask in ((f"{tag}-train", train), (f"{tag}-heldout", ~train),
                       ("digits-all", np.ones_like(train))):
        d = out / "data" / name
        if not (d / "dataset.json").is_file():
            src = ImageSource("digits", f"sklearn.datasets.load_digits ({name}, seed 0)",
                              list(synthetic.DIGIT_CLASS_NAMES), labels[mask], images=images[mask])
            pack(src, d, 32, fmt="png", min_shards=4, progress=False)
        dirs[name] = d
    return dirs[f"{tag}-train"], dirs[f"{tag}-heldout"], dirs["digits-all"]


def run_lowdata(out: Path, seeds: list[int], steps: int, n_eval: int, quick: bool,
                variants: list[str] | None = None, fraction: float = 0.1,
                equal_cpu: bool = True, eval_every: int = 0) -> dict:
    """Train and score each variant and seed that has no row file under out yet. `steps` is the
    baseline's G steps; with `equal_cpu` every other variant gets the G steps that cost the
    same CPU time (cost_ratios), as DiffAugment's and the issue's "same budget" comparison
    asks, otherwise the same G steps. Processes may share `out`: set-up runs once under a lock,
    and each run is taken by one process (a lock per run). With `eval_every` each run is also
    scored every that many G steps by the trainer's own evaluation (`bigan.train.evaluation`,
    blocking, the same features and N), and its row adds the best snapshot (`best`) and the
    curves PNG: GAN papers report the best FID over training (BigGAN-PyTorch and StudioGAN keep
    the best checkpoint), and at this size the last snapshot's FID swings between neighbouring
    steps."""
    from bigan.eval.classifier import train_classifier
    from bigan.eval.evaluate import class_grid_png, evaluate
    from bigan.eval.features import ClassifierExtractor
    from bigan.eval.run_evaluator import make_evaluator, read_history
    from bigan.generation import open_sampler
    from bigan.train.trainer import train

    chosen, mode = variants or list(VARIANTS), "cpu" if equal_cpu and not quick else "steps"
    with _locked(out / ".lowdata.lock"):  # parallel processes into one --out set up once
        subset, heldout, everything = _splits(out, fraction)
        clf_path = out / "digits-all-classifier.safetensors"
        if not clf_path.is_file() or quick:  # the evaluator's features: trained on all the digits
            report = train_classifier(everything, clf_path, epochs=2 if quick else 15,
                                      width=8 if quick else 32, log=lambda s: None)
            clf_path.with_suffix(".json").write_text(json.dumps(report, indent=2))
        clf = ClassifierExtractor(clf_path)
        budget = (equal_cpu_steps(steps, cost_ratios(out, chosen, subset, fraction))
                  if mode == "cpu" else dict.fromkeys(chosen, steps))
        # One row file per run, per fraction: each fraction has its own held-out set, so a row
        # scored against one is not comparable with another's.
        rows = out / f"lowdata-rows-{_pct(fraction)}"
        if quick:
            shutil.rmtree(rows, ignore_errors=True)
        rows.mkdir(parents=True, exist_ok=True)
        if not (rows / f"{COPIES}.json").is_file():
            _write_json(rows / f"{COPIES}.json", _copies_row(heldout, clf, n_eval, fraction, out))
    for variant in chosen:
        on_subset, extra = VARIANTS[variant]
        name = f"{variant}-{_pct(fraction)}" if on_subset else "baseline-100%"
        for seed in seeds:
            # The steps are in the names: runs of one variant at other budgets stay apart (the
            # all-digits runs are shared by every fraction, and only re-scored).
            run = f"{name}-{budget[variant]}steps-s{seed}" + (f"-eval{eval_every}" if eval_every else "")
            row_file = rows / f"{run}.json"
            with _locked(rows / f".{run}.lock", wait=False) as mine:
                if not mine or row_file.is_file():  # another process has it, or it is done
                    continue
                cfg = _config(subset if on_subset else everything, out / "runs" / run,
                              budget[variant], seed, extra, eval_every=eval_every,
                              eval_with=(clf_path, heldout, n_eval, out))
                prefix = shorter_run(out / "runs", name, seed, cfg)
                if prefix:
                    continue_history(prefix, Path(cfg.train.out_dir))
                t0, cpu0 = time.perf_counter(), time.process_time()
                res = train(cfg, resume=str(prefix) if prefix else "auto", evaluator=make_evaluator(cfg))
                train_sec, train_cpu_sec = time.perf_counter() - t0, time.process_time() - cpu0
                sampler = open_sampler(res.last_checkpoint)
                grid = class_grid_png(sampler, out / f"lowdata_{run}.png")
                m = evaluate(sampler, heldout, [clf], n_eval, baseline=True,
                             cache_dir=out / "feature-cache", log=lambda s: None)["metrics"][clf.name]
                row = {"variant": name, "seed": seed, "fraction": fraction if on_subset else 1.0,
                       "overrides": extra, "budget": mode, "base_steps": steps,
                       "steps": res.step, "kimg": res.cur_nimg / 1000, "train_sec": train_sec,
                       "train_cpu_sec": train_cpu_sec,
                       # A run extended from a shorter one: its train seconds count this part only.
                       "resumed_from": prefix and str(prefix.relative_to(out)),
                       "grid_png": str(grid), "ada_p": res.metrics.get("augment/p"),
                       **{k: m[k] for k in SCORES},
                       "real_vs_real_fid": (m.get("real_vs_real") or {}).get("fid"),
                       "eval_every": eval_every, **_best_snapshot(read_history(res.run_dir))}
                _write_json(row_file, row)
                print(f"  {name} seed {seed}: FID {row['fid']:.3f} KID {row['kid']:.4f} "
                      f"P {row['precision']:.3f} R {row['recall']:.3f} acc {row['class_accuracy']:.3f}"
                      f" ({budget[variant]} steps, {train_cpu_sec:.0f} CPU s)", flush=True)
    # The table: this budget's rows, including those of other processes and earlier calls.
    runs = [r for r in read_rows(rows) if r["seed"] is None or
            (r["budget"], r["base_steps"], r.get("eval_every", 0)) == (mode, steps, eval_every)]
    return {"steps": steps, "equal_cpu": mode == "cpu", "budget_steps": budget, "n_eval": n_eval,
            "seeds": seeds, "runs": runs, "eval_every": eval_every,
            "summary": summarize(runs, fraction), "fraction": fraction, "heldout": str(heldout),
            "train": str(subset),
            "grids_png": str(grids_png(runs, out / f"lowdata_grids-{_pct(fraction)}.png")),
            "curves_png": eval_every and str(curves_png(runs, out / f"lowdata_curves-{_pct(fraction)}.png"))}


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


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: a reader (or a crash) sees the whole file or none


def _write_json(path: Path, row: dict) -> None:
    _write_text(path, json.dumps(row, indent=2))


def read_rows(rows: Path) -> list[dict]:
    """Every run's row under `rows`, in VARIANTS order (the train-copies reference first), then by
    steps and seed."""
    order = {name: i for i, name in enumerate([COPIES, *VARIANTS])}

    def key(r):
        base = "baseline-all" if r["variant"] == "baseline-100%" else r["variant"].rsplit("-", 1)[0]
        return order.get(base, len(order)), r.get("steps") or 0, r["seed"] if r["seed"] is not None else -1

    return sorted((json.loads(p.read_text()) for p in rows.glob("*.json")), key=key)


# Fields a longer run of one variant and seed may differ in from a shorter one it extends:
# the length itself, where it is written, and the EMA's start (steps // 5: the EMA only follows G
# and feeds nothing back, and with decay 0.99 what it averaged before the longer run's start
# weighs 0.99^(steps - start) < 1e-6 at the end). The shards are rebuilt per --out from the same
# seed (the fraction is in the run's name), so their path may differ too. ADA's speed and
# LeCam's start also scale with the steps: they may differ only where ADA or LeCam is off.
_LENGTH_FIELDS = {"train.steps", "train.out_dir", "train.ckpt_every", "ema.start_step", "data.path"}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _trajectory(cfg) -> dict:
    """cfg's fields that decide G's and D's weights at a given step, flat: not those in
    _LENGTH_FIELDS, nor the settings of ADA or LeCam when they are off."""
    import dataclasses

    flat = {k: v for k, v in _flat(dataclasses.asdict(cfg)).items() if k not in _LENGTH_FIELDS}
    if flat["augment.kind"] != "ada":
        flat = {k: v for k, v in flat.items() if not k.startswith("augment.ada_")}
    if not flat["augment.lecam_weight"]:
        flat = {k: v for k, v in flat.items() if not k.startswith("augment.lecam_")}
    return flat


def shorter_run(runs: Path, name: str, seed: int, cfg) -> Path | None:
    """The checkpoint of the longest shorter run of `name` and `seed` under `runs` that `cfg`
    continues exactly, when `cfg`'s own run has none: raising --lowdata-steps then trains only
    the extra steps (resume is bit-identical, and no schedule here depends on the run's length
    but those in _LENGTH_FIELDS). None when there is nothing to extend."""
    from bigan.checkpoint.store import list_checkpoints
    from bigan.config import load_config

    own = Path(cfg.train.out_dir)
    if list_checkpoints(own / "checkpoints"):
        return None  # its own checkpoint: "auto" resumes from it
    want = _trajectory(cfg)
    # What follows the seed in the run's name (e.g. "-eval50") is part of the runs it extends.
    suffix = own.name.partition(f"steps-s{seed}")[2]
    found = []
    for d in runs.glob(f"{name}-*steps-s{seed}{suffix}"):
        steps = d.name[len(name) + 1:-len(f"steps-s{seed}{suffix}")]
        ckpts = list_checkpoints(d / "checkpoints")
        if not steps.isdigit() or not ckpts or int(steps) >= cfg.train.steps:
            continue
        if _trajectory(load_config(ckpts[-1] / "config.yaml")) == want:
            found.append((int(steps), ckpts[-1]))
    return max(found)[1] if found else None


def continue_history(prefix: Path, run_dir: Path) -> None:
    """Begin the evaluation history of a run extended from checkpoint `prefix` with the shorter
    run's records up to that step, when it has none of its own yet: its best snapshot, FID curve
    and curves PNG then cover the whole trajectory as a fresh run's would (and a run extended
    from an extended run inherits them all)."""
    from bigan.checkpoint.store import STEP_DIR
    from bigan.eval.run_evaluator import HISTORY, read_history

    path = run_dir / "eval" / HISTORY
    if path.is_file():
        return  # a resumed extension: its history already begins with the shorter run's
    upto = int(STEP_DIR.match(prefix.name).group(1))
    earlier = [r for r in read_history(prefix.parent.parent) if r["step"] <= upto]
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic: a half history would pass the check above on the next attempt and be kept
    _write_text(path, "".join(json.dumps(r) + "\n" for r in earlier))


SCORES = ("fid", "kid", "precision", "recall", "class_accuracy")


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


def _best_snapshot(history: list[dict]) -> dict:
    """{"best": the scores of the lowest-FID evaluation and its step, "evaluations": how many}
    from a run's evaluation history; {} when it has none."""
    scored = [r for r in history if np.isfinite(r.get("metrics", {}).get("eval/fid", np.nan))]
    if not scored:
        return {}
    best = min(scored, key=lambda r: r["metrics"]["eval/fid"])
    return {"best": {"step": best["step"], "kimg": best["kimg"],
                     **{k: best["metrics"][f"eval/{k}"] for k in SCORES}},
            "evaluations": len(scored), "fid_curve": [[r["step"], r["metrics"]["eval/fid"]] for r in scored]}


def _config(shards: Path, run_dir: Path, steps: int, seed: int, extra: list[str], log_every: int = 50,
            eval_every: int = 0, eval_with: tuple = ()):
    """demo.yaml on `shards` for `steps` G steps. The schedules that the paper sets in kimg are
    scaled to the run (see the module docstring), and `eval_every` G steps become eval.every_kimg
    (`_eval_overrides(..., *eval_with)`), from the images this variant's G step takes: batch x
    D steps, so a variant with one D step per G step is scaled and scored on its own steps."""
    from bigan.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    fixed = [f"data.path={shards}", f"train.out_dir={run_dir}",
             f"train.steps={steps}", f"train.seed={seed}", "train.sample_every=1000000",
             f"train.ckpt_every={steps}", "train.keep_ckpts=1", f"train.log_every={log_every}",
             "data.num_workers=0", f"ema.start_step={steps // 5}", f"augment.lecam_start={steps * 2 // 10}"]
    own = load_config(path, [*fixed, *extra])
    step_kimg = own.train.batch_size * own.optim.d_steps / 1000
    scaled = [f"augment.ada_kimg={max(steps * step_kimg / 4, 1e-3)}",
              *_eval_overrides(eval_every * step_kimg, *eval_with)]
    return load_config(path, [*fixed, *scaled, *extra])


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

    path = out / f"quality_lowdata-{_pct(fraction)}.cost.json"
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


def grids_png(runs: list[dict], path: Path) -> Path:
    """The sample grids of each variant's lowest seed side by side, titled with its FID, recall
    and class accuracy: the picture docs/benchmarks.md shows."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from PIL import Image

    first: dict[str, dict] = {}
    for r in sorted((r for r in runs if r.get("grid_png")), key=lambda r: r["seed"]):
        first.setdefault(r["variant"], r)
    first = dict(sorted(first.items(), key=lambda kv: kv[0] == "baseline-100%"))  # the reference last
    fig = Figure(figsize=(2.4 * max(1, len(first)), 3.9), layout="constrained")
    for i, (name, r) in enumerate(first.items()):
        ax = fig.add_subplot(1, len(first), i + 1)
        ax.imshow(np.asarray(Image.open(r["grid_png"])))
        label = name.replace("+", "\n+")  # long combined names on two lines, not over the next panel
        ax.set_title(f"{label} (seed {r['seed']})\nFID {r['fid']:.2f}  R {r['recall']:.2f}  "
                     f"acc {r['class_accuracy']:.2f}", fontsize=7)
        ax.axis("off")
    fig.savefig(path, format="png", dpi=110)
    return path


def curves_png(runs: list[dict], path: Path) -> Path:
    """FID against the held-out images over training, one line per run scored during training (a
    colour per variant, a line style per seed), with the training images' own FID for reference.
    Under the CPU budget the x axis is CPU time in the baseline's G steps (a variant's step times
    its cost ratio), so every run ends at the same x and the curves compare at equal cost."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    scored = [r for r in runs if r.get("fid_curve")]
    bests: dict[str, list[str]] = {}
    for r in sorted(scored, key=lambda r: r["seed"]):
        bests.setdefault(r["variant"], []).append(f"{r['best']['fid']:.2f}")
    cpu = bool(scored) and all(r["budget"] == "cpu" for r in scored)
    colours: dict[str, str] = {}
    for r in scored:
        new = r["variant"] not in colours
        c = colours.setdefault(r["variant"], f"C{len(colours)}")
        steps, fids = zip(*r["fid_curve"])
        scale = r["base_steps"] / r["steps"] if cpu else 1.0
        ax.plot([s * scale for s in steps], fids, color=c, ls=("-", "--", ":", "-.")[r["seed"] % 4], lw=1.2,
                label=f"{r['variant']} (best: {', '.join(bests[r['variant']])})" if new else None)
    for r in runs:
        if r["variant"].startswith(COPIES):
            ax.axhline(r["fid"], color="0.5", lw=0.8, ls=":", label=f"training images themselves ({r['fid']:.2f})")
    ax.set(yscale="log", xlabel="CPU time, in the baseline's G steps" if cpu else "G step",
           ylabel="FID vs held-out (domain features)",
           title="FID during training (line style: seed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5)
    fig.savefig(path, format="png", dpi=110)
    return path


def _copies_row(heldout: Path, clf, n_eval: int, fraction: float, out: Path) -> dict:
    """The reference row of the training images themselves (see CopyingSampler)."""
    from bigan.data import synthetic
    from bigan.eval.evaluate import evaluate

    images, labels = _digits()
    train = _subset_mask(labels, fraction)
    sampler = CopyingSampler(images[train], labels[train], list(synthetic.DIGIT_CLASS_NAMES))
    m = evaluate(sampler, heldout, [clf], n_eval, cache_dir=out / "feature-cache",
                 log=lambda s: None)["metrics"][clf.name]
    return {"variant": f"{COPIES}-{_pct(fraction)}", "seed": None, "fraction": fraction,
            "images": int(train.sum()),
            **{k: m[k] for k in SCORES}}


def summarize(runs: list[dict], fraction: float = 0.1) -> dict:
    """Per variant: mean and spread over seeds, and the share of the FID gap closed; the same
    for the best snapshot (`best_fid`, `best_gap_closed`, goal `_goal_best`) where every run of
    the variant was evaluated during training."""
    out = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        rows = [r for r in runs if r["variant"] == name]
        out[name] = {k: float(np.mean([r[k] for r in rows])) for k in SCORES}
        out[name]["fid_std"] = float(np.std([r["fid"] for r in rows]))
        if all("steps" in r for r in rows):  # not the train-copies row
            out[name]["steps"] = round(float(np.mean([r["steps"] for r in rows])))
        if all("best" in r for r in rows):
            best = [r["best"]["fid"] for r in rows]
            out[name].update(best_fid=float(np.mean(best)), best_fid_std=float(np.std(best)),
                             best_step=round(float(np.mean([r["best"]["step"] for r in rows]))))
        elif name.startswith(COPIES):  # no training: its FID is its best
            out[name].update(best_fid=out[name]["fid"], best_fid_std=0.0)
        out[name]["seeds"] = len(rows)
    _gap(out, fraction, "fid", "gap_closed", "_goal")
    _gap(out, fraction, "best_fid", "best_gap_closed", "_goal_best")
    return out


def _gap(out: dict, fraction: float, fid: str, closed: str, goal: str) -> None:
    """Adds each variant's share of the `fid` gap between the subset and all-data baselines
    (as `closed`) and whether the best subset variant closes half of it (as `goal`)."""
    subset = f"-{_pct(fraction)}"
    base, full = out.get(f"baseline{subset}", {}).get(fid), out.get("baseline-100%", {}).get(fid)
    if base is None or full is None or base <= full:  # not measured, or no gap to close
        return
    for s in out.values():
        if fid in s:
            s[closed] = (base - s[fid]) / (base - full)
    best = max((n for n in out if n.endswith(subset) and closed in out[n]
                and n not in (f"baseline{subset}", f"{COPIES}{subset}")),
               key=lambda n: out[n][closed], default=None)
    out[goal] = {"best": best, "gap_closed": out[best][closed] if best else None,
                 "met": bool(best and out[best][closed] >= 0.5)}


def print_lowdata(r: dict) -> None:
    s = r["summary"]
    budget = (f"the CPU time of {r['steps']} baseline G steps per run" if r.get("equal_cpu")
              else f"{r['steps']} G steps per run")
    print(f"\nlowdata: BigGAN (demo.yaml), {budget}, seeds {r['seeds']}, "
          f"domain features vs the held-out {_pct(1 - r['fraction'])}, N={r['n_eval']}")
    print(f"{'variant':38s} {'steps':>5s} {'FID':>12s} {'KID':>8s} {'P':>6s} {'R':>6s} {'acc':>6s} "
          f"{'gap closed':>10s} {'best FID (step)':>20s} {'best gap':>8s}")
    for name, v in s.items():
        if name.startswith("_"):
            continue
        gap = f"{100 * v['gap_closed']:9.0f}%" if "gap_closed" in v else ""
        best = (f"{v['best_fid']:6.3f}±{v['best_fid_std']:5.3f} ({v.get('best_step', '-')})"
                if "best_fid" in v else "")
        best_gap = f"{100 * v['best_gap_closed']:7.0f}%" if "best_gap_closed" in v else ""
        print(f"{name:38s} {v.get('steps', ''):>5} {v['fid']:6.3f}±{v['fid_std']:5.3f} {v['kid']:8.4f} "
              f"{v['precision']:6.3f} {v['recall']:6.3f} {v['class_accuracy']:6.3f} {gap:>10s} "
              f"{best:>20s} {best_gap:>8s}")
    same = "on the same CPU budget" if r.get("equal_cpu") else "in the same G steps"
    for key, which in (("_goal", "last"), ("_goal_best", "best")):
        goal = s.get(key)
        if goal:
            print(f"goal (best {_pct(r['fraction'])} variant closes >= 50% of the FID gap {same}, "
                  f"{which} snapshot): {'met' if goal['met'] else 'NOT met'} ({goal['best']}: "
                  f"{100 * (goal['gap_closed'] or 0):.0f}%)")
