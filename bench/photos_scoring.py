"""Scoring of bench/quality_photos.py's runs: `score_all(out, dataset)`.

Every kept checkpoint of every run is scored in the domain classifier's feature space (FD,
KID, precision, recall, class accuracy at `N_DOMAIN`) and placed at the CPU seconds it had cost
(`cpu_sec.json`), which gives the FID-over-CPU curves. The last checkpoint of each run is also
scored with the FID Inception network (FID, KID with the real-vs-real figure at the same N), drawn
as a class grid and searched for copies (nearest training images, `bigan.eval.nearest`).
Results are cached per checkpoint in the run's `scores.json`, so a re-run scores only what is new.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np

from bigan.checkpoint.durable import write_atomically

N_DOMAIN = 2000  # generated and real images per domain-feature score (default)
N_INCEPTION = 2000  # ... per Inception score (the minimum)
CLASSIFIER = {"cifar10": dict(epochs=4, width=16, max_images=20000, flip=True),
              "imagenette": dict(epochs=15, width=16, max_images=None, flip=True)}


def _write_json(path: Path, data) -> None:
    write_atomically(path, json.dumps(data, indent=1).encode())


def classifier_for(dataset: str, shards: Path, test: Path | None, out: Path) -> tuple[Path, dict]:
    """The domain classifier (trained once; report with its accuracy on the test split)."""
    from bigan.eval.classifier import train_classifier
    from bigan.eval.features import ClassifierExtractor
    from bigan.eval.metrics import class_accuracy
    from bigan.eval.real_data import read_shard_images

    path = out / f"{dataset}-classifier.safetensors"
    report_file = path.with_suffix(".json")
    if path.is_file() and report_file.is_file():
        return path, json.loads(report_file.read_text())
    report = train_classifier(shards, path, log=lambda s: None, **CLASSIFIER[dataset])
    if test is not None:
        images, labels, _ = read_shard_images(test, 10**6, read_resolution(shards))
        report["test_accuracy"] = class_accuracy(ClassifierExtractor(path).extract(images)[1], labels)
        report["test_images"] = int(len(images))
    _write_json(report_file, report)
    return path, report


def read_resolution(shards: Path) -> int:
    return int(json.loads((shards / "dataset.json").read_text())["resolution"])


def score_run(run: Path, reference: Path, train_shards: Path, clf_path: Path, cache: Path,
              n_domain: int) -> dict:
    """Domain scores of every kept checkpoint of one run, its last class grid and nearest-neighbour
    panel (cached in run/scores.json)."""
    from bigan.checkpoint.store import list_checkpoints
    from bigan.eval.evaluate import class_grid_png, evaluate
    from bigan.eval.features import ClassifierExtractor
    from bigan.generation import open_sampler

    clf = ClassifierExtractor(clf_path)
    cpu = json.loads((run / "cpu_sec.json").read_text())
    scores_file = run / "scores.json"
    scores = json.loads(scores_file.read_text()) if scores_file.is_file() else {"domain": {}}
    scores.setdefault("inception", {})
    ckpts = [c for c in list_checkpoints(run / "checkpoints") if str(_step(c)) in cpu["at_step"]]
    for ckpt in ckpts:
        step = str(_step(ckpt))
        if scores["domain"].get(step, {}).get("n") == n_domain:
            continue
        m = evaluate(open_sampler(ckpt), reference, [clf], n_domain, baseline=True, cache_dir=cache,
                     log=lambda s: None)["metrics"][clf.name]
        scores["domain"][step] = {"step": int(step), "cpu_sec": cpu["at_step"][step], "n": n_domain,
                                  **{k: m[k] for k in ("fid", "kid", "precision", "recall", "class_accuracy")},
                                  "real_vs_real": m["real_vs_real"]}
        _write_json(scores_file, scores)
        print(f"  {run.name} step {step}: domain FD {m['fid']:.3f}  acc {m['class_accuracy']:.3f}", flush=True)
    if scores.get("last_step") != _step(ckpts[-1]) or not Path(scores.get("grid_png", "")).is_file():
        sampler = open_sampler(ckpts[-1])
        scores["last_step"] = _step(ckpts[-1])
        scores["grid_png"] = str(class_grid_png(sampler, run / "grid.png", per_class=10))
        scores["nearest"] = nearest_for(sampler, train_shards, clf, run / "nearest.png")
        _write_json(scores_file, scores)
    return scores


def _step(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


def inception_at(run: Path, step: int, reference: Path, cache: Path, n: int) -> dict | None:
    """Inception FID/KID/PR of one checkpoint with the real-vs-real figure (cached in scores.json)."""
    from bigan.eval.evaluate import evaluate
    from bigan.eval.features import InceptionExtractor, default_inception_weights
    from bigan.generation import open_sampler

    scores_file = run / "scores.json"
    scores = json.loads(scores_file.read_text())
    done = scores["inception"].get(str(step))
    weights = default_inception_weights()
    if not n or weights is None or (done and done["n"] == n):
        return done
    t0 = time.perf_counter()
    inc = InceptionExtractor(weights)
    ckpt = run / "checkpoints" / f"step-{step:08d}"
    m = evaluate(open_sampler(ckpt), reference, [inc], n, baseline=True, cache_dir=cache,
                 log=lambda s: None)["metrics"][inc.name]
    scores["inception"][str(step)] = {"step": step, "n": n, "seconds": time.perf_counter() - t0,
                                      **{k: m[k] for k in ("fid", "kid", "kid_std", "precision", "recall")},
                                      "real_vs_real": m["real_vs_real"]}
    _write_json(scores_file, scores)
    print(f"  {run.name} step {step}: Inception FID {m['fid']:.2f}", flush=True)
    return scores["inception"][str(step)]


def nearest_for(sampler, train_shards: Path, clf, png: Path, n: int = 10) -> dict:
    """A generated image per class beside its 5 nearest training images (classifier features)."""
    from bigan import pictures
    from bigan.eval.evaluate import balanced_classes
    from bigan.eval.nearest import nearest_panel

    labels = balanced_classes(n, sampler.num_classes)
    generated = pictures.to_uint8(sampler.images(labels, range(n), None))
    train, train_features = training_images(train_shards, clf.path, sampler.resolution)
    report = nearest_panel(generated, clf.extract(generated)[0], train, train_features, png, k=5)
    return report.to_dict()


@functools.lru_cache(maxsize=2)
def training_images(train_shards: Path, clf_path: Path, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to 50,000 training images and their classifier features, read once for every run."""
    from bigan.eval.features import ClassifierExtractor
    from bigan.eval.real_data import read_shard_images

    train, _, _ = read_shard_images(train_shards, 50000, resolution)
    return train, ClassifierExtractor(clf_path).extract(train)[0]


def curves_png(rows: list[dict], path: Path, dataset: str) -> Path:
    """Domain FD, recall and class accuracy over CPU hours, a colour per variant, a line style
    per seed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (("fid", "domain FD", "FD in the domain classifier's features"),
              ("recall", "recall (k = 3)", "variety: recall in the same features"),
              ("class_accuracy", "class accuracy", "generated images of the asked class"))
    colours: dict[str, str] = {}
    for r in rows:
        new = r["variant"] not in colours
        c = colours.setdefault(r["variant"], f"C{len(colours)}")
        pts = sorted(r["curve"], key=lambda p: p["cpu_sec"])
        hours = [p["cpu_sec"] / 3600 for p in pts]
        for ax, (key, _, _) in zip(axes, panels):
            ax.plot(hours, [p[key] for p in pts], color=c, ls=("-", "--", ":", "-.")[r["seed"] % 4],
                    marker=".", label=r["variant"] if new else None)
    if rows:
        floor = rows[0]["curve"][-1]["real_vs_real"]
        axes[0].axhline(floor["fid"], color="0.5", ls=":", lw=0.8, label=f"real vs real ({floor['fid']:.2f})")
        axes[1].axhline(floor["recall"], color="0.5", ls=":", lw=0.8, label=f"real vs real ({floor['recall']:.2f})")
    n = rows[0]["curve"][-1]["n"] if rows else 0
    for ax, (key, ylabel, title) in zip(axes, panels):
        ax.set(xlabel="process CPU hours", ylabel=f"{ylabel} (N={n})", title=f"{dataset}: {title}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.savefig(path, format="png", dpi=100)
    return path


def grids_png(rows: list[dict], path: Path, dataset: str) -> Path:
    """Each run's last class grid (a row per class, 10 seeds) side by side, titled with its
    variant, CPU hours and domain metrics: the picture the README shows."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(4.2 * max(1, len(rows)), 4.9), layout="constrained")
    for i, r in enumerate(rows):
        ax = fig.add_subplot(1, len(rows), i + 1)
        ax.imshow(np.asarray(Image.open(r["grid_png"])))
        last = r["last"]
        ax.set_title(f"{dataset}, {r['variant']} (seed {r['seed']}), {r['cpu_sec'] / 3600:.2f} CPU h\n"
                     f"domain FD {last['fid']:.2f}  recall {last['recall']:.2f}  "
                     f"class acc. {last['class_accuracy']:.2f}", fontsize=8)
        ax.axis("off")
    fig.savefig(path, format="png", dpi=110)
    return path


def score_all(out: Path, dataset: str, n_domain: int = N_DOMAIN, n_inception: int = N_INCEPTION) -> dict:
    from bench.quality_photos import shards_for

    shards, test = shards_for(dataset, out)
    reference = test if test is not None else shards  # Imagenette: FID against itself
    clf_path, clf_report = classifier_for(dataset, shards, test, out)
    rows, cache = [], out / "feature-cache"
    for run in sorted((out / "runs").glob(f"{dataset}-*-seed*")):
        if not (run / "cpu_sec.json").is_file():
            continue
        variant, seed = run.name[len(dataset) + 1:].rsplit("-seed", 1)
        s = score_run(run, reference, shards, clf_path, cache, n_domain)
        curve = [s["domain"][k] for k in sorted(s["domain"], key=int)]
        rows.append({"variant": variant, "seed": int(seed), "run": str(run), "cpu_sec": curve[-1]["cpu_sec"],
                     "steps": s["last_step"], "last": curve[-1], "best_fid": min(p["fid"] for p in curve),
                     "nearest": s["nearest"], "grid_png": s["grid_png"], "curve": curve})
    # Equal CPU: every run also at the last checkpoint that all of them reached in CPU time.
    common = min((r["cpu_sec"] for r in rows), default=0.0)
    for r in rows:
        # None while a run's first checkpoint is past another run's last (scoring runs in progress).
        r["at_common"] = ([p for p in r["curve"] if p["cpu_sec"] <= common * 1.02] or [None])[-1]
        for key, point in (("inception", r["last"]), ("inception_at_common", r["at_common"])):
            r[key] = point and inception_at(Path(r["run"]), point["step"], reference, cache, n_inception)
    result = {"dataset": dataset, "reference": str(reference), "classifier": clf_report, "rows": rows,
              "common_cpu_sec": common,
              "curves_png": str(curves_png(rows, out / f"photos-{dataset}-curves.png", dataset)),
              "grids_png": str(grids_png(rows, out / f"photos-{dataset}-grids.png", dataset))}
    _write_json(out / f"photos-{dataset}.json", result)
    print_table(result)
    return result


def print_table(result: dict) -> None:
    """Each run at its last checkpoint, then at the CPU time every run reached (equal budget)."""
    c = result["classifier"]
    print(f"\n{result['dataset']}: domain classifier {c.get('test_accuracy', c['val_accuracy']):.3f} on real "
          f"{'test' if 'test_accuracy' in c else 'held-out'} images; reference {result['reference']}")
    print(f"{'variant':12s} {'seed':>4s} {'at':>6s} {'CPU h':>6s} {'steps':>6s} {'dom FD':>7s} {'(r-v-r)':>7s} "
          f"{'P':>5s} {'R':>5s} {'acc':>5s} {'Inc FID':>8s} {'(r-v-r)':>7s} {'KID':>7s} {'copies':>6s}")
    nan = float("nan")
    for at, point_key, inc_key in (("last", "last", "inception"), ("equal", "at_common", "inception_at_common")):
        for r in (r for r in result["rows"] if r[point_key] is not None):
            p, inc = r[point_key], r[inc_key] or {}
            print(f"{r['variant']:12s} {r['seed']:4d} {at:>6s} {p['cpu_sec'] / 3600:6.2f} {p['step']:6d} "
                  f"{p['fid']:7.3f} {p['real_vs_real']['fid']:7.3f} {p['precision']:5.3f} {p['recall']:5.3f} "
                  f"{p['class_accuracy']:5.3f} {inc.get('fid', nan):8.2f} "
                  f"{(inc.get('real_vs_real') or {}).get('fid', nan):7.2f} {inc.get('kid', nan):7.4f} "
                  f"{r['nearest']['near_copies'] if at == 'last' else '':>6}")
    print(f"curves {result['curves_png']}\ngrids {result['grids_png']}")
