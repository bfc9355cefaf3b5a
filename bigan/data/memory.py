"""In-memory training sets whose order is keyed by global sample index.

The sample at global position `p` (counted over the whole job since step 0) is
`perm(epoch)[p % N]` with `epoch = p // N` and `perm` a permutation seeded by (seed, epoch). A
worker's batch is its slice of the global batch, so the data seen depends only on the position
and the global batch size, never on the world size or on where a run was interrupted: resuming
from a checkpoint's `data_position` continues exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bigan.config import Config
from bigan.data import synthetic


@dataclass
class ArraySet:
    """Samples (uint8 NHWC images or float32 points) with int64 labels and class names."""

    samples: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def build_dataset(cfg: Config) -> ArraySet:
    """The set named by `cfg.data.source`, at the model's resolution and channel count."""
    m, d = cfg.model, cfg.data
    if d.source == "digits":
        images, labels = synthetic.digits(m.resolution, m.img_channels)
        if m.num_classes == 1:
            labels = np.zeros_like(labels)
        return ArraySet(images, labels, synthetic.DIGIT_CLASS_NAMES[: max(m.num_classes, 1)])
    if d.source == "synthetic":
        images, labels = synthetic.synthetic(d.num_samples, m.num_classes, m.resolution,
                                             m.img_channels, seed=d.seed)
        names = [f"{synthetic.SHAPES[k % len(synthetic.SHAPES)]}-{k}" for k in range(m.num_classes)]
        return ArraySet(images, labels, names)
    points, modes, _, _ = synthetic.gaussian_mixture(d.source.removeprefix("gaussian-"),
                                                     d.num_samples, seed=d.seed)
    labels = modes if m.num_classes > 1 else np.zeros_like(modes)
    if m.num_classes > 1 and modes.max() >= m.num_classes:
        raise ValueError(f"data.source={d.source!r} has {modes.max() + 1} modes but "
                         f"model.num_classes={m.num_classes}: use 1 (unconditional) or the mode count")
    return ArraySet(points, labels, [str(k) for k in range(m.num_classes)])


class IndexedSampler:
    """Batches from an `ArraySet` by global sample position (see the module docstring)."""

    def __init__(self, data: ArraySet, seed: int, flip: bool = False):
        self.data, self.seed, self.flip = data, seed, flip
        self._epoch, self._perm = -1, np.arange(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
        return self._perm

    def indices(self, start: int, count: int) -> np.ndarray:
        """Dataset indices of global positions start .. start + count - 1."""
        n = len(self.data)
        out = np.empty(count, dtype=np.int64)
        for i, pos in enumerate(range(start, start + count)):
            out[i] = self._permutation(pos // n)[pos % n]
        return out

    def batch(self, position: int, global_batch: int, rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """This worker's slice of the global batch starting at `position`.

        Images come back float32 NCHW in [-1, 1]; points float32 [B, dim]. Flips are decided by
        the position too, so they are as reproducible as the order.
        """
        per_worker = global_batch // world_size
        start = position + rank * per_worker
        idx = self.indices(start, per_worker)
        x = torch.from_numpy(self.data.samples[idx])
        y = torch.from_numpy(self.data.labels[idx])
        if x.dtype != torch.uint8:
            return x.float(), y
        x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        if self.flip:
            coins = np.random.default_rng([self.seed, 1, start]).random(per_worker) < 0.5
            x[torch.from_numpy(coins)] = x[torch.from_numpy(coins)].flip(-1)
        return x.contiguous(), y
