"""What tests build by hand: the tiny BigGAN config that trains in a second on CPU, flat PNGs, and
tar shards written member by member, plus the paths of the repository's own files. Plain functions
imported by the tests that need them (`from tests.helpers import ...`); the fixtures built on
them stay in conftest.py, which pytest loads by itself and nothing imports."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]  # the checkout: tests open its files from any cwd
CONFIGS = ROOT / "configs"


def steps_kimg(steps: int, batch: int = 8, d_steps: int = 2) -> float:
    """`steps` G steps in kimg, the unit of every cadence (bigan/config/units.py): each step
    shows batch x d_steps real images (tiny_overrides' defaults: 16)."""
    return steps * batch * d_steps / 1000


# tiny_overrides' cadences and EMA start, in G steps; turned into kimg at the config's batch.
_TINY_STEPS = {"train.log_every_kimg": 2, "train.sample_every_kimg": 4,
               "train.ckpt_every_kimg": 2, "ema.start_kimg": 1}


def tiny_overrides(out_dir, **extra) -> list[str]:
    """A BigGAN at 32 px with width 8 on 4 synthetic classes: ~0.1 s per step on one core.
    Cadences not in `extra` are 2 steps (log, checkpoint), 4 (grid), EMA from step 1, at
    whatever batch and D steps `extra` sets."""
    base = {
        "model.arch": "biggan", "model.resolution": 32, "model.num_classes": 4, "model.ch": 8,
        "model.d_ch": 8, "model.dim_z": 16, "model.shared_dim": 8, "model.attention": "[16]",
        "data.source": "synthetic", "data.num_samples": 64, "train.batch_size": 8,
        "train.steps": 4, "train.grid_per_class": 2, "optim.d_steps": 2,
        "ema.decay": 0.9, "train.out_dir": str(out_dir),
    }
    base.update(extra)
    for name, steps in _TINY_STEPS.items():
        base.setdefault(name, steps_kimg(steps, int(base["train.batch_size"]), int(base["optim.d_steps"])))
    return [f"{k}={v}" for k, v in base.items()]


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


# Every metric the in-training evaluator computes (tests/test_train_eval.py, test_ray_eval.py).
EVAL_METRICS = "[fid,kid,precision,recall,class_accuracy,is,intra_fid]"


def eval_run_config(run, shards, classifier, cache, **extra):
    """4 steps of 16 images; evaluation every 32 images (steps 2 and 4) at N = 16."""
    over = {"data.source": "shards", "data.path": str(shards), "data.num_workers": 0,
            "train.keep_ckpts": 1, "train.ckpt_every_kimg": 1.6, "eval.every_kimg": 0.032,
            "eval.n": 16, "eval.metrics": EVAL_METRICS, "eval.extractor": str(classifier),
            "eval.cache_dir": str(cache), "eval.psi": "[null,0.8]", **extra}
    from bigan.config import load_config

    return load_config(None, tiny_overrides(run, **over))


@contextlib.contextmanager
def http_and_grpc(root: Path, **engine):
    """(FastAPI TestClient, tritonclient.grpc client) of one app serving the model folder `root`
    over HTTP and gRPC (`engine`: EngineConfig fields beside max_batch 8)."""
    import tritonclient.grpc as grpcclient
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.core.engine import EngineConfig
    from serving.core.repository import ModelRepository

    repo = ModelRepository.open(root, EngineConfig(**{"max_batch": 8, **engine}))
    with TestClient(create_app(repo, max_images=8, grpc_port=0)) as http:
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{http.app.state.grpc_port}")
        try:
            yield http, grpc
        finally:
            grpc.close()
