"""`bigan eval`: score a generator against real shards and draw what a person checks.

`generated_features` draws N class-balanced samples (sample i: class i mod K, seed
`seed + i`) at truncation psi and passes them through each extractor; `score` turns real and
generated features into one extractor's metrics (`bigan.eval.metrics`); `evaluate` does both
for every extractor, with the real side from the per-data-set cache, and returns the results
dict that `bigan eval` writes as JSON. Every result names its extractor and both N.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from bigan import sampling
from bigan import pictures
from bigan.eval import metrics
from bigan.eval.errors import EvalError
from bigan.eval.real_data import cached_real_features, dataset_sha256
from bigan.generation import ImageSampler
from bigan.onnx_metadata import PerClassTruncation


def balanced_classes(n: int, num_classes: int) -> np.ndarray:
    """int64 [n]: sample i asks for class i mod num_classes."""
    return np.arange(n, dtype=np.int64) % max(num_classes, 1)


def check_classes(sampler: ImageSampler, extractors: list) -> None:
    """A domain classifier's class k must be the generator's class k, or accuracy means nothing."""
    for e in extractors:
        names = getattr(e, "class_names", None)
        if names is not None and list(names) != list(sampler.class_names):
            raise EvalError(f"the classifier {e.path} was trained on classes {names[:5]}... but "
                            f"the model draws {sampler.class_names[:5]}...; train a classifier on "
                            "the model's own data set (`bigan eval train-classifier SHARDS`)")


def generated_features(sampler: ImageSampler, extractors: list, n: int, psi: float | None,
                       seed: int = 0, chunk: int = 256) -> dict[str, dict]:
    """{extractor name: {"features", "logits", "labels"}} of N generated images; generated in
    chunks so memory stays bounded whatever N."""
    from tqdm.auto import tqdm

    check_classes(sampler, extractors)

    labels = balanced_classes(n, sampler.num_classes)
    parts: dict[str, list] = {e.name: [] for e in extractors}
    with tqdm(total=n, desc=f"generate psi={psi}", unit="img", leave=False) as bar:
        for i in range(0, n, chunk):
            y = labels[i:i + chunk]
            images = pictures.to_uint8(sampler.images(y, range(seed + i, seed + i + len(y)), psi))
            for e in extractors:
                parts[e.name].append(e.extract(images, desc=e.name))
            bar.update(len(y))
    out = {}
    for e in extractors:
        feats = np.concatenate([p[0] for p in parts[e.name]])
        logits = [p[1] for p in parts[e.name] if p[1] is not None]
        out[e.name] = {"features": feats, "logits": np.concatenate(logits) if logits else None,
                       "labels": labels}
    return out


def score(real: dict, fake: dict, extractor, kid_subsets: int = 100,
          which: set[str] | None = None) -> dict:
    """One extractor's metrics of generated vs real features (see `bigan.eval.metrics`).
    which: the subset of fid, kid, precision, recall, is, class_accuracy, intra_fid to compute
    (None: all but intra_fid); KID and precision/recall cost the most at large N."""
    which = {"fid", "kid", "precision", "recall", "is", "class_accuracy"} if which is None else which
    r, f = real["features"], fake["features"]
    out = {**extractor.describe(), "n_real": int(len(r)), "n_generated": int(len(f))}
    if "fid" in which:
        out["fid"] = metrics.fid_from_features(r, f)
    if "kid" in which:
        out["kid"], out["kid_std"] = metrics.kernel_inception_distance(r, f, subsets=kid_subsets)
    if {"precision", "recall"} & which:
        out["precision"], out["recall"] = metrics.precision_recall(r, f, k=3)
        out["pr_k"] = 3
    if "intra_fid" in which:
        out["intra_fid"] = metrics.intra_class_fid(r, real["labels"], f, fake["labels"])
    if fake.get("logits") is not None:
        if "is" in which:
            out["inception_score" if extractor.comparable_to_published else "domain_inception_score"] = (
                metrics.inception_score(fake["logits"])[0])
        names = getattr(extractor, "class_names", None)
        if names is not None and "class_accuracy" in which:
            out["class_accuracy"] = metrics.class_accuracy(fake["logits"], fake["labels"])
            if real.get("logits") is not None:
                out["real_class_accuracy"] = metrics.class_accuracy(real["logits"], real["labels"])
    return out


def protocol(data: str | Path, extractor, n_real: int, n_generated: int, psi: float | None,
             seed: int = 0) -> dict:
    """What an FID (KID, PR) depends on besides the model, to be written beside every one: the
    reference set and its N, the generated N, the extractor and its weights' sha256, how images
    are resized on the way in, the truncation and the first sample seed."""
    d = extractor.describe()
    return {"reference": {"path": str(data), "dataset_sha256": dataset_sha256(data), "n": int(n_real),
                          "images": "the first N usable samples in shard order (bigan.eval.real_data)"},
            "generated": {"n": int(n_generated), "classes": "sample i: class i mod K, seed seed + i",
                          "seed": seed, "psi": psi},
            "extractor": d["extractor"], "weights_sha256": d["weights_sha256"],
            "resize": extractor.resize}


def real_baseline(data: str | Path, extractor, n: int, real: dict, cache_dir=None,
                  log: Callable[[str], None] = print) -> dict | None:
    """FID/KID/PR of real images n..2n-1 against real images 0..n-1: the floor a perfect
    generator reaches at this N (FID is biased upwards at small N). None if the set has < 2n."""
    other = cached_real_features(data, extractor, n, cache_dir, skip=n, log=log)
    if other["n"] < n:
        return None
    s = score(real, other, extractor)
    return {k: s[k] for k in ("fid", "kid", "kid_std", "precision", "recall", "n_real", "n_generated")}


def evaluate(sampler: ImageSampler, data: str | Path, extractors: list, n: int,
             psi: float | None = None, seed: int = 0, baseline: bool = False, cache_dir=None,
             log: Callable[[str], None] = print) -> dict:
    """Metrics of `sampler` against the shards `data` under each extractor (results dict)."""
    t0 = time.perf_counter()
    fake = generated_features(sampler, extractors, n, psi, seed)
    results = {}
    for e in extractors:
        real = cached_real_features(data, e, n, cache_dir, log=log)
        if real["n"] < n:
            log(f"note: {data} holds {real['n']} usable images, fewer than --n {n}: "
                f"real N is {real['n']}")
        results[e.name] = score(real, fake[e.name], e)
        results[e.name]["protocol"] = protocol(data, e, real["n"], n, psi, seed)
        if baseline:
            results[e.name]["real_vs_real"] = real_baseline(data, e, real["n"], real, cache_dir, log)
    return {"model": sampler.describe(), "data": {"path": str(data), "dataset_sha256": dataset_sha256(data)},
            "n": n, "truncation": psi, "seed": seed, "metrics": results,
            "seconds": time.perf_counter() - t0}


def class_grid_png(sampler: ImageSampler, path: str | Path, per_class: int = 8, seed: int = 0,
                   psi: float | None = None, max_classes: int = 10) -> Path:
    """`sampler.class_grid` of the first `max_classes` classes as a PNG."""
    classes = list(range(min(max_classes, sampler.num_classes)))
    return pictures.save_png(sampler.class_grid(classes, per_class, seed, psi), path, min_side=256)


def interpolation_png(sampler: ImageSampler, path: str | Path, seeds: tuple[int, int] = (0, 1),
                      steps: int = 9, classes: int = 3, psi: float | None = None) -> Path:
    """Per class two rows from seed a to seed b: linear (lerp) then spherical (slerp) paths, the
    ends drawn by the model's z sampling at the class's psi (psi may be per class)."""
    rows, labels, psis = [], [], []
    for c in range(min(classes, sampler.num_classes)):
        psi_c = psi[c] if isinstance(psi, PerClassTruncation) else psi
        z0, z1 = sampler.latents(seeds, psi_c)
        for method in ("linear", "spherical"):
            rows.append(sampling.interpolate(z0, z1, steps, method))
            labels += [c] * steps
            psis += [psi_c] * steps
    images = pictures.to_uint8(sampler.images_from_latents(
        np.concatenate(rows), labels, None if psi is None else psis))
    return pictures.save_png(pictures.image_grid(images, len(rows), steps), path, min_side=256)


def print_table(results: dict) -> None:
    """A short human table of a results dict."""
    print(f"model {results['model']['path']}  N={results['n']}  truncation={results['truncation']}")
    for name, m in results["metrics"].items():
        tag = "" if m["comparable_to_published_fid"] else "  (domain features: not comparable with published FID)"
        line = (f"  {name:18s} FID {m['fid']:9.3f}  KID {m['kid']:.5f}±{m['kid_std']:.5f}  "
                f"P {m['precision']:.3f}  R {m['recall']:.3f}")
        if "class_accuracy" in m:
            line += f"  class acc {m['class_accuracy']:.3f}"
        print(line + f"  [N real {m['n_real']}, generated {m['n_generated']}]" + tag)
        base = m.get("real_vs_real")
        if base:
            print(f"  {'  real vs real':18s} FID {base['fid']:9.3f}  KID {base['kid']:.5f}  "
                  f"P {base['precision']:.3f}  R {base['recall']:.3f}  [N {base['n_real']} vs {base['n_generated']}]")
