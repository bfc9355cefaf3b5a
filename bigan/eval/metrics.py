"""Sample-quality metrics as pure functions of feature arrays: FID, KID, precision/recall, IS.

Every function takes float arrays [N, D] of features (Inception pool features, or a domain
classifier's penultimate layer) or logits [N, C]; nothing here knows about images, models or
files, so the same math serves `bigan eval`, the truncation sweep and the benchmarks, and the
unit tests check it against closed forms. NumPy only.

Why not a library: torch-fidelity has exactly these feature-level functions, but importing any
of its modules imports torchvision (a second CUDA-coupled wheel for a feature we do not use);
torchmetrics' FID/KID are stateful image metrics with no precision/recall of Kynkaenniemi et al.;
clean-fid imports torchvision and requests. The formulas below follow the reference
implementations (pytorch-fid, the KID and PR papers' code) and are tested against closed forms.
"""

from __future__ import annotations

import numpy as np


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or len(a) < 2:
        raise ValueError(f"{name} must be [N >= 2, D] features, got shape {a.shape}")
    return a


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (ddof = 1, as pytorch-fid) in float64."""
    f = _as_features(features, "features")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, Eq. 6):

        d^2 = ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    tr((S1 S2)^(1/2)) is computed as sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), a symmetric PSD matrix
    similar to S1 S2, so it is exact and needs no complex matrix square root (pytorch-fid's
    scipy.linalg.sqrtm gives the same value; the tests compare the two).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID of two feature sets: `frechet_distance` of their means and covariances."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel k(x, y) = (x.y / D + 1)^3 (Bińkowski et al. 2018, Sec. 3)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD^2 with `polynomial_kernel` for equal-sized x, y [m, D]
    (Gretton et al. 2012, Eq. 3 with the cross term over all pairs, as the KID code):

        1/(m(m-1)) sum_{i!=j} [k(x_i,x_j) + k(y_i,y_j)] - 2/m^2 sum_{i,j} k(x_i,y_j).
    """
    m = len(x)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean and std of `mmd2_unbiased` over `subsets` random
    subsets of m = min(subset_size, N_real, N_fake) samples each, drawn without replacement
    (the defaults of the KID paper's code and torch-fidelity). Unbiased at any N, which is why
    it sits beside FID when N is small."""
    r, f = _as_features(real, "real"), _as_features(fake, "fake")
    m = min(subset_size, len(r), len(f))
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(r[rng.choice(len(r), m, replace=False)],
                            f[rng.choice(len(f), m, replace=False)]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def _kth_neighbour_radii(x: np.ndarray, k: int, block: int) -> np.ndarray:
    """Distance of each row of x to its k-th nearest other row."""
    radii = np.empty(len(x))
    for i in range(0, len(x), block):
        d = _distances(x[i:i + block], x)
        radii[i:i + block] = np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself
    return radii


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(d2, 0, None))


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int) -> float:
    inside = [(_distances(points[i:i + block], centres) <= radii[None, :]).any(1)
              for i in range(0, len(points), block)]
    return float(np.concatenate(inside).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                     block: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Eq. 1-2), k = 3 as in the paper.

    The manifold of a set is the union of balls around its points, each with the radius of the
    distance to its k-th nearest neighbour in the set. precision = fraction of fake points inside
    the real manifold; recall = fraction of real points inside the fake manifold.
    """
    r, f = _as_features(real, "real"), _as_features(fake, "fake")
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _coverage(f, r, _kth_neighbour_radii(r, k, block), block)
    recall = _coverage(r, f, _kth_neighbour_radii(f, k, block), block)
    return precision, recall


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over
    `splits` consecutive chunks, p(y) being each chunk's mean prediction."""
    p = softmax(logits)
    scores = []
    for chunk in np.array_split(p, max(1, min(splits, len(p)))):
        py = chunk.mean(0, keepdims=True)
        kl = (chunk * (np.log(np.clip(chunk, 1e-12, None)) - np.log(np.clip(py, 1e-12, None)))).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def class_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose argmax class equals the class they were generated for."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(logits) != len(labels):
        raise ValueError(f"{len(logits)} predictions but {len(labels)} labels")
    return float((logits.argmax(1) == labels).mean())


def intra_class_fid(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray,
                    fake_labels: np.ndarray) -> float:
    """Intra-class FID (Miyato & Koyama 2018, Sec. 5.1; BigGAN's and StudioGAN's "intra-FID"):
    the mean over classes k of FID(real features of class k, generated features of class k).
    Classes with fewer than 2 samples on either side cannot have a covariance and are skipped;
    ValueError if none is left. Each class's N is about N / K, so the bias of FID at small N is
    larger than for the whole-set FID: compare intra-FIDs only at equal N and K."""
    real, fake = np.asarray(real), np.asarray(fake)
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    if len(real) != len(real_labels) or len(fake) != len(fake_labels):
        raise ValueError("features and labels differ in length")
    values = []
    for k in np.union1d(real_labels, fake_labels):
        r, f = real[real_labels == k], fake[fake_labels == k]
        if len(r) >= 2 and len(f) >= 2:
            values.append(fid_from_features(r, f))
    if not values:
        raise ValueError("intra-class FID needs >= 2 real and 2 generated samples of some class")
    return float(np.mean(values))
