"""The inputs of one GAN iteration (bigan.train.batches): which classes G's samples get."""

from __future__ import annotations

import pytest
import torch

from bigan.config import load_config
from bigan.train.batches import draw_batches
from tests.helpers import tiny_overrides

pytestmark = pytest.mark.unit


class CountingFeed:
    """Real batches whose labels count up (0, 1, 2, ... mod 4): never the random fake classes."""

    def __init__(self):
        self.position = 0

    def next(self, n: int):
        y = (torch.arange(self.position, self.position + n) % 4).long()
        self.position += n
        return torch.zeros(n, 3, 32, 32, dtype=torch.uint8), y


def _draw(tmp_path, kind: str, **overrides):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"loss.kind": kind, **overrides}))
    return draw_batches(cfg, CountingFeed(), lambda x: x, step=3, batch_size=8, rank=0, world=1,
                        device=torch.device("cpu"))


def test_relativistic_pairs_give_each_fake_its_real_partners_class(tmp_path):
    """RpGAN scores D(G(z_i), y_i) - D(x_i, y_i): sample i of G gets real sample i's class in every
    D update and in the G update (whose reals are the last D update's), as R3GAN's loop does."""
    d_batches, g_batch = _draw(tmp_path, "rpgan")
    for b in [*d_batches, g_batch]:
        assert torch.equal(b.fake_y, b.real_y)
    assert torch.equal(g_batch.real_y, d_batches[-1].real_y)


def test_other_losses_draw_the_classes_and_the_latents_do_not_move(tmp_path):
    """BigGAN's classes are drawn uniformly, not copied from the reals; and pairing them for RpGAN
    moves no other draw: the latents are the same numbers under both losses."""
    d_hinge, g_hinge = _draw(tmp_path, "hinge")
    d_rp, g_rp = _draw(tmp_path, "rpgan")
    assert not all(torch.equal(b.fake_y, b.real_y) for b in [*d_hinge, g_hinge])
    for a, b in zip([*d_hinge, g_hinge], [*d_rp, g_rp]):
        assert torch.equal(a.z, b.z)


def test_progans_class_grouped_stddev_pairs_the_classes_too(tmp_path):
    """With model.mbstd_groups=class, D pools its statistic per class: each class must have as many
    fakes as reals in every update, or the count alone would tell them apart."""
    overrides = {"model.arch": "progan", "model.resolution": 8, "model.mbstd_groups": "class",
                 "model.fmap_base": 16, "model.fmap_max": 8, "model.attention": "[]"}
    d_batches, g_batch = _draw(tmp_path, "wasserstein", **overrides)
    for b in [*d_batches, g_batch]:
        assert torch.equal(b.fake_y, b.real_y)
