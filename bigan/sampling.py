"""Latents, classes and interpolation paths for sampling a generator, in NumPy only.

The torch-free server imports this module, so it must never import torch; the trainer, the
`bigan sample` command and the server all draw latents here, which is what makes an image
for (class, seed, psi) identical everywhere. Each seed gets its own `np.random.Generator`
(as edm2's StackedRandomGenerator), so a sample never depends on the batch it is drawn in.
Truncation follows BigGAN (Brock et al. 2019, Sec. 3.1): values outside [-psi, psi] are redrawn
(`mode` "resample", bigan's own); a model imported from TF-Hub may instead draw as TF-Hub and
pytorch-pretrained-BigGAN do, z = psi * truncnorm(-2, 2) (`mode` "tfhub-scaled", `tfhub_scaled`).
The model's metadata names its mode (`bigan.onnx_metadata.Z_SAMPLINGS`).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import numpy as np

from bigan.onnx_metadata import DEFAULT_Z_SAMPLING, Z_SAMPLINGS, PerClassTruncation

_NORMAL = NormalDist()
_TFHUB_BOUND = 2.0  # TF-Hub's truncnorm(-2, 2): z / psi lies in [-2, 2]

_PARALLEL_SIN = 1e-6  # below this sin(angle), slerp's path is ill-defined: use lerp


def truncated_normal(rng: np.random.Generator, shape: int | tuple[int, ...],
                     psi: float | None) -> np.ndarray:
    """float32 N(0, 1) samples of `shape`; with psi, restricted to [-psi, psi] by resampling.

    Every value with |z| > psi is redrawn from `rng` (the offending positions in row-major order,
    one fresh draw each per round) until all lie inside, which yields the normal distribution
    truncated to [-psi, psi] (BigGAN's truncation trick, Brock et al. 2019, Sec. 3.1). Each
    round keeps about erf(psi / sqrt(2)) of the draws, so a tiny psi takes ~1/psi rounds.
    The bound holds for the float32 values returned. psi=None: no truncation.
    """
    z = rng.standard_normal(shape).astype(np.float32)
    if psi is None:
        return z
    if not psi > 0:  # also rejects NaN
        raise ValueError(f"truncation psi={psi} must be > 0 (or None for no truncation)")
    flat = z.reshape(-1)
    bad = np.flatnonzero(np.abs(flat.astype(np.float64)) > psi)
    while bad.size:
        flat[bad] = rng.standard_normal(bad.size).astype(np.float32)
        bad = bad[np.abs(flat[bad].astype(np.float64)) > psi]
    return z


def tfhub_scaled(seed: int, dim_z: int, psi: float) -> np.ndarray:
    """float32 [dim_z] = psi * truncnorm(-2, 2), drawn as pytorch-pretrained-BigGAN's
    `truncated_noise_sample(1, dim_z, psi, seed)` draws it (the TF-Hub BigGAN Colab's formula):
    `scipy.stats.truncnorm.rvs(-2, 2, random_state=np.random.RandomState(seed))`, which is the
    inverse CDF of N(0, 1) truncated to [-2, 2] at uniform draws,
    x = Phi^-1(Phi(-2) + u (Phi(2) - Phi(-2))), cast to float32 and scaled by psi in float32.
    Phi and Phi^-1 come from the standard library (`statistics.NormalDist`, Wichura's AS 241), so
    the torch- and scipy-free server draws the package's z for a seed (equal in float32 over
    38,400 values checked against scipy 1.17). Seeds >= 2**32, which RandomState refuses as one
    integer, seed it with their 32-bit words (no package equivalent)."""
    if not psi > 0:
        raise ValueError(f"truncation psi={psi} must be > 0 for tfhub-scaled sampling")
    seed = int(seed)
    words = seed if seed < 2**32 else [(seed >> s) & 0xFFFFFFFF for s in range(0, seed.bit_length(), 32)]
    u = np.random.RandomState(words).uniform(size=dim_z)
    lo, hi = _NORMAL.cdf(-_TFHUB_BOUND), _NORMAL.cdf(_TFHUB_BOUND)
    x = np.array([_NORMAL.inv_cdf(lo + v * (hi - lo)) for v in u.tolist()], np.float32)
    return x * np.float32(psi)


def latents(seeds: Sequence[int], dim_z: int, psi: float | None | Sequence[float | None] = None,
            mode: str = DEFAULT_Z_SAMPLING) -> np.ndarray:
    """float32 [len(seeds), dim_z]: row i drawn from seeds[i] alone at its psi, by `mode`:
    "resample": truncated_normal(default_rng(seeds[i]), dim_z, psi); "tfhub-scaled":
    `tfhub_scaled(seeds[i], dim_z, psi)` (psi None: plain N(0, 1), as "resample" draws it).

    psi: one truncation for every row, or one per seed (a per-class default resolved by each
    row's class). One generator per seed, so a seed's latent is the same whatever batch it is in.
    """
    if dim_z < 1:
        raise ValueError(f"dim_z={dim_z} must be >= 1")
    if mode not in Z_SAMPLINGS:
        raise ValueError(f"unknown z sampling {mode!r}; choose one of {', '.join(Z_SAMPLINGS)}")
    if isinstance(psi, PerClassTruncation):
        raise TypeError("a per-class psi must be resolved by each row's class first "
                        "(PerClassTruncation.for_classes)")
    psis = list(psi) if isinstance(psi, (list, tuple, np.ndarray)) else [psi] * len(seeds)
    if len(psis) != len(seeds):
        raise ValueError(f"{len(psis)} psi values for {len(seeds)} seeds")
    rows = [tfhub_scaled(s, dim_z, float(p)) if mode == "tfhub-scaled" and p is not None
            else truncated_normal(np.random.default_rng(int(s)), (dim_z,),
                                  None if p is None else float(p))
            for s, p in zip(seeds, psis)]
    return np.stack(rows) if rows else np.zeros((0, dim_z), np.float32)


def sample_classes(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """int64 [n] class labels drawn uniformly from {0, ..., num_classes - 1}."""
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    return rng.integers(0, num_classes, size=n, dtype=np.int64)


def grid_labels(classes: Sequence[int] | np.ndarray, per_class: int) -> np.ndarray:
    """int64 labels of a class grid (one row per class), row-major: each class repeated
    `per_class` times in turn, e.g. grid_labels([3, 7], 2) -> [3, 3, 7, 7]."""
    if per_class < 1:
        raise ValueError(f"per_class={per_class} must be >= 1")
    return np.repeat(np.asarray(classes, dtype=np.int64).reshape(-1), per_class)


def lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Linear interpolation (1 - t) a + t b; exact at t = 0 and t = 1."""
    return (1 - t) * np.asarray(a) + t * np.asarray(b)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation along the last axis (Shoemake 1985; White 2016, "Sampling
    Generative Networks", for GAN latents):

        slerp(a, b, t) = sin((1 - t) w) / sin(w) a + sin(t w) / sin(w) b,
        w = arccos(<a, b> / (||a|| ||b||)).

    Keeps the norm when ||a|| = ||b||; exact at t = 0 and 1. Rows whose vectors are nearly
    parallel or anti-parallel (sin w < 1e-6) or zero fall back to `lerp`. Computed in float64,
    returned in the inputs' dtype.
    """
    a, b = np.asarray(a), np.asarray(b)
    dtype = np.result_type(a, b, np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=-1, keepdims=True) * np.linalg.norm(b64, axis=-1, keepdims=True)
    safe_norms = np.where(norms > 0, norms, 1.0)
    cos = np.clip(np.sum(a64 * b64, axis=-1, keepdims=True) / safe_norms, -1.0, 1.0)
    omega = np.arccos(cos)
    sin = np.sin(omega)
    parallel = (sin < _PARALLEL_SIN) | (norms == 0)
    safe_sin = np.where(parallel, 1.0, sin)
    out = np.sin((1 - t) * omega) / safe_sin * a64 + np.sin(t * omega) / safe_sin * b64
    out = np.where(parallel, lerp(a64, b64, t), out)
    return out.astype(dtype)


def interpolate(z0: np.ndarray, z1: np.ndarray, steps: int, method: str = "linear") -> np.ndarray:
    """[steps, dim] latents from z0 to z1 (both [dim]) at t = linspace(0, 1, steps);
    method "linear" (`lerp`) or "spherical" (`slerp`). Rows 0 and steps - 1 equal z0 and z1."""
    z0, z1 = np.asarray(z0), np.asarray(z1)
    if z0.ndim != 1 or z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must be vectors of one shape, got {z0.shape} and {z1.shape}")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    fns = {"linear": lerp, "spherical": slerp}
    if method not in fns:
        raise ValueError(f"unknown interpolation {method!r}; choose linear or spherical")
    dtype = np.result_type(z0, z1, np.float32)
    return np.stack([fns[method](z0, z1, float(t)) for t in np.linspace(0.0, 1.0, steps)]).astype(dtype)
