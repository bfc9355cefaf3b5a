"""BigGAN-PyTorch generator weights (ajbrock/BigGAN-PyTorch `BigGAN.py`, e.g. the released
ImageNet-128 `G_ema.pth`) as a bigan `model.arch=biggan` checkpoint.

Their G and ours are the same network under other names; what differs is translated here:

- Keys: their `blocks.i.0.*` (the residual block) and `blocks.i.1.*` (the attention after it)
  are our `blocks.i.*` and `attention.<side>.*`; their output `output_layer.0` (batch norm with
  `gain`/`bias`) and `.2` (conv) are our `out_bn`/`out_conv`; their `stored_mean`/`stored_var`
  are our batch-norm `running_mean`/`running_var`.
- Spectral norm: they keep `weight`, `u0` (and `sv0`, a logged value only) and in eval mode run
  one power-iteration step from `u0` without storing it: v = normalize(u0 W),
  u = normalize(v W^T), sigma = v W^T u^T (Miyato et al. 2018, Alg. 1). Ours
  (torch.nn.utils.parametrizations.spectral_norm) divides by sigma = u^T W v from stored u, v in
  eval mode, so importing stores exactly that step's u and v, and both divide by the same sigma.
- Settings the file does not hold are inferred from its shapes: resolution (number of blocks),
  ch, classes, shared_dim, attention sides, hierarchical z (their dim_z is a multiple of the
  number of z chunks: they drop the remainder), spectral norm (`u0` present). Their batch-norm
  epsilon (`BN_eps`, 1e-5 in all their launch scripts) is not in the weights: pass it. Their
  output batch norm always uses 1e-5, whatever BN_eps (`layers.bn`'s default), hence
  `model.out_bn_eps`.

Their training-state file (`state_dict.pth`) holds pickled `nn.ReLU` objects and is never read;
G_shared=False generators (per-block class embeddings) are refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from bigan.config import BIGGAN_G_WIDTHS, ModelConfig
from bigan.imports.class_names import class_names_for
from bigan.imports.common import (ImportFileError, ImportReport, check_tensors, file_sha256,
                                  read_state_dict, shape, write_checkpoint)

FORMAT = "biggan-pytorch"
# Files of a BigGAN-PyTorch weights folder, in the order a directory SRC is searched.
GENERATOR_FILES = ("G_ema.pth", "G.pth")
OUT_BN_EPS = 1e-5  # BigGAN-PyTorch layers.bn's default, used by G's output layer
NORMALIZE_EPS = 1e-12  # F.normalize's eps in their power iteration (below any real |u W|)
BOTTOM = 4  # their bottom_width


def find_generator_file(src: str | Path) -> Path:
    """`src` itself when a file; in a directory, G_ema.pth (the EMA weights) else G.pth."""
    src = Path(src)
    if src.is_dir():
        for name in GENERATOR_FILES:
            if (src / name).is_file():
                return src / name
        held = ", ".join(sorted(p.name for p in src.iterdir())[:8]) or "nothing"
        raise ImportFileError(f"{src} holds no {' or '.join(GENERATOR_FILES)} (it holds {held}); "
                              "pass the generator's weights file")
    if not src.exists():
        raise FileNotFoundError(f"{str(src)!r} does not exist: pass BigGAN-PyTorch's G_ema.pth "
                                "or its weights directory")
    return src


def infer_model_config(state: dict[str, torch.Tensor], source: str | Path,
                       bn_eps: float = 1e-5) -> ModelConfig:
    """Our biggan settings that reproduce the BigGAN-PyTorch G whose state dict is `state`."""
    _require_generator(state, source)
    n_blocks = sum(1 for k in state if re.fullmatch(r"blocks\.\d+\.0\.conv1\.weight", k))
    resolution = BOTTOM * 2 ** n_blocks
    if resolution not in BIGGAN_G_WIDTHS:
        raise ImportFileError(f"{source}: {n_blocks} generator blocks make {resolution}px, which "
                              f"biggan has no table for ({', '.join(map(str, BIGGAN_G_WIDTHS))})")
    first_in = state["blocks.0.0.conv1.weight"].shape[1]
    ch, rest = divmod(first_in, BIGGAN_G_WIDTHS[resolution][0])
    if rest or ch == 0:
        raise ImportFileError(f"{source}: blocks.0.0.conv1.weight has {first_in} input channels, "
                              f"not a multiple of {BIGGAN_G_WIDTHS[resolution][0]} as a "
                              f"{resolution}px G_arch has")
    num_classes, shared_dim = shape(state["shared.weight"])
    cond_in = state["blocks.0.0.bn1.gain.weight"].shape[1]
    linear_in = state["linear.weight"].shape[1]
    hier = cond_in > shared_dim
    # Hierarchical: one chunk of z for the linear layer and one per block, all the same size.
    dim_z = linear_in * (n_blocks + 1) if hier else linear_in
    attention = [BOTTOM * 2 ** (i + 1) for i in range(n_blocks)
                 if f"blocks.{i}.1.theta.weight" in state]
    return ModelConfig(
        arch="biggan", resolution=resolution, img_channels=state["output_layer.2.weight"].shape[0],
        num_classes=num_classes, dim_z=dim_z, shared_dim=shared_dim, ch=ch,
        # D is not imported; it is built beside G on load, so its attention needs >= 8 channels.
        d_ch=max(ch, 8),
        attention=attention, hier=hier, spectral_norm="linear.u0" in state, bn_eps=bn_eps,
        out_bn_eps=OUT_BN_EPS)


def _require_generator(state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Name what the file is when it is not a BigGAN-PyTorch G with a shared embedding."""
    if any(k.startswith("generator.") or k.endswith(".weight_orig") for k in state):
        raise ImportFileError(f"{source} looks like a huggingface pytorch-pretrained-BigGAN model "
                              "(generator.* / weight_orig keys): import it with format hf-biggan")
    if "embed.weight" in state and "output_layer.2.weight" not in state:
        raise ImportFileError(f"{source} looks like a BigGAN-PyTorch discriminator (D.pth): pass "
                              "the generator, G_ema.pth (EMA weights) or G.pth")
    if "output_layer.2.weight" in state and "shared.weight" not in state:
        raise ImportFileError(f"{source} is a BigGAN-PyTorch G without a shared class embedding "
                              "(trained without --G_shared); only G_shared generators import")
    for key in ("shared.weight", "linear.weight", "blocks.0.0.conv1.weight",
                "blocks.0.0.bn1.gain.weight", "output_layer.2.weight"):
        if key not in state:
            raise ImportFileError(f"{source}: missing key {key!r}; this is not a BigGAN-PyTorch "
                                  "BigGAN.py generator state dict (is the format right?)")


# --- our key -> theirs ----------------------------------------------------------------------------

_MODULES = [  # (our module-path pattern, theirs); first match wins
    (re.compile(r"^blocks\.(\d+)\.(bn[12])\.bn$"), r"blocks.\1.0.\2"),  # stats on the ccbn itself
    (re.compile(r"^blocks\.(\d+)\.(.*)$"), r"blocks.\1.0.\2"),
    (re.compile(r"^out_bn$"), "output_layer.0"),
    (re.compile(r"^out_conv$"), "output_layer.2"),
]
_SN_KEY = re.compile(r"^(.*)\.parametrizations\.weight\.(original|0\._u|0\._v)$")
_LEAVES = {"running_mean": "stored_mean", "running_var": "stored_var"}


def their_module(ours: str, attention_block: dict[str, int]) -> str:
    """Our module path -> BigGAN-PyTorch's (`attention_block`: our side -> their block index)."""
    m = re.match(r"^attention\.(\d+)(\.|$)(.*)$", ours)
    if m:
        return f"blocks.{attention_block[m.group(1)]}.1" + (f".{m.group(3)}" if m.group(3) else "")
    for pattern, repl in _MODULES:
        if pattern.match(ours):
            return pattern.sub(repl, ours)
    return ours


def convert_state(state: dict[str, torch.Tensor], G: torch.nn.Module, source: str | Path,
                  ) -> dict[str, torch.Tensor]:
    """Our state dict for G (a freshly built bigan Generator with the inferred config) from
    their `state`. Raises ImportFileError naming the first missing or mis-shaped key."""
    attention_block = {str(BOTTOM * 2 ** (i + 1)): i for i in range(len(G.blocks))}
    plan: dict[str, tuple[str, str]] = {}   # our key -> (kind, their key)
    expected: dict[str, list[int]] = {}     # their key -> shape
    ours = G.state_dict()
    for key, value in ours.items():
        sn = _SN_KEY.match(key)
        if sn:  # module.parametrizations.weight.original, or .0._u / .0._v
            module, leaf = sn.group(1), sn.group(2)
            theirs = their_module(module, attention_block)
            if leaf == "original":
                plan[key] = ("copy", f"{theirs}.weight")
                expected[f"{theirs}.weight"] = shape(value)
            else:  # from their weight and u0
                plan[key] = (leaf, f"{theirs}.weight")
                out_features = ours[f"{module}.parametrizations.weight.original"].shape[0]
                expected[f"{theirs}.u0"] = [1, out_features]
            continue
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            plan[key] = ("zero", "")
            continue
        if module == "out_bn" and leaf == "weight":
            leaf = "gain"
        name = f"{their_module(module, attention_block)}.{_LEAVES.get(leaf, leaf)}"
        plan[key] = ("copy", name)
        expected[name] = shape(value)
    # sv* are logged singular values, u1.. further singular vectors: eval mode reads neither.
    ignored = [k for k in state if re.search(r"\.(sv\d+|u[1-9]\d*)$", k)]
    check_tensors(expected, state, source, ignored)
    out: dict[str, torch.Tensor] = {}
    folded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, (kind, theirs) in plan.items():
        if kind == "zero":
            out[key] = torch.zeros((), dtype=torch.long)
        elif kind == "copy":
            out[key] = state[theirs].float().clone()
        else:
            if theirs not in folded:
                u0 = state[theirs.removesuffix(".weight") + ".u0"]
                folded[theirs] = eval_singular_vectors(state[theirs].float(), u0.float())
            u, v = folded[theirs]
            out[key] = u if kind == "0._u" else v
    return out


def eval_singular_vectors(weight: torch.Tensor, u0: torch.Tensor,
                          eps: float = NORMALIZE_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(u [out], v [in]) after the one power-iteration step BigGAN-PyTorch's SN takes in eval
    mode from its stored u0 [1, out] (Miyato et al. 2018, Alg. 1), for W = weight viewed as
    [out, in]:  v = normalize(u0 W),  u = normalize(v W^T).  Then u^T W v is their sigma."""
    w = weight.reshape(weight.shape[0], -1)
    v = F.normalize(u0 @ w, dim=1, eps=eps)
    u = F.normalize(v @ w.t(), dim=1, eps=eps)
    return u[0].contiguous(), v[0].contiguous()


def convert(src: str | Path, out: str | Path, bn_eps: float = 1e-5,
            class_names: Sequence[str] | None = None) -> ImportReport:
    """Import BigGAN-PyTorch generator weights (a G_ema.pth / G.pth file or their weights
    directory) into a new bigan run directory `out` (`out/checkpoints/step-00000000`).
    `class_names`: one per class; None: ImageNet-1k's for 1,000 classes, else the ids."""
    from bigan.models.biggan import Generator

    path = find_generator_file(src)
    state = read_state_dict(path)
    cfg = infer_model_config(state, path, bn_eps)
    names = class_names_for(cfg.num_classes, class_names)  # before the slow part
    with torch.random.fork_rng(devices=[]):  # the fresh model's init must not move the caller's RNG
        G = Generator(cfg)
    G.load_state_dict(convert_state(state, G, path), strict=True)
    source = {"format": FORMAT, "file": str(path.resolve()), "sha256": file_sha256(path),
              "bn_eps": bn_eps}
    step = write_checkpoint(out, cfg, G.state_dict(), names, source)
    return ImportReport(step, path, cfg, sum(p.numel() for p in G.parameters()), names)
