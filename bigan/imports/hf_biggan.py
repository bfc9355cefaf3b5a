"""huggingface pytorch-pretrained-BigGAN (TF-Hub BigGAN-deep 128/256/512) as a bigan checkpoint.

`convert(src_dir, out_dir)` reads `src_dir/pytorch_model.bin` (with `torch.load(weights_only=True)`:
a file that needs pickled code is refused with torch's reason) and `src_dir/config.json`, and
writes `out_dir/checkpoints/step-00000000/` holding the generator as the EMA weights of a
`model.arch=biggan-deep` config, which `bigan sample`, `export`, `eval` and (after export) `serve`
take like a training run, with ImageNet-1k's class names for a 1,000-class model (TF-Hub's
are ImageNet's; `class_names.py`) unless others are given. What the package's layout needs,
and how it is carried over exactly:

- cond = [z, class embedding] there, [embedding, z] here: the input columns of `gen_z` and of every
  conditional batch norm's scale/offset are permuted, with their spectral-norm vector v (sigma =
  u^T W v is unchanged by a permutation of W's columns applied to v as well);
- the embedding is a bias-free `Linear(num_classes, z_dim)` over one-hot vectors: its transpose
  is the `shared` embedding table (shared_dim = z_dim);
- `gen_z`'s output is read as [N, 4, 4, C] (TF layout): its rows (and u) are permuted to
  [N, C, 4, 4];
- `weight_orig` / `weight_u` / `weight_v` (the old `nn.utils.spectral_norm`) become the
  parametrization's `original` / `_u` / `_v`: in eval mode both compute W / (u^T W v);
- the batch-norm statistics, one set per truncation value (`n_stats`), stay as they are
  (`model.psi_stats`; `psi_stat_weights` follows the package's lookup, except that a psi on
  the grid always picks its own set, where the package's float64 arithmetic picks a neighbour
  at psi = 0.14, 0.28, 0.56, 0.58 and 0.94), eps = config `eps`;
- the output conv has `channel_width` channels, sliced to RGB (`model.out_conv_channels`);
- z is drawn as the package and TF-Hub draw it (`Z_SAMPLING`, "tfhub-scaled": psi *
  truncnorm(-2, 2) from `np.random.RandomState(seed)`, `bigan.sampling.tfhub_scaled`), recorded
  as the manifest's `z_sampling` and from there in the export's metadata, so `bigan sample
  --seed S --truncation PSI` and the server give the package's image of
  `truncated_noise_sample(1, dim_z, PSI, S)`; `bigan import hf-biggan --z-sampling resample`
  keeps bigan's own convention instead.

A key missing, unexpected or of the wrong shape raises `ImportFileError` naming the first such key
and both shapes; nothing is written then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from bigan.config import BIGGAN_G_WIDTHS, ConfigError, ModelConfig
from bigan.imports.class_names import class_names_for
from bigan.imports.common import (ImportFileError, ImportReport, file_sha256, read_state_dict,
                                  write_checkpoint)
from bigan.onnx_metadata import Z_SAMPLINGS

WEIGHTS, CONFIG = "pytorch_model.bin", "config.json"
Z_SAMPLING = "tfhub-scaled"  # the package's and TF-Hub's z: the same image for the same seed
_SN = {"weight_orig": "parametrizations.weight.original",
       "weight_u": "parametrizations.weight.0._u", "weight_v": "parametrizations.weight.0._v"}
_ATTENTION = {"snconv1x1_theta": "theta", "snconv1x1_phi": "phi", "snconv1x1_g": "g",
              "snconv1x1_o_conv": "o"}


def convert(src_dir: str | Path, out_dir: str | Path, z_sampling: str = Z_SAMPLING,
            class_names: Sequence[str] | None = None) -> ImportReport:
    """Write the BigGAN-deep in `src_dir` as a bigan checkpoint under `out_dir`, drawing z by
    `z_sampling` (`bigan.onnx_metadata.Z_SAMPLINGS`), with `class_names` (one per class; None:
    ImageNet-1k's for 1,000 classes, as TF-Hub's are, else the ids). Raises ImportFileError (or
    FileNotFoundError) before writing anything."""
    if z_sampling not in Z_SAMPLINGS:
        raise ImportFileError(f"z_sampling={z_sampling!r} must be one of {', '.join(Z_SAMPLINGS)}")
    src = Path(src_dir)
    hf = read_config(src / CONFIG)
    model_cfg = model_config(hf, src / CONFIG)
    names = class_names_for(model_cfg.num_classes, class_names)  # before reading the weights
    if not (src / WEIGHTS).is_file():
        raise FileNotFoundError(f"{src / WEIGHTS} does not exist: pytorch-pretrained-BigGAN "
                                f"weights come as a directory holding {WEIGHTS} and {CONFIG}")
    state = read_state_dict(src / WEIGHTS)
    G = convert_state_dict(state, model_cfg, src / WEIGHTS)
    source = {"format": "hf-biggan", "file": str(src / WEIGHTS),
              "sha256": file_sha256(src / WEIGHTS), "config": hf}
    step = write_checkpoint(Path(out_dir), model_cfg, G.state_dict(), names, source, z_sampling)
    return ImportReport(step, src / WEIGHTS, model_cfg, sum(p.numel() for p in G.parameters()),
                        names)


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict with the fields the conversion reads (BigGANConfig's names)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pytorch-pretrained-BigGAN weights come as "
                                f"a directory holding {WEIGHTS} and {CONFIG}")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImportFileError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise ImportFileError(f"{path} must hold a JSON object (BigGANConfig's fields)")
    for key in ("output_dim", "z_dim", "channel_width", "num_classes", "layers",
                "attention_layer_position", "eps", "n_stats"):
        if key not in hf:
            raise ImportFileError(f"{path} has no {key!r}: not a pytorch-pretrained-BigGAN config")
    return hf


def model_config(hf: dict[str, Any], path: Path) -> ModelConfig:
    """The biggan-deep ModelConfig that holds the model `hf` (config.json) describes: its `layers`
    must be the pairs (no upsampling, w -> w), (upsampling, w -> w') of BigGAN's width table."""
    res, ch = hf["output_dim"], hf["channel_width"]
    if res not in BIGGAN_G_WIDTHS:
        raise ImportFileError(f"{path}: output_dim={res!r} is not a BigGAN-deep resolution "
                              f"({', '.join(map(str, BIGGAN_G_WIDTHS))})")
    widths = BIGGAN_G_WIDTHS[res]
    if (widths[0], widths[-1]) != (16, 1):
        # The package's gen_z always outputs 4 x 4 x 16 * channel_width, its output batch norm
        # always has channel_width channels: only 128, 256 and 512 px fit (TF-Hub's three).
        raise ImportFileError(f"{path}: output_dim={res} has no BigGAN-deep layout in "
                              "pytorch-pretrained-BigGAN (its blocks go from 16 to 1 times "
                              f"channel_width; BigGAN's {res} px ones from {widths[0]} to "
                              f"{widths[-1]})")
    expected = [tuple(x) for i in range(len(widths) - 1)
                for x in ((False, widths[i], widths[i]), (True, widths[i], widths[i + 1]))]
    found = [tuple(x) if isinstance(x, (list, tuple)) else x for x in hf["layers"]]
    if found != expected:
        raise ImportFileError(f"{path}: layers={hf['layers']!r} is not the BigGAN-deep layout at "
                              f"{res} px, {expected!r} (up-sample?, in, out per block)")
    position = hf["attention_layer_position"]
    if not isinstance(position, int) or position % 2 or not 2 <= position < len(expected):
        raise ImportFileError(f"{path}: attention_layer_position={position!r} must be an even "
                              f"block index in 2..{len(expected) - 2} (attention after a pair of "
                              "blocks)")
    try:
        cfg = ModelConfig(
            arch="biggan-deep", resolution=res, num_classes=hf["num_classes"], dim_z=hf["z_dim"],
            shared_dim=hf["z_dim"], ch=ch,
            d_ch=4,  # no discriminator was released; the one every build makes is kept tiny
            attention=[BOTTOM_SIDE * 2 ** (position // 2)], bn_eps=float(hf["eps"]),
            sn_eps=float(hf["eps"]), psi_stats=hf["n_stats"], out_conv_channels=ch)
        cfg.validate()
    except (ConfigError, TypeError) as e:
        raise ImportFileError(f"{path}: {e}") from e
    return cfg


BOTTOM_SIDE = 4  # G's first feature map is 4x4 (biggan_deep.BOTTOM)


def _permutations(cfg: ModelConfig) -> tuple[Tensor, Tensor]:
    """(cond, gen_z rows): index tensors taking the package's order to ours.
    cond: our column j of [embedding, z] is the package's column perm[j] of [z, embedding].
    rows: our output o = c * 16 + p (p = h * 4 + w) is the package's p * C + c."""
    e, z = cfg.shared_dim, cfg.dim_z
    cond = torch.cat([torch.arange(z, z + e), torch.arange(z)])
    c0 = BIGGAN_G_WIDTHS[cfg.resolution][0] * cfg.ch
    side2 = BOTTOM_SIDE * BOTTOM_SIDE
    rows = (torch.arange(side2)[None, :] * c0 + torch.arange(c0)[:, None]).reshape(-1)
    return cond, rows


def key_map(cfg: ModelConfig) -> list[tuple[str, str, Callable[[Tensor], Tensor]]]:
    """(package key, our key, transform) for every tensor of the generator, in the model's order."""
    cond, rows = _permutations(cfg)
    same = lambda t: t  # noqa: E731
    out: list[tuple[str, str, Callable[[Tensor], Tensor]]] = [
        ("embeddings.weight", "shared.weight", lambda t: t.t()),
        ("generator.gen_z.weight_orig", "linear.parametrizations.weight.original",
         lambda t: t[rows][:, cond]),
        ("generator.gen_z.weight_u", "linear.parametrizations.weight.0._u", lambda t: t[rows]),
        ("generator.gen_z.weight_v", "linear.parametrizations.weight.0._v", lambda t: t[cond]),
        ("generator.gen_z.bias", "linear.bias", lambda t: t[rows])]

    def sn(src: str, dst: str, cond_input: bool = False, bias: bool = True) -> None:
        for a, b in _SN.items():
            f = same
            if cond_input and a == "weight_orig":
                f = lambda t: t[:, cond]  # noqa: E731
            elif cond_input and a == "weight_v":
                f = lambda t: t[cond]  # noqa: E731
            out.append((f"{src}.{a}", f"{dst}.{b}", f))
        if bias:
            out.append((f"{src}.bias", f"{dst}.bias", same))

    n_pairs = len(BIGGAN_G_WIDTHS[cfg.resolution]) - 1
    attention_at = int(cfg.attention[0]).bit_length() - 3  # 4 * 2^k px after pair k - 1
    layer = 0
    for block in range(2 * n_pairs):
        if block == 2 * attention_at:
            for a, b in _ATTENTION.items():
                sn(f"generator.layers.{layer}.{a}", f"attention.{cfg.attention[0]}.{b}", bias=False)
            out.append((f"generator.layers.{layer}.gamma", f"attention.{cfg.attention[0]}.gamma",
                        lambda t: t.reshape(())))
            layer += 1
        for k in range(4):
            src, dst = f"generator.layers.{layer}", f"blocks.{block}"
            out.append((f"{src}.bn_{k}.running_means", f"{dst}.bn{k + 1}.bn.running_means", same))
            out.append((f"{src}.bn_{k}.running_vars", f"{dst}.bn{k + 1}.bn.running_vars", same))
            sn(f"{src}.bn_{k}.scale", f"{dst}.bn{k + 1}.gain", cond_input=True, bias=False)
            sn(f"{src}.bn_{k}.offset", f"{dst}.bn{k + 1}.bias", cond_input=True, bias=False)
            sn(f"{src}.conv_{k}", f"{dst}.conv{k + 1}")
        layer += 1
    for name in ("running_means", "running_vars", "weight", "bias"):
        out.append((f"generator.bn.{name}", f"out_bn.{name}", same))
    sn("generator.conv_to_rgb", "out_conv")
    return out


def convert_state_dict(state: dict[str, Tensor], cfg: ModelConfig, path: Path) -> torch.nn.Module:
    """Our generator holding the package's state dict `state`; ImportFileError names the first
    key that is missing, unexpected or of another shape than `cfg` (from config.json) implies."""
    from bigan import models

    with torch.random.fork_rng(devices=[]):
        G = models.build_generator(cfg)
    ours = G.state_dict()
    mapping = key_map(cfg)
    mapped = {dst for _, dst, _ in mapping}
    if mapped != set(ours):  # a bug here, not in the file
        raise AssertionError(f"hf_biggan key map misses {sorted(set(ours) - mapped)[:3]}")
    result = {}
    for src, dst, transform in mapping:
        want = list(ours[dst].shape)
        if src == "embeddings.weight":
            want = want[::-1]
        elif src.endswith(".gamma"):
            want = [1]
        if src not in state:
            raise ImportFileError(f"{path} has no key {src!r} (expected shape {want}, from "
                                  f"{CONFIG}); is it a BigGAN-deep of this config?")
        if list(state[src].shape) != want:
            raise ImportFileError(f"{path}: key {src!r} has shape {list(state[src].shape)}, but "
                                  f"{CONFIG} implies {want}; the weights and config do not match")
        result[dst] = transform(state[src].float()).contiguous().clone()
    extra = [k for k in state if k not in {s for s, _, _ in mapping}]
    if extra:
        raise ImportFileError(f"{path} has a key {extra[0]!r} "
                              f"(shape {list(state[extra[0]].shape)}) that a BigGAN-deep of "
                              f"{CONFIG}'s layout does not have"
                              + (f" ({len(extra)} such keys)" if len(extra) > 1 else ""))
    G.load_state_dict(result, strict=True)  # the dtypes and the last shapes, checked by torch
    return G
