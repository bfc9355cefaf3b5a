"""bigan.eval.metrics and bigan.eval.mixtures against closed forms: FID of a set with itself and
of a shifted Gaussian, the Fréchet distance against scipy's sqrtm, KID's unbiasedness, precision/
recall on constructed point clouds, IS and class accuracy on known predictions, and PacGAN's
mixture metrics on hand-placed points."""

from __future__ import annotations

import numpy as np
import pytest

from bigan.eval import metrics
from bigan.eval.mixtures import mixture_quality

pytestmark = pytest.mark.unit


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16))
    assert abs(metrics.fid_from_features(x, x)) < 1e-8


def test_fid_of_a_shifted_set_is_the_squared_shift():
    # Same covariance, means differ by delta: d^2 = ||delta||^2 exactly.
    x = np.random.default_rng(1).normal(size=(400, 8))
    delta = np.linspace(-1, 1, 8)
    assert metrics.fid_from_features(x, x + delta) == pytest.approx(delta @ delta, rel=1e-9)


def test_frechet_distance_matches_the_gaussian_closed_form():
    # Diagonal covariances: d^2 = ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_frechet_distance_matches_scipy_sqrtm_on_full_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = linalg.sqrtm(s1 @ s2).real  # pytorch-fid's formula
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_converges_to_the_population_value_for_sampled_gaussians():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20000, 4))
    y = rng.normal(size=(20000, 4)) * 2.0 + 0.5  # N(0.5, 4 I)
    expected = 4 * 0.25 + 4 * (1 - 2) ** 2  # ||mu||^2 + sum (1 - 2)^2
    assert metrics.fid_from_features(x, y) == pytest.approx(expected, rel=0.05)


def test_kid_is_unbiased_on_toy_features():
    """Same distribution: the mean KID estimate over many small draws is ~0, while the biased
    (V-statistic) estimate is clearly positive. Different distributions: small-sample KID
    averages to the large-sample value."""
    rng = np.random.default_rng(4)
    unbiased, biased, shifted = [], [], []
    for _ in range(400):
        x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
        unbiased.append(metrics.mmd2_unbiased(x, y))
        k = metrics.polynomial_kernel
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
        shifted.append(metrics.mmd2_unbiased(x, y + 0.5))
    se = np.std(unbiased) / np.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * se
    assert np.mean(biased) > 10 * se
    big = metrics.mmd2_unbiased(rng.normal(size=(3000, 3)), rng.normal(size=(3000, 3)) + 0.5)
    assert np.mean(shifted) == pytest.approx(big, abs=4 * np.std(shifted) / np.sqrt(len(shifted)))


def test_kid_subsets_report_mean_and_spread():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) + 1.0
    mean, std = metrics.kernel_inception_distance(x, y, subsets=20, subset_size=100)
    assert mean > 0.1 and 0 < std < mean
    same, _ = metrics.kernel_inception_distance(x, rng.normal(size=(300, 4)), subsets=20,
                                                subset_size=100)
    assert abs(same) < 0.2 * mean


def test_precision_recall_on_constructed_point_clouds():
    # Real: a 10 x 10 lattice of spacing 1; its k=3 radii are exactly 1 (interior and edges).
    g = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    # Fake: half the points sit on the lattice, half far away -> precision 0.5.
    fake = np.concatenate([g[:50] + 0.1, g[:50] + 100.0])
    precision, recall = metrics.precision_recall(g, fake, k=3)
    assert precision == pytest.approx(0.5)
    # Fake covering only the first 5 rows: real rows 5..9 lie outside its balls except row 5.
    p2, r2 = metrics.precision_recall(g, g[:50], k=3)
    assert p2 == 1.0 and r2 == pytest.approx(0.6)
    assert metrics.precision_recall(g, g, k=3) == (1.0, 1.0)


def test_precision_recall_blocks_do_not_change_the_result():
    rng = np.random.default_rng(6)
    r, f = rng.normal(size=(300, 5)), rng.normal(size=(250, 5)) * 1.3
    assert metrics.precision_recall(r, f, block=7) == metrics.precision_recall(r, f, block=4096)


def test_inception_score_extremes_and_class_accuracy():
    k = 5
    confident = np.eye(k)[np.arange(100) % k] * 50  # sure and uniform over classes -> IS = K
    assert metrics.inception_score(confident, splits=2)[0] == pytest.approx(k, rel=1e-6)
    assert metrics.inception_score(np.zeros((100, k)))[0] == pytest.approx(1.0)
    assert metrics.class_accuracy(confident, np.arange(100) % k) == 1.0
    assert metrics.class_accuracy(confident, (np.arange(100) + 1) % k) == 0.0


def test_metrics_reject_malformed_features():
    with pytest.raises(ValueError, match=r"\[N >= 2, D\]"):
        metrics.fid_from_features(np.zeros(5), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="more than 3 samples"):
        metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


def test_mixture_quality_counts_modes_high_quality_and_kl():
    means = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    std = 0.01
    pts = np.array([[0.0, 0.02], [1.0, 0.0], [1.02, 0.0], [0.5, 0.5], [0.0, 0.05]])
    q = mixture_quality(pts, means, std)
    # High quality: 0.02 and 0.0 and 0.02 from their means (<= 0.03); 0.5,0.5 and 0.05 are not.
    assert q.high_quality == pytest.approx(3 / 5)
    assert q.modes_covered == 2 and q.num_modes == 4
    p = np.array([1 / 3, 2 / 3])
    assert q.kl_to_uniform == pytest.approx(np.sum(p * np.log(p * 4)))
    uniform = mixture_quality(np.repeat(means, 3, axis=0), means, std)
    assert uniform.kl_to_uniform == pytest.approx(0.0) and uniform.modes_covered == 4


def test_intra_class_fid_is_the_mean_of_per_class_fids():
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal(0, 1, (40, 3)), rng.normal(3, 1, (40, 3))])
    fake = np.concatenate([rng.normal(0.5, 1, (30, 3)), rng.normal(3, 2, (30, 3)), rng.normal(9, 1, (1, 3))])
    real_y = np.repeat([0, 1], 40)
    fake_y = np.concatenate([np.repeat([0, 1], 30), [2]])  # class 2: one sample, no covariance
    expected = np.mean([metrics.fid_from_features(real[:40], fake[:30]),
                        metrics.fid_from_features(real[40:], fake[30:60])])
    assert metrics.intra_class_fid(real, real_y, fake, fake_y) == pytest.approx(expected, rel=1e-12)
    # mixing the classes up must change it: it is not the whole-set FID
    assert metrics.intra_class_fid(real, real_y, fake, fake_y[::-1].copy()) > expected + 1
    with pytest.raises(ValueError, match="differ in length"):
        metrics.intra_class_fid(real, real_y[:3], fake, fake_y)
