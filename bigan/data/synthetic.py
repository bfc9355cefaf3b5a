"""Data sets that need nothing from outside: the embedded default and the generated test sets.

- `digits`: scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside the scikit-learn
  wheel), upsampled with an anti-aliased filter to the training resolution: 10 classes of real
  images for `make demo`.
- `synthetic`: a procedural class-labelled image set at any resolution (a shape, a colour and a
  texture per class, with random position, size and background), for tests and
  high-resolution smoke runs where real data would be too big to ship.
- `gaussian_mixture`: the 2-D ring-of-8 and grid-of-25 mixtures exactly as PacGAN defines them.

Images are uint8 NHWC; labels int64. NumPy and Pillow only.
"""

from __future__ import annotations

import numpy as np

DIGIT_CLASS_NAMES = [str(i) for i in range(10)]
SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond", "stripes", "checker")


def digits(resolution: int, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits as uint8 [1797, R, R, C] (white on black) and labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    # Pad 8x8 -> 10x10 first so strokes don't touch the border after upsampling, as MNIST does.
    small = np.pad(small, ((0, 0), (1, 1), (1, 1)))
    big = np.stack([
        np.asarray(Image.fromarray(im).resize((resolution, resolution), Image.Resampling.BICUBIC))
        for im in small
    ])
    images = np.repeat(big[..., None], channels, axis=-1)
    return np.ascontiguousarray(images), bunch.target.astype(np.int64)


def _hue_to_rgb(hue: float) -> np.ndarray:
    """A saturated RGB colour in [0, 1] for a hue in [0, 1)."""
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    return 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, size: float, period: float) -> np.ndarray:
    """Soft-edged mask in [0, 1] of a centred shape on coordinates (u, v) in units of the image."""
    r = np.sqrt(u * u + v * v)
    if shape == "disc":
        d = r - size
    elif shape == "square":
        d = np.maximum(abs(u), abs(v)) - size * 0.85
    elif shape == "triangle":
        d = np.maximum(v - size * 0.6, abs(u) * 1.7 - v - size * 0.9)
    elif shape == "ring":
        d = abs(r - size * 0.8) - size * 0.25
    elif shape == "cross":
        d = np.minimum(np.maximum(abs(u) - size * 0.3, abs(v) - size),
                       np.maximum(abs(v) - size * 0.3, abs(u) - size))
    elif shape == "diamond":
        d = abs(u) + abs(v) - size * 1.1
    elif shape == "stripes":
        d = np.maximum(r - size, np.sin(u / period * np.pi) * period * 0.3)
    else:  # checker
        d = np.maximum(np.maximum(abs(u), abs(v)) - size * 0.85,
                       np.sin(u / period * np.pi) * np.sin(v / period * np.pi) * period * 0.3)
    edge = 1.5 / u.shape[0]  # about one pixel of anti-aliasing at any resolution
    return np.clip(0.5 - d / edge, 0.0, 1.0)


def synthetic(n: int, num_classes: int, resolution: int, channels: int = 3,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Procedural class-labelled images, uint8 [n, R, R, C], labels cycling 0..K-1.

    Class k is shape `SHAPES[k % 8]` in hue `k / K` (offset per shape cycle, so classes stay
    distinct beyond 8); each image draws its own position, size, pattern period and a dim
    background gradient from `seed`, so the set is reproducible and non-trivial to fit.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    grid = (np.arange(resolution) + 0.5) / resolution - 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((n, resolution, resolution, channels), dtype=np.uint8)
    for i, k in enumerate(labels):
        cx, cy = rng.uniform(-0.15, 0.15, size=2)
        size = rng.uniform(0.18, 0.3)
        mask = _shape_mask(SHAPES[k % len(SHAPES)], xx - cx, yy - cy, size, rng.uniform(0.05, 0.1))
        colour = _hue_to_rgb((k / num_classes + 0.13 * (k // len(SHAPES))) % 1.0)
        angle = rng.uniform(0, 2 * np.pi)
        bg = 0.15 + 0.1 * (np.cos(angle) * xx + np.sin(angle) * yy)[..., None] * np.ones(3)
        img = bg * (1 - mask[..., None]) + colour * mask[..., None]
        img = img + rng.normal(0, 0.02, size=img.shape)
        rgb = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        images[i] = rgb[..., :channels] if channels <= 3 else np.repeat(rgb[..., :1], channels, -1)
    return images, labels


def gaussian_mixture(kind: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """PacGAN's 2-D mixtures (Lin et al. 2018, Sec. 5.1): (points [n, 2], mode index, means, std).

    "ring": 8 modes at (cos 2pi i/8, sin 2pi i/8), std 0.01. "grid": 25 modes at (i, j) for
    i, j in {-4, -2, 0, 2, 4}, std 0.05. Modes are drawn uniformly.
    """
    if kind == "ring":
        angles = 2 * np.pi * np.arange(8) / 8
        means, std = np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.01
    elif kind == "grid":
        ticks = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
        means, std = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2), 0.05
    else:
        raise ValueError(f"unknown mixture {kind!r}: use 'ring' or 'grid'")
    rng = np.random.default_rng(seed)
    modes = rng.integers(0, len(means), size=n)
    points = means[modes] + rng.normal(0.0, std, size=(n, 2))
    return points.astype(np.float32), modes.astype(np.int64), means, std
