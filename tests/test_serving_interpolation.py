"""serving.interpolation: slerp against its geometric meaning (a constant-speed rotation in the
plane of the two ends), its ends, the parallel limit and its input checks."""

from __future__ import annotations

import numpy as np
import pytest

from serving.interpolation import interpolation_steps, slerp

pytestmark = pytest.mark.unit


def test_slerp_is_a_constant_speed_rotation_between_the_ends():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(64), rng.standard_normal(64)
    b *= np.linalg.norm(a) / np.linalg.norm(b)  # equal norms: the path stays on the sphere
    t = interpolation_steps(9)
    path = slerp(a, b, t)
    # The same arc built another way: an orthonormal basis (e0, e1) of span(a, b) and the angle.
    r = np.linalg.norm(a)
    e0 = a / r
    e1 = b - (b @ e0) * e0
    e1 /= np.linalg.norm(e1)
    omega = np.arccos(a @ b / r**2)
    arc = r * (np.cos(t * omega)[:, None] * e0 + np.sin(t * omega)[:, None] * e1)
    np.testing.assert_allclose(path, arc, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), r, rtol=1e-5)
    np.testing.assert_array_equal(path[0], a.astype(np.float32))
    np.testing.assert_allclose(path[-1], b, rtol=0, atol=1e-5)
    assert path.dtype == np.float32 and path.shape == (9, 64)


def test_slerp_of_parallel_ends_is_the_straight_line():
    a = np.arange(1.0, 5.0)
    t = np.array([0.0, 0.25, 1.0])
    np.testing.assert_allclose(slerp(a, 2 * a, t), [a, 1.25 * a, 2 * a], rtol=1e-6)
    np.testing.assert_allclose(slerp(a, -a, t), [a, 0.5 * a, -a], rtol=1e-6)  # antiparallel
    assert np.isfinite(slerp(np.zeros(4), a, t)).all()


def test_interpolation_inputs_are_checked():
    np.testing.assert_array_equal(interpolation_steps(3), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="steps=1 must be >= 2"):
        interpolation_steps(1)
    with pytest.raises(ValueError, match="differ in shape"):
        slerp(np.zeros(3), np.zeros(4), np.zeros(2))
