"""Truncated normal against scipy's truncnorm, per-seed latents, classes, interpolation, and the
torch-free import the server relies on."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats

from bigan import sampling
from tests.helpers import ROOT

pytestmark = pytest.mark.unit

N = 20_000


@pytest.mark.parametrize("psi", [0.5, 1.0, 2.0])
def test_truncated_normal_matches_scipy_truncnorm(psi):
    z = sampling.truncated_normal(np.random.default_rng(0), (N,), psi)
    assert z.dtype == np.float32 and z.shape == (N,)
    assert np.all(np.abs(z.astype(np.float64)) <= psi)
    assert stats.kstest(z, stats.truncnorm(-psi, psi).cdf).pvalue > 0.01
    # The untruncated normal is rejected for the small psi (the test has power).
    if psi <= 1.0:
        assert stats.kstest(z, stats.norm.cdf).pvalue < 1e-6


def test_no_truncation_is_a_standard_normal():
    z = sampling.truncated_normal(np.random.default_rng(1), (100, 200), None)
    assert z.dtype == np.float32 and z.shape == (100, 200)
    assert stats.kstest(z.ravel(), stats.norm.cdf).pvalue > 0.01
    assert np.abs(z).max() > 3.0  # tails are there


def test_bound_holds_for_a_psi_float32_cannot_represent():
    z = sampling.truncated_normal(np.random.default_rng(2), (N,), 0.7)
    assert np.all(np.abs(z.astype(np.float64)) <= 0.7)


def test_truncated_normal_is_reproducible():
    a = sampling.truncated_normal(np.random.default_rng(5), (64, 8), 0.5)
    b = sampling.truncated_normal(np.random.default_rng(5), (64, 8), 0.5)
    assert a.tobytes() == b.tobytes()
    c = sampling.truncated_normal(np.random.default_rng(6), (64, 8), 0.5)
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize("psi", [0.0, -1.0, float("nan")])
def test_non_positive_psi_is_refused(psi):
    with pytest.raises(ValueError, match="psi"):
        sampling.truncated_normal(np.random.default_rng(0), (4,), psi)


@pytest.mark.parametrize("psi", [None, 0.6])
def test_a_seeds_latent_does_not_depend_on_its_batch(psi):
    both = sampling.latents([3, 5], 16, psi)
    alone = sampling.latents([5], 16, psi)
    assert both.shape == (2, 16) and both.dtype == np.float32
    assert_array_equal(both[1], alone[0])
    assert_array_equal(both[0], sampling.truncated_normal(np.random.default_rng(3), (16,), psi))
    assert not np.array_equal(both[0], both[1])
    assert sampling.latents([], 16).shape == (0, 16)


def test_sample_classes_uniform_and_reproducible():
    labels = sampling.sample_classes(np.random.default_rng(0), 10_000, 10)
    assert labels.dtype == np.int64 and labels.shape == (10_000,)
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10
    assert stats.chisquare(counts).pvalue > 0.01
    assert_array_equal(labels, sampling.sample_classes(np.random.default_rng(0), 10_000, 10))


def test_grid_labels_repeat_classes_row_major():
    grid = sampling.grid_labels([3, 0, 7], 2)
    assert grid.dtype == np.int64
    assert_array_equal(grid, [3, 3, 0, 0, 7, 7])


def test_lerp_midpoint_and_endpoints():
    a, b = np.array([1.0, -2.0, 4.0], np.float32), np.array([3.0, 0.0, -4.0], np.float32)
    assert_allclose(sampling.lerp(a, b, 0.5), [2.0, -1.0, 0.0])
    assert_array_equal(sampling.lerp(a, b, 0.0), a)
    assert_array_equal(sampling.lerp(a, b, 1.0), b)


def test_slerp_keeps_the_norm_and_hits_the_endpoints_exactly():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(32).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    assert_array_equal(sampling.slerp(a, b, 0.0), a)
    assert_array_equal(sampling.slerp(a, b, 1.0), b)
    for t in (0.1, 0.25, 0.5, 0.9):
        out = sampling.slerp(a, b, t)
        assert out.dtype == np.float32
        assert_allclose(np.linalg.norm(out), np.linalg.norm(a), rtol=1e-5)
    # Orthogonal unit vectors: the midpoint is (a + b) / sqrt(2), not the chord's (a + b) / 2.
    e0, e1 = np.eye(2)
    assert_allclose(sampling.slerp(e0, e1, 0.5), (e0 + e1) / np.sqrt(2))
    assert_allclose(sampling.slerp(e0, e1, 1 / 3), [np.cos(np.pi / 6), np.sin(np.pi / 6)])


def test_slerp_falls_back_to_lerp_for_parallel_or_zero_vectors():
    a = np.array([1.0, 2.0])
    for b in (2 * a, -a, np.zeros(2)):
        out = sampling.slerp(a, b, 0.25)
        assert np.all(np.isfinite(out))
        assert_allclose(out, sampling.lerp(a, b, 0.25))


def test_slerp_works_row_wise_on_batches():
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 0.0]])  # second row parallel: lerp
    out = sampling.slerp(a, b, 0.5)
    assert_allclose(out, [[np.sqrt(0.5), np.sqrt(0.5)], [1.5, 0.0]])


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolate_shapes_and_endpoints(method):
    rng = np.random.default_rng(1)
    z0, z1 = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    path = sampling.interpolate(z0, z1, 5, method)
    assert path.shape == (5, 8) and path.dtype == np.float32
    assert_array_equal(path[0], z0)
    assert_array_equal(path[-1], z1)
    fn = sampling.lerp if method == "linear" else sampling.slerp
    assert_allclose(path[2], fn(z0, z1, 0.5), rtol=1e-6)


def test_interpolate_refuses_bad_arguments():
    z = np.zeros(4)
    with pytest.raises(ValueError, match="unknown interpolation"):
        sampling.interpolate(z, z, 3, "cubic")
    with pytest.raises(ValueError, match="vectors of one shape"):
        sampling.interpolate(z, np.zeros(5), 3)


def test_importing_sampling_does_not_import_torch():
    code = "import bigan.sampling, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
