"""`bigan truncation-sweep`: BigGAN's quality/variety trade-off (Brock et al. 2019, Sec. 3.1,
Fig. 17) measured over a range of truncation thresholds psi.

For each psi the same N class-balanced seeds are scored (`bigan.eval.evaluate`), so only the
truncation changes between rows. Outputs: a CSV and JSON of FID, KID, precision, recall and
class accuracy per psi, a PNG plot of them against psi, a grid strip (rows: a few classes,
columns: psi, one seed) and a recommended psi by a stated rule (`recommend`). `write_truncation`
stores it as `recommended_truncation` in an exported ONNX file's metadata, the server's default.

With `per_class` (`--per-class`), each class is scored on its own at every psi (its generated
images against its real ones: precision, recall and FID) and given its own psi by the same rule
(`recommend_per_class`); the vector goes into the metadata as `recommended_truncation_per_class`,
from which every path takes a sample's default by its class, and `plot_per_class` draws it (bars)
with the precision/recall curves of the five most and least truncation-hungry classes;
`per_class_samples_png` shows those classes' images at their own psi beside the overall psi.
BigGAN's Figure 4 shows why: classes differ in how much truncation they take before they collapse.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from bigan import pictures
from bigan.eval.errors import EvalError
from bigan.eval import metrics
from bigan.eval.evaluate import generated_features, protocol, score
from bigan.eval.real_data import cached_real_features
from bigan.generation import ImageSampler
from bigan.onnx_metadata import (PER_CLASS_FIELD, TRUNCATION_FIELD, PerClassTruncation,
                                 TruncationError, check_truncation)

COLUMNS = ("psi", "fid", "kid", "kid_std", "precision", "recall", "class_accuracy")
PR_K = 3  # precision/recall neighbours, as the global rows: a class needs > PR_K images a side
HUNGRY = 5  # the per-class picture's curves: this many most and least truncation-hungry classes


def parse_psi(spec: str) -> list[float]:
    """"0.1:2.0:0.1" -> [0.1, 0.2, ..., 2.0] (end included), or "0.5,1,1.5" -> that list."""
    try:
        if ":" in spec:
            start, stop, step = (float(p) for p in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise EvalError(f"--psi {spec!r} is invalid: use START:STOP:STEP (e.g. 0.1:2.0:0.1) "
                        "or a comma list (e.g. 0.5,1,1.5)") from None
    if not values:
        raise EvalError(f"--psi {spec!r} names no psi")
    try:
        return [check_truncation(v, "--psi") for v in values]
    except TruncationError as e:
        raise EvalError(f"--psi {spec!r}: {e}") from None


def recommend(rows: list[dict], min_recall: float | None) -> tuple[float, str]:
    """(psi, rule). With min_recall: the smallest psi whose recall >= min_recall (the most
    fidelity that keeps that much variety); none qualifying falls back to the highest recall.
    Without: the psi of the lowest FID."""
    if min_recall is not None:
        ok = [r for r in rows if r["recall"] >= min_recall]
        if ok:
            best = min(ok, key=lambda r: r["psi"])
            return best["psi"], f"smallest psi with recall >= {min_recall}"
        best = max(rows, key=lambda r: (r["recall"], -r["psi"]))
        return best["psi"], f"no psi reaches recall {min_recall}: the psi of the highest recall"
    best = min(rows, key=lambda r: r["fid"])
    return best["psi"], "psi of the lowest FID"


def recommend_per_class(rows: list[dict], min_recall: float | None) -> tuple[list[float], str]:
    """(one psi per class id, rule): `recommend` applied to each class's own rows (the
    "per_class" entries `run_sweep(per_class=True)` adds)."""
    count = len(rows[0]["per_class"])
    picks = [recommend([{"psi": r["psi"], **r["per_class"][k]} for r in rows], min_recall)
             for k in range(count)]
    rule = "per class: " + (f"smallest psi with recall >= {min_recall}"
                            if min_recall is not None else "psi of the lowest class FID")
    if any(why.startswith("no psi") for _, why in picks):
        rule += " (classes reaching no such recall: the psi of their highest recall)"
    return [psi for psi, _ in picks], rule


def check_per_class(real: dict, n: int, num_classes: int) -> None:
    """EvalError unless every class has more than PR_K real images and generated samples."""
    if n // num_classes <= PR_K:
        raise EvalError(f"--per-class with {num_classes} classes needs --n >= "
                        f"{(PR_K + 1) * num_classes} (more than {PR_K} samples of each class)")
    counts = np.bincount(real["labels"], minlength=num_classes)[:num_classes]
    short = [k for k in range(num_classes) if counts[k] <= PR_K]
    if short:
        raise EvalError(f"--per-class: the first {real['n']} real images hold {counts[short[0]]} "
                        f"of class {short[0]} ({len(short)} classes have <= {PR_K}); raise --n "
                        "or score a set with more images of every class")


def class_scores(real: dict, fake: dict, num_classes: int) -> list[dict]:
    """Per class id: precision, recall (k = PR_K) and FID of its generated features against its
    real ones (FID at about N / K a side is biased upwards: compare classes, not to the paper)."""
    out = []
    for k in range(num_classes):
        r = real["features"][real["labels"] == k]
        f = fake["features"][fake["labels"] == k]
        precision, recall = metrics.precision_recall(r, f, k=PR_K)
        out.append({"precision": precision, "recall": recall,
                    "fid": metrics.fid_from_features(r, f)})
    return out


def run_sweep(sampler: ImageSampler, data: str | Path, psis: list[float], extractor, n: int,
              seed: int = 0, cache_dir=None, log: Callable[[str], None] = print,
              per_class: bool = False) -> list[dict]:
    """One row per psi: the metrics of `extractor` (FID etc. in its feature space); with
    per_class, each row's "per_class" holds `class_scores` of the same images."""
    real = cached_real_features(data, extractor, n, cache_dir, log=log)
    if per_class:
        check_per_class(real, n, sampler.num_classes)
    rows = []
    for psi in psis:
        fake = generated_features(sampler, [extractor], n, psi, seed)[extractor.name]
        s = score(real, fake, extractor, kid_subsets=50)
        row = {"psi": psi, **{k: s.get(k, float("nan")) for k in COLUMNS[1:]},
               "protocol": protocol(data, extractor, real["n"], n, psi, seed)}
        if per_class:
            row["per_class"] = class_scores(real, fake, sampler.num_classes)
        rows.append(row)
        log(f"psi {psi:5.2f}  FID {row['fid']:9.3f}  P {row['precision']:.3f}  "
            f"R {row['recall']:.3f}  class acc {row['class_accuracy']:.3f}")
    return rows


def write_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows([{k: r.get(k) for k in COLUMNS} for r in rows])
    return path


def plot_curves(rows: list[dict], path: str | Path, title: str, recommended: float | None = None) -> Path:
    """PNG: FID, precision/recall, class accuracy and KID against psi (matplotlib, Agg)."""
    plt = _pyplot()

    psi = [r["psi"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), constrained_layout=True)
    panels = [("FID", ["fid"]), ("precision / recall", ["precision", "recall"]),
              ("class accuracy", ["class_accuracy"]), ("KID", ["kid"])]
    for ax, (name, keys) in zip(axes, panels):
        for k in keys:
            ax.plot(psi, [r[k] for r in rows], marker="o", ms=3, label=k)
        if recommended is not None:
            ax.axvline(recommended, color="grey", ls="--", lw=1, label="recommended ψ")
        ax.set_xlabel("truncation ψ")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if len(keys) > 1 or recommended is not None:
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=9)
    return _save(fig, plt, path)


def psi_strip_png(sampler: ImageSampler, psis: list[float], path: str | Path, classes: int = 4,
                  seed: int = 0, max_columns: int = 20) -> Path:
    """Rows: the first `classes` classes; columns: psi values (up to `max_columns`, evenly
    picked); every image uses the same seed, so only the truncation changes along a row."""
    picked = psis if len(psis) <= max_columns else [psis[int(i)] for i in
                                                     np.linspace(0, len(psis) - 1, max_columns)]
    rows = list(range(min(classes, sampler.num_classes)))
    images = [pictures.to_uint8(sampler.images([c], [seed], psi)) for c in rows for psi in picked]
    return pictures.save_png(pictures.image_grid(np.concatenate(images), len(rows), len(picked)), path,
                          min_side=256)


def write_truncation(onnx_path: str | Path, psi: float,
                     per_class: list[float] | None = None) -> None:
    """Set `recommended_truncation` and `recommended_truncation_per_class` (None: remove a vector
    an earlier per-class sweep wrote, which would outvote this psi) in an exported ONNX file's
    metadata, through the one writer of that contract (`bigan.export.metadata`: validated, atomic,
    the checked graph kept byte for byte)."""
    from bigan.export.metadata import rewrite_metadata

    vector = None if per_class is None else [float(p) for p in per_class]
    rewrite_metadata(onnx_path, **{TRUNCATION_FIELD: float(psi), PER_CLASS_FIELD: vector})


def plot_per_class(rows: list[dict], per_class: list[float], path: str | Path, title: str,
                   class_names: list[str], overall: float | None = None) -> Path:
    """PNG: each class's psi (bars, the overall psi dashed), and precision (solid) and recall
    (dashed) against psi of the HUNGRY most truncation-hungry classes (smallest psi) and of the
    HUNGRY least (largest psi)."""
    plt = _pyplot()
    order = sorted(range(len(per_class)), key=lambda k: (per_class[k], k))
    groups = [("most truncation-hungry", order[:HUNGRY]),
              ("least truncation-hungry", order[::-1][:HUNGRY])]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4), constrained_layout=True)
    axes[0].bar(range(len(per_class)), per_class, color="tab:blue")
    if overall is not None:
        axes[0].axhline(overall, color="grey", ls="--", lw=1, label=f"overall ψ {overall:g}")
        axes[0].legend(fontsize=7, loc="upper right")
    axes[0].set(xlabel="class id", ylabel="recommended ψ", title="ψ per class")
    psi = [r["psi"] for r in rows]
    for ax, (name, classes) in zip(axes[1:], groups):
        for i, k in enumerate(classes):
            colour = f"C{i}"
            label = f"{class_names[k][:18]} (ψ {per_class[k]:g})"
            ax.plot(psi, [r["per_class"][k]["precision"] for r in rows], color=colour,
                    marker="o", ms=3, label=label)
            ax.plot(psi, [r["per_class"][k]["recall"] for r in rows], color=colour, ls="--",
                    marker="o", ms=3)
        ax.set(xlabel="truncation ψ", ylabel="precision (solid) / recall (dashed)",
               title=f"{len(classes)} {name} classes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    return _save(fig, plt, path)


def hungry_classes(per_class: list[float]) -> list[int]:
    """The HUNGRY most truncation-hungry classes (smallest psi first) then the HUNGRY least
    (largest psi last); every class, by psi, where there are no more than 2 * HUNGRY."""
    order = sorted(range(len(per_class)), key=lambda k: (per_class[k], k))
    return order if len(order) <= 2 * HUNGRY else order[:HUNGRY] + order[-HUNGRY:]


def per_class_samples(sampler: ImageSampler, per_class: list[float], classes: list[int],
                      seeds: list[int], overall: float | None) -> np.ndarray:
    """uint8 HWC picture, a row per class of `classes`: `seeds` drawn at the class's own psi (the
    images a request without psi gets once the vector is written), a blank cell, then the same
    seeds at `overall` (the one psi every class would otherwise take)."""
    own = pictures.to_uint8(sampler.images([c for c in classes for _ in seeds],
                                           seeds * len(classes), PerClassTruncation(per_class)))
    one = pictures.to_uint8(sampler.images([c for c in classes for _ in seeds],
                                           seeds * len(classes), overall))
    blank = np.full((1, *own.shape[1:]), 32, np.uint8)  # the grid's own background
    cells = [own.reshape(len(classes), len(seeds), *own.shape[1:]),
             np.repeat(blank[None], len(classes), axis=0),
             one.reshape(len(classes), len(seeds), *own.shape[1:])]
    images = np.concatenate(cells, axis=1).reshape(-1, *own.shape[1:])
    return pictures.image_grid(images, len(classes), 2 * len(seeds) + 1)


def per_class_samples_png(sampler: ImageSampler, per_class: list[float], path: str | Path,
                          overall: float | None, seed: int = 0, columns: int = 6) -> Path:
    """PNG of `per_class_samples` for `hungry_classes` and `columns` seeds from `seed`, each row
    labelled with its class's name and psi, the most truncation-hungry at the top."""
    classes, seeds = hungry_classes(per_class), list(range(seed, seed + columns))
    grid = per_class_samples(sampler, per_class, classes, seeds, overall)
    plt = _pyplot()
    rows, height = len(classes), grid.shape[0] / len(classes)
    fig, ax = plt.subplots(figsize=(1.8 + grid.shape[1] / 64, 0.5 + grid.shape[0] / 64),
                           constrained_layout=True)
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray",
              interpolation="nearest")
    ax.set_yticks([height * (r + 0.5) for r in range(rows)],
                  [f"{sampler.class_names[k][:18]}  ψ {per_class[k]:g}" for k in classes],
                  fontsize=8)
    half = grid.shape[1] / 2
    shown = "none" if overall is None else f"{overall:g}"
    ax.set_xticks([half / 2, half * 1.5], ["its own ψ", f"overall ψ {shown}"], fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return _save(fig, plt, path)


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise EvalError(f"the sweep plot needs matplotlib ({e}): pip install 'bigan[eval]' "
                        "-c constraints.txt") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_sweep(rows: list[dict], out: str | Path, model: dict, extractor, n: int,
               min_recall: float | None, class_names: list[str] | None = None) -> dict:
    """CSV + JSON + curves PNG under `out`; returns the JSON dict (with the recommendation). Rows
    with "per_class" scores add the per-class psi vector, its rule and the per-class PNG."""
    out = Path(out)
    psi, rule = recommend(rows, min_recall)
    kind = "Inception" if extractor.comparable_to_published else "domain-classifier (not comparable with published FID)"
    title = f"{model['path']}: {kind} features, N={n}"
    curves = plot_curves(rows, out / "truncation_curves.png", title, psi)
    result = {"model": model, "n": n, "extractor": extractor.describe(), "rows": rows,
              "recommended_truncation": psi, "rule": rule,
              "files": {"csv": str(write_csv(rows, out / "truncation_sweep.csv")),
                        "curves_png": str(curves)}}
    if rows and "per_class" in rows[0]:
        vector, class_rule = recommend_per_class(rows, min_recall)
        names = class_names or [str(k) for k in range(len(vector))]
        result.update({"recommended_truncation_per_class": vector, "per_class_rule": class_rule})
        result["files"]["per_class_png"] = str(plot_per_class(
            rows, vector, out / "truncation_per_class.png", title, names, psi))
    (out / "truncation_sweep.json").write_text(json.dumps(result, indent=2))
    return result
