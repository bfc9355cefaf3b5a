"""Latent interpolation between two seeds, torch-free: the math behind `POST /v1/interpolate`.

The two end latents are the ones `/v1/generate` draws for those seeds (`bigan.sampling.latents`,
one seeded generator per image, truncated at psi), so the first and last images of an
interpolation are exactly the images of (class, seed_a, psi) and (class, seed_b, psi). Between
them the path is spherical (slerp) rather than straight: a Gaussian latent of dimension d lies
near the sphere of radius sqrt(d), and the straight chord between two such points passes well
inside it (at t = 0.5 its norm is about 0.71 sqrt(d) for independent ends), where the generator
saw no latents in training and draws washed-out images (White 2016, "Sampling Generative
Networks", section 2.2).
"""

from __future__ import annotations

import numpy as np

PARALLEL_EPS = 1e-6  # below this sin(omega) slerp divides by ~0 (ends (anti)parallel): lerp instead


def interpolation_steps(steps: int) -> np.ndarray:
    """float64 [steps]: t = k / (steps - 1) for k = 0..steps-1 (both ends included), steps >= 2."""
    if steps < 2:
        raise ValueError(f"steps={steps} must be >= 2 (both ends are images)")
    return np.linspace(0.0, 1.0, steps)


def slerp(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation (Shoemake 1985, "Animating rotation with quaternion
    curves"; used for GAN latents by White 2016):

        slerp(z0, z1; t) = sin((1 - t) omega) / sin(omega) * z0 + sin(t omega) / sin(omega) * z1,
        omega = arccos(<z0, z1> / (|z0| |z1|)).

    z0, z1: float [d]; t: [k] in [0, 1]. Returns float32 [k, d]; row 0 is z0 and row k-1 is z1
    when t runs from 0 to 1. For (anti)parallel ends (sin omega < PARALLEL_EPS) the formula is 0/0
    and the straight line (1 - t) z0 + t z1, its limit as omega -> 0, is returned. Along the path the
    norm moves between |z0| and |z1| (for equal norms it stays put); a coordinate may leave the
    truncation interval [-psi, psi] of its ends by a little, which the generator tolerates."""
    a = np.asarray(z0, np.float64).reshape(-1)
    b = np.asarray(z1, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"end latents differ in shape: {a.shape} vs {b.shape}")
    t = np.asarray(t, np.float64).reshape(-1, 1)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    cos = np.clip(a @ b / norms, -1.0, 1.0) if norms > 0 else 1.0
    omega = float(np.arccos(cos))
    if np.sin(omega) < PARALLEL_EPS:
        return ((1.0 - t) * a + t * b).astype(np.float32)
    s = np.sin(omega)
    return (np.sin((1.0 - t) * omega) / s * a + np.sin(t * omega) / s * b).astype(np.float32)
