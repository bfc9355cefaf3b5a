"""Drawing images from a trained generator, whatever holds it: the one generation interface.

`open_sampler(path)` takes a checkpoint (a step directory, a checkpoints root or run directory: its
newest checkpoint; or a consolidated `.safetensors` file) or an exported `.onnx` file and returns
an `ImageSampler` (a `CheckpointSampler` or an `OnnxSampler`); `TorchSampler(G)` wraps a generator
already in memory (the trainer's EMA copy). Every sampler follows one contract, shared with
`bigan sample` and the server: the image for (class c, seed s, psi) uses
`sampling.latents([s], dim_z, psi)[0]`, i.e. its own seeded NumPy generator, and G in eval mode,
so it is the same whatever batch it is computed in, and a checkpoint and its export give the same
images (within the export's parity tolerance). `sampling.latents` draws by the model's
`z_sampling` (bigan's "resample", or "tfhub-scaled" for imported TF-Hub weights: the manifest's
`z_sampling`, the ONNX metadata's). psi may be a `PerClassTruncation` (the default of a model
with one psi per class): each row is then drawn at its class's psi. In a class grid the image in
column j uses seed `seed + j` (the same latent down each column, one class per row).

Importing this module loads neither torch nor onnxruntime: each sampler imports what it runs on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from bigan import pictures, sampling
from bigan.onnx_metadata import (DEFAULT_TRUNCATION, DEFAULT_Z_SAMPLING, Z_SAMPLINGS,
                                 PerClassTruncation)
from bigan.ort_session import ModelFileError, open_model, psi_column, run_inputs

if TYPE_CHECKING:
    from torch import nn

    from bigan.checkpoint.weights import Weights


class ImageSampler:
    """Draws float32 NCHW images in [-1, 1] (2-D points [N, 2] for a point generator);
    subclasses implement `_images(z, y, psi)`."""

    kind: str  # "torch" | "checkpoint" | "onnx": a class attribute of each subclass
    path: Path | None
    class_names: list[str]
    dim_z: int
    resolution: int | None  # None for a 2-D point generator
    z_sampling: str = DEFAULT_Z_SAMPLING  # how z is drawn from a seed (`sampling.latents`)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def default_truncation(self) -> float | None:
        """The psi of a command that names none: the model's recommended psi, the server's
        default too (`ModelMetadata.default_truncation`); a checkpoint recommends none."""
        return DEFAULT_TRUNCATION

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one output: (C, R, R) for an image, (D,) for a point."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "classes": self.num_classes,
                "dim_z": self.dim_z, "resolution": self.resolution, "z_sampling": self.z_sampling}

    def latents(self, seeds: Sequence[int], psi: float | None | Sequence[float | None]
                ) -> np.ndarray:
        """float32 [len(seeds), dim_z]: `sampling.latents` by this model's z sampling."""
        return sampling.latents(list(seeds), self.dim_z, psi, self.z_sampling)

    def _images(self, z: np.ndarray, y: np.ndarray, psi: float | None = None) -> np.ndarray:
        """psi: the truncation z was drawn with; only generators whose batch-norm statistics
        depend on it (imported TF-Hub BigGAN-deep) use it."""
        raise NotImplementedError

    def images(self, classes: Sequence[int], seeds: Sequence[int], psi: float | None = None,
               batch_size: int = 64, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """float32 [N, C, R, R] for pairs (classes[i], seeds[i]) at truncation psi (one value,
        or a PerClassTruncation: row i at its class's psi)."""
        if len(classes) != len(seeds):
            raise ValueError(f"{len(classes)} classes but {len(seeds)} seeds")
        y = np.asarray(classes, dtype=np.int64)
        rows = psi.for_classes(y) if isinstance(psi, PerClassTruncation) else None
        outs = []
        for i in range(0, len(y), batch_size):
            part = psi if rows is None else rows[i:i + batch_size]
            z = self.latents(seeds[i:i + batch_size], part)
            outs.append(self._images(z, y[i:i + batch_size], part))
            if progress is not None:
                progress(len(z))
        if outs:
            return np.concatenate(outs)
        return np.zeros((0, *self.sample_shape), np.float32)

    def images_from_latents(self, z: np.ndarray, classes: Sequence[int],
                            psi: float | None = None) -> np.ndarray:
        """float32 [N, C, R, R] for explicit latents (interpolation paths) drawn at psi."""
        return self._images(np.asarray(z, np.float32), np.asarray(classes, dtype=np.int64), psi)

    def class_grid(self, classes: Sequence[int], per_class: int, seed: int,
                   psi: float | None = None) -> np.ndarray:
        """uint8 HWC grid: one row per class, column j from seed `seed + j`."""
        labels = sampling.grid_labels(classes, per_class)
        seeds = [seed + j for _ in classes for j in range(per_class)]
        images = pictures.to_uint8(self.images(labels, seeds, psi))
        return pictures.image_grid(images, rows=len(classes), cols=per_class)


class TorchSampler(ImageSampler):
    """A PyTorch generator in memory (any device). It runs in eval mode without gradients and is
    left in the mode it came in, so the trainer can draw from its EMA copy between steps."""

    kind = "torch"

    def __init__(self, G: "nn.Module", class_names: Sequence[str] | None = None,
                 path: Path | None = None):
        import torch

        self._torch, self.G, self.path = torch, G, path
        self.class_names = list(class_names) if class_names is not None else [
            str(k) for k in range(max(int(G.num_classes), 1))]
        self.dim_z = int(G.dim_z)
        res = getattr(G, "resolution", None)
        self.resolution = None if res is None else int(res)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        G = self.G
        if self.resolution is None:
            return (int(G.data_dim),)
        side = int(getattr(G, "current_resolution", self.resolution))  # ProGAN: the phase's side
        return (int(G.img_channels), side, side)

    def _images(self, z: np.ndarray, y: np.ndarray, psi: float | None = None) -> np.ndarray:
        torch, G = self._torch, self.G
        device = next(G.parameters()).device
        was_training = G.training
        G.eval()
        try:
            with torch.no_grad():
                args = [torch.from_numpy(z).to(device), torch.from_numpy(y).to(device)]
                if getattr(G, "psi_stats", 0) > 0:
                    args.append(torch.from_numpy(psi_column(psi, len(y))).to(device))
                out = G(*args)
        finally:
            G.train(was_training)
        return out.float().cpu().numpy()


class CheckpointSampler(TorchSampler):
    """The EMA generator of a checkpoint (`load_ema_generator`), on the CPU."""

    kind = "checkpoint"

    def __init__(self, path: str | Path):
        from bigan.checkpoint.weights import read_weights

        w = read_weights(path)
        G, names = ema_generator(w)
        super().__init__(G, names, w.path)
        self.z_sampling = manifest_z_sampling(w.manifest, w.path)


class OnnxSampler(ImageSampler):
    """An exported `.onnx` file through onnxruntime (CPU; no torch code path)."""

    kind = "onnx"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.session, self.provider, self.meta = open_model(self.path, provider="cpu")
        self.class_names, self.dim_z = list(self.meta.class_names), self.meta.dim_z
        self.resolution, self.z_sampling = self.meta.resolution, self.meta.z_sampling

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.meta.channels, self.resolution, self.resolution)

    @property
    def default_truncation(self) -> float | None | PerClassTruncation:
        """The model's default psi, one per class where it has a per-class vector."""
        return self.meta.default_truncations()

    def describe(self) -> dict:
        return {**super().describe(), "training_step": self.meta.training_step,
                "recommended_truncation": self.meta.recommended_truncation,
                "recommended_truncation_per_class": self.meta.recommended_truncation_per_class}

    def _images(self, z: np.ndarray, y: np.ndarray, psi: float | None = None) -> np.ndarray:
        (out,) = self.session.run(["images_float"], run_inputs(self.meta, z, y, psi))
        return out


def open_sampler(path: str | Path, points: bool = False) -> ImageSampler:
    """An image sampler for an `.onnx` file or a checkpoint / run directory / weights file.
    Raises ModelFileError when the path is missing, or holds a 2-D point generator and `points`
    is off (metrics need images; `bigan sample` draws points too)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model {str(path)!r} does not exist: pass a checkpoint directory, a "
                             "run directory or an exported .onnx file")
    if path.suffix == ".onnx":
        return OnnxSampler(path)
    sampler = CheckpointSampler(path)
    if sampler.resolution is None and not points:
        raise ModelFileError(f"{sampler.path} holds a 2-D point generator, not an image "
                             "generator; evaluate it with bench/quality.py's mixture metrics")
    return sampler


def manifest_z_sampling(manifest: dict, path: Path | None = None) -> str:
    """How a checkpoint's model draws z from a seed: the manifest's `z_sampling` (written by
    `bigan import hf-biggan`), bigan's "resample" where absent (every trained run)."""
    from bigan.checkpoint.store import CheckpointError

    mode = manifest.get("z_sampling", DEFAULT_Z_SAMPLING)
    if mode not in Z_SAMPLINGS:
        raise CheckpointError(f"{path}: manifest z_sampling={mode!r} must be one of "
                              f"{', '.join(Z_SAMPLINGS)}")
    return mode


def load_ema_generator(path: str | Path) -> tuple["nn.Module", list[str], Path]:
    """The EMA generator of a checkpoint (a step directory, the newest one under a checkpoints
    root or run directory, or a consolidated .safetensors file from `bigan checkpoint consolidate`).

    Returns (G in eval mode, class names, checkpoint path). The model is rebuilt from the config
    stored in the manifest, so no code or pickled object comes from the file.
    """
    from bigan.checkpoint.weights import read_weights

    w = read_weights(path)
    G, names = ema_generator(w)
    return G, names, w.path


def ema_generator(w: "Weights") -> tuple["nn.Module", list[str]]:
    """(G in eval mode with the EMA weights of `w`, class names)."""
    from bigan import models
    from bigan.checkpoint.shapes import shape_problems
    from bigan.checkpoint.store import CheckpointError
    from bigan.config import config_from_dict

    if "G_ema" not in w.models:
        raise CheckpointError(f"{w.path} holds no EMA generator weights (G_ema)")
    cfg = config_from_dict(w.manifest["config"])
    G = models.build_generator(cfg.model)
    expected = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    problems = shape_problems("G_ema", expected, w.models["G_ema"])
    if problems:  # else load_state_dict's size-mismatch traceback
        raise CheckpointError(f"{w.path}: {'; '.join(problems[:2])}: the EMA weights do not fit "
                              "the model of the config in its manifest (another run's weights, or "
                              "an edited manifest); sample from another checkpoint")
    G.load_state_dict(w.models["G_ema"])
    names = w.manifest.get("class_names") or [str(k) for k in range(cfg.model.num_classes)]
    return G.eval().requires_grad_(False), names


def generate(G: "nn.Module", classes: Sequence[int], seeds: Sequence[int], psi: float | None = None,
             batch_size: int = 64) -> np.ndarray:
    """G's float32 outputs for pairs (classes[i], seeds[i]) (`TorchSampler(G).images`)."""
    return TorchSampler(G).images(classes, seeds, psi, batch_size)


def class_grid(G: "nn.Module", classes: Sequence[int], per_class: int, seed: int,
               psi: float | None = None) -> np.ndarray:
    """uint8 HWC grid of G: one row per class, column j from seed `seed + j`."""
    return TorchSampler(G).class_grid(classes, per_class, seed, psi)


def save_samples_png(G: Any, path: str | Path, classes: Sequence[int], per_class: int,
                     seed: int, psi: float | None = None,
                     reference: np.ndarray | None = None) -> Path:
    """A class grid for image generators; a scatter of 2,500 points for 2-D generators.
    G: a torch generator or any ImageSampler."""
    sampler = G if isinstance(G, ImageSampler) else TorchSampler(G)
    if sampler.resolution is None:
        n = 2500
        labels = np.arange(n) % max(sampler.num_classes, 1)
        points = sampler.images(labels, [seed + i for i in range(n)], psi, batch_size=n)
        return pictures.save_png(pictures.scatter_picture(points, reference), path)
    return pictures.save_png(sampler.class_grid(classes, per_class, seed, psi), path, min_side=256)
