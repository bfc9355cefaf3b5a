"""The offline domain classifier: a small CNN trained on a data set's own shards.

For machines without the Inception FID weights, and for what Inception cannot tell: whether a
class-conditional generator draws the class it was asked for. `bigan eval train-classifier
SHARDS --out PATH` trains it; `bigan eval --classifier PATH` uses its penultimate features for
FID/KID/precision/recall ("domain FID": comparable only between runs scored with the same
classifier file, never with published FID) and its predictions for class accuracy.

The file is one safetensors archive (no pickle) whose metadata holds the format, the class
names, the input resolution, the width, the sha256 of the data set's dataset.json and the
held-out accuracy. Every 10th sample of the shards (in `read_shard_images` order) is held out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from bigan.eval.errors import EvalError

FORMAT = "bigan-domain-classifier"


class DomainClassifier(nn.Module):
    """forward(x: float [N, 3, R, R] in [-1, 1]) -> (features [N, 4 width], logits [N, classes]).

    Three stages of two 3x3 conv + BN + ReLU (widths w, 2w, 4w), 2x2 max-pool between them,
    global average pool: the penultimate 4w-dim vector is the feature space.
    """

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate((width, 2 * width, 4 * width)):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                           nn.ReLU(inplace=True)]
                c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        self.num_classes, self.width, self.feature_dim = num_classes, width, c_in

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x).mean((2, 3))
        return h, self.head(h)


@dataclass
class ClassifierFile:
    model: DomainClassifier
    class_names: list[str]
    resolution: int
    dataset_sha256: str
    val_accuracy: float
    sha256: str  # of the file itself: the extractor's identity in caches and results


def to_model_input(images: np.ndarray, resolution: int) -> Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] at `resolution` (bilinear, antialiased if smaller)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[-1] != resolution:
        x = nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear",
                                      align_corners=False, antialias=x.shape[-1] > resolution)
    return x


def _augment(x: Tensor, gen: torch.Generator, flip: bool) -> Tensor:
    """Random translation by up to 1/8 of the side (reflect-padded crop), optional h-flip."""
    n, _, r, _ = x.shape
    pad = max(1, r // 8)
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + r, dx[i]:dx[i] + r] for i in range(n)])
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        out[mask] = out[mask].flip(-1)
    return out


def train_classifier(shards: str | Path, out: str | Path, epochs: int = 10, width: int = 32,
                     batch_size: int = 128, lr: float = 2e-3, flip: bool = False,
                     max_images: int | None = None, seed: int = 0,
                     log: Callable[[str], None] = print) -> dict:
    """Train a `DomainClassifier` on `shards` (every 10th sample held out) and save it to `out`.

    Adam with a cosine schedule, random translations (and flips with `flip`, wrong for digits).
    Returns a report dict (accuracies, images, seconds, path).
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from bigan.data.shards import read_index
    from bigan.eval.real_data import dataset_sha256, read_shard_images

    index = read_index(shards)
    resolution = int(index["resolution"])
    n_all = int(index["num_samples"]) if max_images is None else min(max_images, int(index["num_samples"]))
    t0 = time.perf_counter()
    with tqdm(total=n_all, desc="read shards", unit="img", leave=False) as bar:
        images, labels, names = read_shard_images(shards, n_all, resolution, progress=bar.update)
    if len(images) < 20:
        raise EvalError(f"{shards} has only {len(images)} usable images; a classifier needs more")
    held = np.arange(len(images)) % 10 == 9
    x_train, y_train = to_model_input(images[~held], resolution), torch.from_numpy(labels[~held])
    x_val, y_val = to_model_input(images[held], resolution), torch.from_numpy(labels[held])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DomainClassifier(len(names), width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(x_train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    bar = tqdm(total=steps, desc="train classifier", unit="it")
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            _, logits = model(_augment(x_train[idx], gen, flip))
            loss = nn.functional.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    bar.close()
    val_acc = accuracy(model, x_val, y_val)
    train_acc = accuracy(model, x_train[:5000], y_train[:5000])
    meta = {"format": FORMAT, "class_names": json.dumps(names), "resolution": str(resolution),
            "width": str(width), "dataset_sha256": dataset_sha256(shards),
            "val_accuracy": f"{val_acc:.6f}", "train_images": str(len(x_train)),
            "val_images": str(len(x_val)), "epochs": str(epochs)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(out)
    report = {"path": str(out), "classes": len(names), "train_images": len(x_train),
              "val_images": len(x_val), "train_accuracy": train_acc, "val_accuracy": val_acc,
              "epochs": epochs, "seconds": time.perf_counter() - t0}
    log(f"classifier: held-out accuracy {val_acc:.3f} on {len(x_val)} images "
        f"(train {train_acc:.3f}) -> {out}")
    return report


@torch.no_grad()
def predict(model: DomainClassifier, x: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    model.eval()
    outs = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def accuracy(model: DomainClassifier, x: Tensor, y: Tensor) -> float:
    return float((predict(model, x)[1].argmax(1) == y).float().mean()) if len(x) else float("nan")


def load_classifier(path: str | Path) -> ClassifierFile:
    """Read a file written by `train_classifier`; EvalError says what to do when it is not one."""
    import hashlib

    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise EvalError(f"classifier file {str(path)!r} not found; train one with "
                        "`bigan eval train-classifier SHARDS --out PATH`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise EvalError(f"{path} is not a classifier file ({e}); train one with "
                        "`bigan eval train-classifier SHARDS --out PATH`") from e
    if meta.get("format") != FORMAT:
        raise EvalError(f"{path} is not a bigan domain classifier (format "
                        f"{meta.get('format')!r}); train one with `bigan eval train-classifier`")
    names = json.loads(meta["class_names"])
    model = DomainClassifier(len(names), int(meta["width"]))
    model.load_state_dict(state)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return ClassifierFile(model.eval().requires_grad_(False), names, int(meta["resolution"]),
                          meta["dataset_sha256"], float(meta["val_accuracy"]), sha)
