"""Nearest training images of generated ones: does a model trained on little data copy?

`nearest_neighbours` finds, for each generated image, the k training images closest to it in a
feature space (the domain classifier's, `bigan eval train-classifier`: it knows the data set's
classes, not ImageNet's, and shares nothing with a projected D's pretrained network). A panel
PNG shows each generated image followed by its k neighbours, so a person sees at a glance
whether the model draws new images or returns training ones. `copy_ratio` puts a number on it:
a generated image's nearest distance over the typical distance between two training images'
nearest neighbours (< ~0.1 is a near-duplicate; an exact copy is 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigan import pictures


def pairwise_sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [len(a), len(b)]: ||a_i - b_j||^2, computed as |a|^2 + |b|^2 - 2 a.b (clipped at 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def nearest_neighbours(query: np.ndarray, reference: np.ndarray, k: int,
                       chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [n, k] indices into `reference`, float64 [n, k] Euclidean distances), nearest
    first, for feature rows `query` [n, d] against `reference` [m, d]; chunked over `query` so
    memory stays n_chunk x m."""
    k = min(k, len(reference))
    idx, dist = [], []
    for i in range(0, len(query), chunk):
        d = pairwise_sq_distances(query[i:i + chunk], reference)
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d, part, 1).argsort(1, kind="stable")
        part = np.take_along_axis(part, order, 1)
        idx.append(part)
        dist.append(np.sqrt(np.take_along_axis(d, part, 1)))
    return np.concatenate(idx).astype(np.int64), np.concatenate(dist)


def typical_nn_distance(reference: np.ndarray, n: int = 500, seed: int = 0) -> float:
    """Median distance from a training image to its nearest *other* training image (n drawn)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(reference), size=min(n, len(reference)), replace=False)
    _, dist = nearest_neighbours(reference[pick], reference, 2)
    return float(np.median(dist[:, 1]))


@dataclass
class NearestReport:
    indices: np.ndarray  # [n, k] training image per generated image, nearest first
    distances: np.ndarray  # [n, k]
    typical: float  # median training-to-training nearest distance
    png: Path

    def to_dict(self) -> dict:
        ratio = self.distances[:, 0] / max(self.typical, 1e-12)
        return {"png": str(self.png), "n": int(len(ratio)), "k": int(self.indices.shape[1]),
                "typical_train_nn_distance": self.typical,
                "copy_ratio_min": float(ratio.min()), "copy_ratio_median": float(np.median(ratio)),
                "near_copies": int((ratio < 0.1).sum()), "near_copy_threshold": 0.1}


def nearest_panel(generated: np.ndarray, gen_features: np.ndarray, train: np.ndarray,
                  train_features: np.ndarray, path: str | Path, k: int = 5) -> NearestReport:
    """A PNG with one row per generated image (uint8 NHWC): the image, a blank column, then its
    k nearest training images (features from the same extractor), nearest first."""
    idx, dist = nearest_neighbours(gen_features, train_features, k)
    blank = np.full_like(generated[:1], 32)
    rows = [np.concatenate([generated[i:i + 1], blank, train[idx[i]]]) for i in range(len(generated))]
    grid = pictures.image_grid(np.concatenate(rows), len(rows), idx.shape[1] + 2)
    png = pictures.save_png(grid, path, min_side=384)
    return NearestReport(idx, dist, typical_nn_distance(train_features), png)
