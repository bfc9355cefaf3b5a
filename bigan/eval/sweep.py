"""`bigan truncation-sweep`: BigGAN's quality/variety trade-off (Brock et al. 2019, Sec. 3.1,
Fig. 17) measured over a range of truncation thresholds psi.

For each psi the same N class-balanced seeds are scored (`bigan.eval.evaluate`), so only the
truncation changes between rows. Outputs: a CSV and JSON of FID, KID, precision, recall and
class accuracy per psi, a PNG plot of them against psi, a grid strip (rows: a few classes,
columns: psi, one seed) and a recommended psi by a stated rule (`recommend`). `write_truncation`
stores it as `recommended_truncation` in an exported ONNX file's metadata, the server's default.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np

from bigan import pictures
from bigan.eval.errors import EvalError
from bigan.eval.evaluate import generated_features, protocol, score
from bigan.eval.real_data import cached_real_features
from bigan.generation import ImageSampler

COLUMNS = ("psi", "fid", "kid", "kid_std", "precision", "recall", "class_accuracy")


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
    if not values or any(not v > 0 for v in values):
        raise EvalError(f"--psi {spec!r}: every psi must be > 0")
    return values


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


def run_sweep(sampler: ImageSampler, data: str | Path, psis: list[float], extractor, n: int,
              seed: int = 0, cache_dir=None, log: Callable[[str], None] = print) -> list[dict]:
    """One row per psi: the metrics of `extractor` (FID etc. in its feature space)."""
    real = cached_real_features(data, extractor, n, cache_dir, log=log)
    rows = []
    for psi in psis:
        fake = generated_features(sampler, [extractor], n, psi, seed)[extractor.name]
        s = score(real, fake, extractor, kid_subsets=50)
        row = {"psi": psi, **{k: s.get(k, float("nan")) for k in COLUMNS[1:]},
               "protocol": protocol(data, extractor, real["n"], n, psi, seed)}
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
    try:
        import matplotlib
    except ImportError as e:
        raise EvalError(f"the sweep plot needs matplotlib ({e}): pip install 'bigan[eval]' "
                        "-c constraints.txt") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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


def write_truncation(onnx_path: str | Path, psi: float) -> None:
    """Set `recommended_truncation` in an exported ONNX file's metadata (atomic replace)."""
    import onnx

    from bigan.onnx_metadata import ModelMetadata

    path = Path(onnx_path)
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMetadata.from_props(props)
    meta.recommended_truncation = float(psi)
    new = meta.to_props()
    for p in model.metadata_props:
        if p.key in new:
            p.value = new[p.key]
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def save_sweep(rows: list[dict], out: str | Path, model: dict, extractor, n: int,
               min_recall: float | None) -> dict:
    """CSV + JSON + curves PNG under `out`; returns the JSON dict (with the recommendation)."""
    out = Path(out)
    psi, rule = recommend(rows, min_recall)
    kind = "Inception" if extractor.comparable_to_published else "domain-classifier (not comparable with published FID)"
    curves = plot_curves(rows, out / "truncation_curves.png",
                         f"{model['path']}: {kind} features, N={n}", psi)
    result = {"model": model, "n": n, "extractor": extractor.describe(), "rows": rows,
              "recommended_truncation": psi, "rule": rule,
              "files": {"csv": str(write_csv(rows, out / "truncation_sweep.csv")),
                        "curves_png": str(curves)}}
    (out / "truncation_sweep.json").write_text(json.dumps(result, indent=2))
    return result
