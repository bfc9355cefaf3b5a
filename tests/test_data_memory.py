"""The embedded data sets and the order keyed by global sample position."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bigan.config import load_config
from bigan.data import synthetic
from bigan.data.memory import ArraySet, IndexedSampler, build_dataset
from tests.helpers import CONFIGS

pytestmark = pytest.mark.unit


def test_digits_are_the_real_sklearn_digits():
    images, labels = synthetic.digits(32, channels=3)
    assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist()[:3] == [178, 182, 177]
    # Strokes are bright on dark: the border is background, the centre has ink.
    assert images[:, 0, :, :].mean() < 5 and images[:, 12:20, 12:20].mean() > 40


@pytest.mark.parametrize("res", [8, 32, 256])
def test_synthetic_any_resolution_classes_distinct_and_reproducible(res):
    a, ya = synthetic.synthetic(40, num_classes=8, resolution=res, seed=3)
    b, yb = synthetic.synthetic(40, num_classes=8, resolution=res, seed=3)
    assert a.shape == (40, res, res, 3) and np.array_equal(a, b) and np.array_equal(ya, yb)
    assert set(ya.tolist()) == set(range(8))
    # Class means differ far more than images within a class vary in colour.
    means = np.stack([a[ya == k].reshape(-1, 3).mean(0) for k in range(8)])
    assert np.min([np.abs(means[i] - means[j]).max() for i in range(8) for j in range(i)]) > 5


@pytest.mark.parametrize("kind, modes, std", [("ring", 8, 0.01), ("grid", 25, 0.05)])
def test_gaussian_mixtures_match_pacgan(kind, modes, std):
    pts, mode, means, s = synthetic.gaussian_mixture(kind, 20000, seed=0)
    assert len(means) == modes and s == std
    resid = pts - means[mode]
    np.testing.assert_allclose(resid.std(0), [std, std], rtol=0.05)
    assert np.bincount(mode, minlength=modes).min() > 20000 / modes * 0.8


def _sampler(n=10, flip=False):
    data = ArraySet(np.arange(n, dtype=np.float32)[:, None], np.arange(n), ["x"])
    return IndexedSampler(data, seed=5, flip=flip)


def test_each_epoch_is_a_permutation_and_order_depends_only_on_position():
    s = _sampler()
    idx = s.indices(0, 30)
    for e in range(3):
        assert sorted(idx[e * 10:(e + 1) * 10].tolist()) == list(range(10))
    assert not np.array_equal(idx[:10], idx[10:20])  # a fresh shuffle per epoch
    np.testing.assert_array_equal(_sampler().indices(17, 6), idx[17:23])  # random access = resume


def test_world_size_only_splits_the_global_batch():
    one = _sampler().batch(4, global_batch=8)[0]
    two = torch.cat([_sampler().batch(4, 8, rank=r, world_size=2)[0] for r in range(2)])
    torch.testing.assert_close(one, two)


def test_images_are_scaled_to_minus_one_one_and_flips_are_reproducible():
    cfg = load_config(CONFIGS / "demo.yaml", ["data.source=digits", "data.flip=true"])
    data = build_dataset(cfg)
    x, y = IndexedSampler(data, seed=0, flip=True).batch(0, 16)
    assert x.shape == (16, 3, 32, 32) and x.min() >= -1 and x.max() <= 1 and y.dtype == torch.int64
    x2, _ = IndexedSampler(data, seed=0, flip=True).batch(0, 16)
    torch.testing.assert_close(x, x2)
    plain, _ = IndexedSampler(data, seed=0, flip=False).batch(0, 16)
    flipped = [not torch.equal(a, b) for a, b in zip(x, plain)]
    assert 0 < sum(flipped) < 16


def test_rank_data_positions_merge_into_one_job_position():
    from bigan.data.feed import merge_states

    a = {"kind": "shards", "skipped": {"not_image": 1},
         "position": {"shard_sizes": [3, 3], "seed": 0, "shuffle_buffer": 0, "complete_epochs": 0,
                      "epochs": {"0": {"0": 2}}}}
    b = {"kind": "shards", "skipped": {"not_image": 2, "bad_label": 1},
         "position": {**a["position"], "epochs": {"0": {"1": 3}}}}
    merged = merge_states([a, b])
    assert merged["position"]["epochs"] == {"0": {"0": 2, "1": 3}}
    assert merged["skipped"] == {"bad_label": 1, "not_image": 3}
    mem = {"kind": "memory", "position": 64}
    assert merge_states([mem, mem]) == mem
