"""One small interface to draw images from a trained generator, whatever file holds it.

`open_sampler(path)` takes a checkpoint (directory, or a run directory: its latest checkpoint;
PyTorch, the EMA generator) or an exported `.onnx` file (onnxruntime; no torch code path) and
returns an `ImageSampler`. Both follow the sampling contract of `bigan.eval.samples`: the image
for (class c, seed s, psi) uses `sampling.latents([s], dim_z, psi)[0]`, so a checkpoint and its
export give the same images (within the export's parity tolerance) for the same inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bigan import sampling
from bigan.eval.errors import EvalError


class ImageSampler:
    """Draws float32 NCHW images in [-1, 1]; subclasses implement `_images(z, y)`."""

    kind: str  # "checkpoint" | "onnx"
    path: Path
    class_names: list[str]
    dim_z: int
    resolution: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "classes": self.num_classes,
                "dim_z": self.dim_z, "resolution": self.resolution}

    def _images(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def images(self, classes: Sequence[int], seeds: Sequence[int], psi: float | None = None,
               batch_size: int = 64, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """float32 [N, C, R, R] for pairs (classes[i], seeds[i]) at truncation psi."""
        if len(classes) != len(seeds):
            raise ValueError(f"{len(classes)} classes but {len(seeds)} seeds")
        y = np.asarray(classes, dtype=np.int64)
        outs = []
        for i in range(0, len(y), batch_size):
            z = sampling.latents(list(seeds[i:i + batch_size]), self.dim_z, psi)
            outs.append(self._images(z, y[i:i + batch_size]))
            if progress is not None:
                progress(len(z))
        return np.concatenate(outs) if outs else np.zeros((0, 3, self.resolution, self.resolution), np.float32)

    def images_from_latents(self, z: np.ndarray, classes: Sequence[int]) -> np.ndarray:
        """float32 [N, C, R, R] for explicit latents (interpolation paths)."""
        return self._images(np.asarray(z, np.float32), np.asarray(classes, dtype=np.int64))


class CheckpointSampler(ImageSampler):
    kind = "checkpoint"

    def __init__(self, path: str | Path):
        import torch

        from bigan.eval.samples import load_ema_generator

        self._torch = torch
        self.G, self.class_names, self.path = load_ema_generator(path)
        if getattr(self.G, "resolution", None) is None:
            raise EvalError(f"{self.path} holds a 2-D point generator, not an image generator; "
                            "evaluate it with bench/quality.py's mixture metrics")
        self.dim_z, self.resolution = int(self.G.dim_z), int(self.G.resolution)

    def _images(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            return self.G(torch.from_numpy(z), torch.from_numpy(y)).float().numpy()


class OnnxSampler(ImageSampler):
    kind = "onnx"

    def __init__(self, path: str | Path):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EvalError(f"evaluating an ONNX file needs onnxruntime ({e}): "
                            "pip install 'bigan[export]' -c constraints.txt") from e
        from bigan.export.metadata import MetadataError, ModelMetadata

        self.path = Path(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # As many threads as torch would use (OMP_NUM_THREADS), not every core of a shared machine.
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=["CPUExecutionProvider"])
            self.meta = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map)
        except MetadataError as e:
            raise EvalError(str(e)) from e
        except Exception as e:  # onnxruntime raises its own types for unreadable files
            raise EvalError(f"{self.path}: onnxruntime cannot load it ({e}); export it again "
                            "with `bigan export`") from e
        self.class_names, self.dim_z = list(self.meta.class_names), self.meta.dim_z
        self.resolution = self.meta.resolution

    def describe(self) -> dict:
        return {**super().describe(), "training_step": self.meta.training_step,
                "recommended_truncation": self.meta.recommended_truncation}

    def _images(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(["images_float"], {"z": z, "y": y})
        return out


def open_sampler(path: str | Path) -> ImageSampler:
    """A sampler for an `.onnx` file or a checkpoint / run directory."""
    path = Path(path)
    if not path.exists():
        raise EvalError(f"model {str(path)!r} does not exist: pass a checkpoint directory, a run "
                        "directory or an exported .onnx file")
    if path.suffix == ".onnx":
        return OnnxSampler(path)
    return CheckpointSampler(path)
