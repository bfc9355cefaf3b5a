"""Model registry: `MODELS[arch]` (the module), `build(cfg) -> (G, D)` and `build_generator(cfg)`.

Every pair honours one contract, which the trainer, the sampler and the ONNX exporter rely on:
`G(z: float [N, dim_z], y: long [N])` returns images [N, img_channels, res, res] in [-1, 1] (the
mlp pair: points [N, data_dim]); `D(x, y: long [N])` returns logits [N]; G carries `dim_z` and
`num_classes`; in eval mode each output depends only on its own inputs. Models know nothing of
losses, devices, processes or files.
"""

from __future__ import annotations

from types import ModuleType

from torch import nn

from bigan.config import ModelConfig
from bigan.models import biggan, biggan_deep, dcgan, mlp, progan, projected

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
    return G, (projected if cfg.d_arch == "projected" else module).Discriminator(cfg)


def build_generator(cfg: ModelConfig) -> nn.Module:
    """G alone, for loading weights into (sampling, export, import): D of a released 128 px
    BigGAN is another 88M parameters nobody reads. The same G as build()'s for the same RNG."""
    return _module(cfg).Generator(cfg)
