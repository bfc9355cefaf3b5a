"""Pictures a person looks at: image grids, 2-D scatter plots and metric curves, written as PNG.

NumPy and Pillow; the curves use matplotlib (the `eval` extra), imported only when drawn.
Callers convert tensors with `.cpu().numpy()` first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float NCHW images in [-1, 1] -> uint8 NHWC (values outside the range are clipped)."""
    x = np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255)
    return x.astype(np.uint8).transpose(0, 2, 3, 1)


def image_grid(images: np.ndarray, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """uint8 NHWC images laid out row-major into one uint8 HWC picture with `pad` px gaps."""
    n, h, w, c = images.shape
    if n > rows * cols:
        raise ValueError(f"{n} images do not fit a {rows}x{cols} grid")
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 32, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y0:y0 + h, x0:x0 + w] = images[i]
    return canvas


def save_png(picture: np.ndarray, path: str | Path, min_side: int = 0) -> Path:
    """Write a uint8 HWC picture (C = 1 or 3); upscale with nearest neighbour to `min_side` px."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
    scale = max(1, -(-min_side // min(img.size))) if min_side else 1
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)  # a viewer polling the file never sees half a PNG
    return path


def scatter_picture(points: np.ndarray, reference: np.ndarray | None = None, size: int = 512,
                    extent: float | None = None) -> np.ndarray:
    """Rasterise 2-D points (white) over optional reference points (red) into a uint8 HWC picture."""
    pts = np.asarray(points, dtype=np.float64)
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)
    if extent is None:
        both = pts if ref is None else np.concatenate([pts, ref])
        extent = float(np.abs(both).max()) * 1.1 if len(both) else 1.0
    canvas = np.full((size, size, 3), 16, dtype=np.uint8)

    def draw(p: np.ndarray, colour: tuple[int, int, int], radius: int) -> None:
        ij = np.round((p / extent * 0.5 + 0.5) * (size - 1)).astype(int)
        ij = ij[(ij >= 0).all(1) & (ij < size).all(1)]
        for di in range(-radius, radius + 1):
            for dj in range(-radius, radius + 1):
                canvas[np.clip(size - 1 - ij[:, 1] + di, 0, size - 1),
                       np.clip(ij[:, 0] + dj, 0, size - 1)] = colour

    if ref is not None:
        draw(ref, (220, 40, 40), 3)
    draw(pts, (240, 240, 240), 0)
    return canvas


def metric_curves_png(series: dict[str, list[tuple[float, float]]], path: str | Path,
                      best: tuple[str, float, float] | None = None, xlabel: str = "kimg") -> Path:
    """One panel per metric: its (x, y) points as a line with markers; `best` = (metric, x, y)
    is ringed in its panel. Written atomically (a viewer polling the file never sees half a PNG).
    ImportError when matplotlib is missing."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global figure state in a trainer

    names = [k for k, pts in series.items() if pts]
    cols = min(3, max(1, len(names)))
    rows = max(1, -(-len(names) // cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        xs, ys = zip(*sorted(series[name]))
        ax.plot(xs, ys, marker="o", markersize=3)
        if best is not None and best[0] == name:
            ax.scatter([best[1]], [best[2]], s=90, facecolors="none", edgecolors="red",
                       label=f"best {best[2]:.4g} @ {best[1]:g} {xlabel}")
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    tmp.replace(path)
    return path
