"""Drawing outputs from a trained generator for given classes, seeds and truncation.

The contract shared with `bigan sample` and the server: the image for (class c, seed s, psi)
uses the latent `sampling.latents([s], dim_z, psi)[0]`, i.e. its own seeded NumPy generator,
and G in eval mode, so it is the same whatever batch it is computed in. In a class grid the
image in column j uses seed `seed + j` (the same latent down each column, one class per row).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from bigan import sampling
from bigan.eval import grids

if TYPE_CHECKING:
    from bigan.train.weights import Weights


def load_ema_generator(path: str | Path) -> tuple[nn.Module, list[str], Path]:
    """The EMA generator of a checkpoint (a step directory, the newest one under a checkpoints
    root or run directory, or a consolidated .safetensors file from `bigan checkpoint consolidate`).

    Returns (G in eval mode, class names, checkpoint path). The model is rebuilt from the config
    stored in the manifest, so no code or pickled object comes from the file.
    """
    from bigan.train.weights import read_weights

    w = read_weights(path)
    G, names = ema_generator(w)
    return G, names, w.path


def ema_generator(w: "Weights") -> tuple[nn.Module, list[str]]:
    """(G in eval mode with the EMA weights of `w`, class names)."""
    from bigan import models
    from bigan.config import config_from_dict
    from bigan.train.checkpoint import CheckpointError

    if "G_ema" not in w.models:
        raise CheckpointError(f"{w.path} holds no EMA generator weights (G_ema)")
    cfg = config_from_dict(w.manifest["config"])
    G, _ = models.build(cfg.model)
    G.load_state_dict(w.models["G_ema"])
    names = w.manifest.get("class_names") or [str(k) for k in range(cfg.model.num_classes)]
    return G.eval().requires_grad_(False), names


@torch.no_grad()
def generate(G: nn.Module, classes: Sequence[int], seeds: Sequence[int], psi: float | None = None,
             batch_size: int = 64) -> np.ndarray:
    """G's float32 outputs for pairs (classes[i], seeds[i]), computed in eval mode in chunks."""
    if len(classes) != len(seeds):
        raise ValueError(f"{len(classes)} classes but {len(seeds)} seeds")
    device = next(G.parameters()).device
    was_training = G.training
    G.eval()
    try:
        z = torch.from_numpy(sampling.latents(list(seeds), G.dim_z, psi))
        y = torch.as_tensor(np.asarray(classes, dtype=np.int64))
        outs = [G(z[i:i + batch_size].to(device), y[i:i + batch_size].to(device)).float().cpu()
                for i in range(0, len(z), batch_size)]
    finally:
        G.train(was_training)
    return torch.cat(outs).numpy()


def class_grid(G: nn.Module, classes: Sequence[int], per_class: int, seed: int,
               psi: float | None = None) -> np.ndarray:
    """uint8 HWC grid: one row per class, column j from seed `seed + j`."""
    labels = sampling.class_grid(np.asarray(classes), per_class)
    seeds = [seed + j for _ in classes for j in range(per_class)]
    images = grids.to_uint8(generate(G, labels, seeds, psi))
    return grids.image_grid(images, rows=len(classes), cols=per_class)


def save_samples_png(G: nn.Module, path: str | Path, classes: Sequence[int], per_class: int,
                     seed: int, psi: float | None = None,
                     reference: np.ndarray | None = None) -> Path:
    """A class grid for image generators; a scatter of 2,500 points for 2-D generators."""
    if getattr(G, "resolution", None) is None:
        n = 2500
        labels = np.arange(n) % max(G.num_classes, 1)
        points = generate(G, labels, [seed + i for i in range(n)], psi, batch_size=n)
        return grids.save_png(grids.scatter_picture(points, reference), path)
    return grids.save_png(class_grid(G, classes, per_class, seed, psi), path, min_side=256)
