"""Shared fixtures: tiny configs that train in a second on CPU."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from PIL import Image

from bigan.config import Config, load_config


def tiny_overrides(out_dir, **extra) -> list[str]:
    """A BigGAN at 32 px with width 8 on 8 synthetic classes: ~0.1 s per step on one core."""
    base = {
        "model.arch": "biggan", "model.resolution": 32, "model.num_classes": 4, "model.ch": 8,
        "model.d_ch": 8, "model.dim_z": 16, "model.shared_dim": 8, "model.attention": "[16]",
        "data.source": "synthetic", "data.num_samples": 64, "train.batch_size": 8,
        "train.steps": 4, "train.log_every": 2, "train.sample_every": 4, "train.ckpt_every": 2,
        "train.grid_per_class": 2, "optim.d_steps": 2, "ema.start_step": 1,
        "ema.decay": 0.9, "train.out_dir": str(out_dir),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_cfg(tmp_path) -> Config:
    return load_config(None, tiny_overrides(tmp_path / "run"))


def png_bytes(value: int) -> bytes:
    """A flat 8x8 RGB PNG of grey level `value`."""
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]],
              fmt: int = tarfile.USTAR_FORMAT) -> None:
    """A tar of `key.ext` members, written by hand so tests can put anything in it."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_pack(out: Path, shards: list[list[tuple[str, dict[str, bytes]]]], classes: int = 3) -> None:
    """A shard directory with a matching dataset.json (8 px, `classes` classes)."""
    out.mkdir(parents=True)
    entries = []
    for i, samples in enumerate(shards):
        path = out / f"shard-{i:06d}.tar"
        write_tar(path, samples)
        raw = path.read_bytes()
        entries.append({"name": path.name, "num_samples": len(samples), "bytes": len(raw),
                        "sha256": hashlib.sha256(raw).hexdigest()})
    index = {"format": "bigan-shards", "version": 1, "resolution": 8, "image_format": "png",
             "num_samples": sum(e["num_samples"] for e in entries),
             "class_names": [str(k) for k in range(classes)], "class_counts": [0] * classes,
             "shards": entries, "source": {"kind": "test"}}
    (out / "dataset.json").write_text(json.dumps(index))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The checkpoint of a one-step tiny BigGAN run (4 classes, 32 px, dim_z 16), made once per
    test session (~5 s)."""
    from bigan.train.trainer import train

    run = tmp_path_factory.mktemp("tiny-checkpoint") / "run"
    return train(load_config(None, tiny_overrides(run, **{"train.steps": 1}))).last_checkpoint


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    """`tiny_checkpoint`'s EMA generator exported by `bigan export` to `.../model.onnx`, made once
    per test session (~15 s); skips where onnxruntime is not installed."""
    pytest.importorskip("onnxruntime")
    from bigan.export.onnx import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("tiny-onnx") / "model.onnx").path


@pytest.fixture(scope="session")
def tiny_eval_shards(tmp_path_factory) -> Path:
    """240 procedural 32 px images of 4 classes (the tiny checkpoint's classes) as PNG shards."""
    from bigan.data.shards import make_synthetic

    out = tmp_path_factory.mktemp("tiny-eval-shards") / "shards"
    make_synthetic(out, classes=4, resolution=32, n=240, min_shards=4)
    return out


@pytest.fixture(scope="session")
def tiny_classifier(tiny_eval_shards, tmp_path_factory) -> Path:
    """A width-4 domain classifier trained for 2 epochs on `tiny_eval_shards` (~2 s)."""
    from bigan.eval.classifier import train_classifier

    out = tmp_path_factory.mktemp("tiny-classifier") / "clf.safetensors"
    train_classifier(tiny_eval_shards, out, epochs=2, width=4, batch_size=32, log=lambda s: None)
    return out
