"""Model registry: `MODELS[arch]` (the module), `build(cfg) -> (G, D)`, `build_generator(cfg)`
and `on_meta()`, where a build costs no memory and no arithmetic.

Every pair honours one contract, which the trainer, the sampler and the ONNX exporter rely on:
`G(z: float [N, dim_z], y: long [N])` returns images [N, img_channels, res, res] in [-1, 1] (the
mlp pair: points [N, data_dim]); `D(x, y: long [N])` returns logits [N] (an ensemble of K
discriminators, `bigan/models/ensemble.py`: [N, K], one column per member; a D judging patches,
`model.projected_per_patch`: [N, K, P]); G carries `dim_z` and
`num_classes`; in eval mode each output depends only on its own inputs. Models know nothing of
losses, devices, processes or files.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

import torch
from torch import nn

from bigan.config import ModelConfig
from bigan.models import biggan, biggan_deep, dcgan, ensemble, mlp, progan, projected

# arch -> the module holding its Generator and Discriminator classes (both take a ModelConfig).
MODELS: dict[str, ModuleType] = {
    "biggan": biggan,
    "biggan-deep": biggan_deep,
    "dcgan": dcgan,
    "mlp": mlp,
    "progan": progan,  # built at the final phase (model.resolution, alpha 1); see set_phase
}


def _module(cfg: ModelConfig) -> ModuleType:
    module = MODELS.get(cfg.arch)
    if module is None:
        raise ValueError(f"unknown model arch {cfg.arch!r}; choose one of {', '.join(MODELS)}")
    return module


def build(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """Build the (G, D) pair for `cfg.arch`, freshly initialised from torch's global RNG."""
    module = _module(cfg)
    G = module.Generator(cfg)
    if cfg.d_arch == "native":
        return G, module.Discriminator(cfg)
    if cfg.d_arch == "projected":
        return G, projected.Discriminator(cfg)
    return G, ensemble.Ensemble([module.Discriminator(cfg), projected.Discriminator(cfg)])


def build_generator(cfg: ModelConfig) -> nn.Module:
    """G alone, for loading weights into (sampling, export, import): D of a released 128 px
    BigGAN is another 88M parameters nobody reads. The same G as build()'s for the same RNG."""
    return _module(cfg).Generator(cfg)


@contextmanager
def on_meta() -> Iterator[None]:
    """Build on the meta device (shapes only, for checks and plans), without spectral norm's 15
    start-up power iterations on meta weights: they change no shape, and on meta tensors each
    op runs through torch's Python reference code (measured: 70 s of BigGAN-128's 90 s build;
    2.4 s against 0.24 s for the tiny test BigGAN). Weights on a real device still iterate, so
    another thread building a real model meanwhile is unaffected. A torch that renamed the
    private method builds the slow way."""
    from torch.nn.utils import parametrizations

    cls = getattr(parametrizations, "_SpectralNorm", None)
    original = getattr(cls, "_power_method", None)

    def power_method(self, weight_mat: torch.Tensor, n_power_iterations: int) -> None:
        if not weight_mat.is_meta:
            original(self, weight_mat, n_power_iterations)

    if original is not None:
        cls._power_method = power_method
    try:
        with torch.device("meta"):
            yield
    finally:
        if original is not None:
            cls._power_method = original
