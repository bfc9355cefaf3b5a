"""The latent path of `POST /v1/interpolate`: `bigan.sampling.interpolate(..., "spherical")`, the
one slerp the CLI and the server share, against its geometric meaning (a constant-speed rotation
in the plane of the two ends) and its parallel limit. The route itself (its ends are
/v1/generate's images) is tested in tests/test_serving_page.py."""

from __future__ import annotations

import numpy as np
import pytest

from bigan.sampling import interpolate

pytestmark = pytest.mark.unit


def test_slerp_is_a_constant_speed_rotation_between_the_ends():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(64), rng.standard_normal(64)
    b *= np.linalg.norm(a) / np.linalg.norm(b)  # equal norms: the path stays on the sphere
    a, b = a.astype(np.float32), b.astype(np.float32)  # as engine.latents draws them
    t = np.linspace(0.0, 1.0, 9)
    path = interpolate(a, b, 9, "spherical")
    # The same arc built another way: an orthonormal basis (e0, e1) of span(a, b) and the angle.
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    r = np.linalg.norm(a64)
    e0 = a64 / r
    e1 = b64 - (b64 @ e0) * e0
    e1 /= np.linalg.norm(e1)
    omega = np.arccos(a64 @ b64 / (r * np.linalg.norm(b64)))
    arc = r * (np.cos(t * omega)[:, None] * e0 + np.sin(t * omega)[:, None] * e1)
    np.testing.assert_allclose(path, arc, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), r, rtol=1e-5)
    np.testing.assert_array_equal(path[0], a)
    np.testing.assert_array_equal(path[-1], b)
    assert path.dtype == np.float32 and path.shape == (9, 64)


def test_slerp_of_parallel_ends_is_the_straight_line():
    a = np.arange(1.0, 5.0, dtype=np.float32)
    np.testing.assert_allclose(interpolate(a, 2 * a, 5, "spherical"),
                               [a, 1.25 * a, 1.5 * a, 1.75 * a, 2 * a], rtol=1e-6)
    np.testing.assert_allclose(interpolate(a, -a, 3, "spherical"), [a, 0 * a, -a], rtol=1e-6,
                               atol=1e-6)  # antiparallel
    assert np.isfinite(interpolate(np.zeros(4, np.float32), a, 3, "spherical")).all()
