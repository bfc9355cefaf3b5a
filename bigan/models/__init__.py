"""Model registry: `MODELS[arch](cfg) -> (G, D)` and `build(cfg)`.

Every pair honours one contract, which the trainer, the sampler and the ONNX exporter rely on:
`G(z: float [N, dim_z], y: long [N])` returns images [N, img_channels, res, res] in [-1, 1] (the
mlp pair: points [N, data_dim]); `D(x, y: long [N])` returns logits [N]; G carries `dim_z` and
`num_classes`; in eval mode each output depends only on its own inputs. Models know nothing of
losses, devices, processes or files.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from bigan.config import ModelConfig
from bigan.models import biggan, biggan_deep, dcgan, mlp, progan

Builder = Callable[[ModelConfig], tuple[nn.Module, nn.Module]]


def build_biggan(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    return biggan.Generator(cfg), biggan.Discriminator(cfg)


def build_biggan_deep(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    return biggan_deep.Generator(cfg), biggan_deep.Discriminator(cfg)


def build_dcgan(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    return dcgan.Generator(cfg), dcgan.Discriminator(cfg)


def build_mlp(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    return mlp.Generator(cfg), mlp.Discriminator(cfg)


def build_progan(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """At the final phase (model.resolution, alpha 1); the trainer moves both with set_phase."""
    return progan.Generator(cfg), progan.Discriminator(cfg)


MODELS: dict[str, Builder] = {
    "biggan": build_biggan,
    "biggan-deep": build_biggan_deep,
    "dcgan": build_dcgan,
    "mlp": build_mlp,
    "progan": build_progan,
}


def build(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """Build the (G, D) pair for `cfg.arch`, freshly initialised from torch's global RNG."""
    builder = MODELS.get(cfg.arch)
    if builder is None:
        raise ValueError(f"unknown model arch {cfg.arch!r}; choose one of {', '.join(MODELS)}")
    return builder(cfg)
