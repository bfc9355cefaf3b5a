"""Fixtures (tiny configs, checkpoints, ONNX exports and shards that build in seconds on CPU) and
the rules on test groups: every test carries exactly one group marker of GROUPS, or collection
fails naming it; tests marked `gpu` are skipped, with the reason, where CUDA is not available.
The functions tests call themselves live in tests/helpers.py; nothing imports this file."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from bigan.config import Config, load_config
from tests.helpers import tiny_overrides

# What a test needs to run, one marker each (described in pyproject.toml and tests/README.md):
# `pytest -m unit` is the quick loop, `-m dist` / `-m ray` / `-m serving` / `-m e2e` the rest.
GROUPS = ("unit", "dist", "ray", "serving", "e2e")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: an unmarked test must not slip through
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        groups = sorted({m.name for m in item.iter_markers()} & set(GROUPS))
        if len(groups) != 1:
            wrong.append(f"  {item.nodeid}: {', '.join(groups) if groups else 'no group marker'}")
    if wrong:
        raise pytest.UsageError(
            f"every test needs exactly one group marker of {', '.join(GROUPS)}; set "
            "`pytestmark = pytest.mark.unit` (or another group) at module level, or mark the test "
            "itself where a module mixes groups (tests/README.md):\n" + "\n".join(wrong))
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu); torch.cuda.is_available() "
                                           "is False here")
            for item in gpu_tests:
                item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_dir(tmp_path_factory):
    """Real-feature caches and Inception ONNX copies go to a temporary directory, never into
    the user's ~/.cache (tests build throwaway networks whose copies would pile up there)."""
    old = os.environ.get("BIGAN_CACHE_DIR")
    os.environ["BIGAN_CACHE_DIR"] = str(tmp_path_factory.mktemp("bigan-cache"))
    yield
    if old is None:
        os.environ.pop("BIGAN_CACHE_DIR", None)
    else:
        os.environ["BIGAN_CACHE_DIR"] = old


@pytest.fixture
def tiny_cfg(tmp_path) -> Config:
    return load_config(None, tiny_overrides(tmp_path / "run"))


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
