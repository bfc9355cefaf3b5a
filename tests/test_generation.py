"""bigan/generation.py: a sampler's results have the shape of its generator's outputs even when
there are none, and a sampler's kind is that of its type."""

from __future__ import annotations

import numpy as np
import pytest

from bigan import models
from bigan.config import ModelConfig
from bigan.generation import TorchSampler, open_sampler

pytestmark = pytest.mark.unit


def _grey_dcgan():
    return models.build_generator(ModelConfig(arch="dcgan", resolution=32, ch=4, num_classes=2,
                                              dim_z=8, img_channels=1))


def _points_mlp():
    return models.build_generator(ModelConfig(arch="mlp", num_classes=2, dim_z=4, data_dim=3))


def _progan_at_8px():
    G = models.build_generator(ModelConfig(arch="progan", resolution=32, num_classes=2, dim_z=8,
                                           fmap_base=64, fmap_max=8))
    G.set_phase(8, 1.0)  # the trainer's EMA copy during the 8 px phase draws 8 px images
    return G


@pytest.mark.parametrize("build, one", [(_grey_dcgan, (1, 32, 32)), (_points_mlp, (3,)),
                                        (_progan_at_8px, (3, 8, 8))],
                         ids=["1-channel", "points", "progan-phase"])
def test_no_samples_have_the_shape_of_some(build, one):
    sampler = TorchSampler(build())
    assert sampler.images([0, 1], [5, 6]).shape == (2, *one)
    empty = sampler.images([], [])
    assert empty.shape == (0, *one) and empty.dtype == np.float32


def test_a_checkpoint_sampler_is_of_the_kind_its_type_says(tiny_checkpoint):
    sampler = open_sampler(tiny_checkpoint)
    assert type(sampler).kind == "checkpoint" and "kind" not in vars(sampler)  # set by no one
    assert sampler.describe()["kind"] == "checkpoint" and TorchSampler.kind == "torch"
    assert sampler.images([], []).shape == (0, 3, 32, 32)


def test_an_onnx_sampler_takes_its_empty_shape_from_the_metadata(tiny_onnx):
    sampler = open_sampler(tiny_onnx)
    assert sampler.kind == "onnx" and sampler.meta.channels == 3
    assert sampler.images([], []).shape == (0, *sampler.images([1], [2]).shape[1:]) == (0, 3, 32, 32)
