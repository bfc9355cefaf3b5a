"""Mode-coverage metrics for the 2-D Gaussian mixtures, as PacGAN defines them.

Lin et al. 2018 ("PacGAN: The power of two samples in generative adversarial networks",
Sec. 5.1 and Table 1): every generated point is assigned to its nearest mixture mean; it is
*high quality* when it lies within 3 standard deviations of that mean; a mode is *covered* when
it holds at least one high-quality point; the spread over modes is the KL divergence of the
high-quality points' mode histogram to the uniform distribution. NumPy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class MixtureQuality:
    modes_covered: int  # modes with at least one high-quality sample
    num_modes: int  # modes in the mixture
    high_quality: float  # fraction of samples within 3 std of their nearest mean, in [0, 1]
    kl_to_uniform: float  # KL(p || uniform) of the high-quality samples' mode histogram, nats
    num_samples: int  # N evaluated

    def to_dict(self) -> dict:
        return asdict(self)


def mixture_quality(points: np.ndarray, means: np.ndarray, std: float,
                    radius_std: float = 3.0) -> MixtureQuality:
    """PacGAN's metrics for `points` [N, 2] against a mixture with `means` [K, 2] and `std`.

    nearest(x) = argmin_k ||x - mu_k||; x is high quality when ||x - mu_nearest|| <= 3 std;
    p_k = (high-quality points at mode k) / (high-quality points);
    KL(p || U) = sum_k p_k log(p_k K)   (0 log 0 = 0; log K when no point is high quality).
    """
    pts = np.asarray(points, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != mu.shape[1]:
        raise ValueError(f"points must be [N, {mu.shape[1]}], got {pts.shape}")
    d2 = ((pts[:, None, :] - mu[None, :, :]) ** 2).sum(-1)
    nearest = d2.argmin(1)
    good = np.sqrt(d2[np.arange(len(pts)), nearest]) <= radius_std * std
    counts = np.bincount(nearest[good], minlength=len(mu)).astype(np.float64)
    k = len(mu)
    if counts.sum() == 0:
        kl = float(np.log(k))
    else:
        p = counts / counts.sum()
        nz = p > 0
        kl = float(np.sum(p[nz] * np.log(p[nz] * k)))
    return MixtureQuality(modes_covered=int((counts > 0).sum()), num_modes=k,
                          high_quality=float(good.mean()) if len(pts) else 0.0,
                          kl_to_uniform=kl, num_samples=len(pts))
