"""Fine-tuning to a new class set (`finetune:`; `bigan train CONFIG --finetune-from SOURCE`).

A fresh run starts from the weights of SOURCE: a checkpoint or run directory, a consolidated
`.safetensors` (`bigan checkpoint consolidate`), or what `bigan import` wrote from released
BigGAN weights. The model is the source's (`for_source` copies its settings into the config,
keeping the run's `model.num_classes`); only the number of classes may differ, so only the
tensors with a class axis change (G's shared embedding, or each conditional batch norm's class
projections without one; D's projection embedding):

- a class whose name the source also has keeps its row, wherever it sat there;
- a new class starts from the mean of the source's rows (`finetune.new_classes=mean`, a
  generic class to move away from) or from the model's own initialisation (`random`);
- a spectral-norm vector along the class axis (D's embedding's `u`) is the new model's: it is a
  power-iteration estimate, re-converged by the first training steps.

Which tensors have a class axis is found by building the model on the meta device with two class
counts (no memory, no guessing from names). Where the source has no D (imports: the released
BigGAN weights come without theirs) D is built fresh from the run's settings. The EMA G starts
from the source's EMA G (else its G), G from its G (else its EMA G).

Freezing (`freeze_d_blocks`, `freeze_g_blocks`) sets `requires_grad` off on the first N blocks
of D (from the image: FreezeD, Mo et al. 2020, "Freeze the Discriminator") and of G (from z, the
coarsest); applied at every start, resumes included. Their parameters stay as loaded; spectral
norm's power iteration and batch-norm running statistics still follow the data, as in FreezeD's
code. A resume ignores `finetune.source`: the checkpoint holds everything.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bigan import models
from bigan.checkpoint.store import list_checkpoints
from bigan.checkpoint.weights import read_weights
from bigan.config import Config, ConfigError, ModelConfig, config_from_dict

log = logging.getLogger(__name__)

D_ONLY = ("d_ch", "d_arch", "projected_res")  # the run's own where the source has no D


def for_source(cfg: Config, source: str) -> Config:
    """`cfg` set to fine-tune from `source`: `finetune.source`, and the source's model settings
    but for `model.num_classes` (and D's, where the source has no D) from `cfg`."""
    w = read_weights(source)
    src = _source_model(w.manifest, source)
    keep = {"num_classes": cfg.model.num_classes}
    if "D" not in w.models:
        keep |= {k: getattr(cfg.model, k) for k in D_ONLY}
    out = dataclasses.replace(cfg, model=dataclasses.replace(src, **keep),
                              finetune=dataclasses.replace(cfg.finetune, source=str(source)))
    out.validate()
    return out


def start(cfg: Config, resume: str | None, root: Path, G: nn.Module, D: nn.Module,
          G_ema: nn.Module, class_names: Callable[[], list[str]]) -> None:
    """Before the optimizers are built: load `finetune.source` into a fresh run's G, D and EMA G
    (`class_names()`: the run's classes, in order), then freeze the configured blocks."""
    if cfg.finetune.source and not (resume and list_checkpoints(root)):
        load_source(cfg, G, D, G_ema, class_names())
    freeze(cfg, G, D)


def load_source(cfg: Config, G: nn.Module, D: nn.Module, G_ema: nn.Module,
                names: list[str]) -> None:
    """The source's weights into G, D (where it has one) and the EMA G, classes matched by name."""
    source = cfg.finetune.source
    w = read_weights(source)
    src = _source_model(w.manifest, source)
    _check_same_model(src, cfg.model, has_d="D" in w.models, source=source)
    old = [str(n) for n in (w.manifest.get("class_names") or range(src.num_classes))]
    rows = [old.index(n) if n in old else None for n in names]  # new class k <- source row
    how = cfg.finetune.new_classes
    g_src = w.models.get("G", w.models.get("G_ema"))
    loads = [(G, "G", g_src), (G_ema, "G", w.models.get("G_ema", g_src))]
    if "D" in w.models:
        loads.append((D, "D", w.models["D"]))
    for net, which, state in loads:
        axes = class_axes(cfg.model, which)
        net.load_state_dict(_resized(state, net.state_dict(), axes, rows, how, source))
    kept = sum(r is not None for r in rows)
    log.info("fine-tuning from %s: %d of %d classes kept their rows by name, %d new (%s)%s",
             source, kept, len(names), len(names) - kept, how,
             "" if "D" in w.models else "; D is new (the source has none)")


def class_axes(model: ModelConfig, which: str) -> dict[str, int]:
    """{state-dict key: its class axis} of model `which` ("G" or "D"), from two builds on the
    meta device with different class counts."""
    shapes = []
    for n in (2, 3):
        with torch.device("meta"):
            net = models.build(dataclasses.replace(model, num_classes=n))[0 if which == "G" else 1]
        shapes.append({k: tuple(v.shape) for k, v in net.state_dict().items()})
    axes = {}
    for key, a in shapes[0].items():
        diff = [i for i, (x, y) in enumerate(zip(a, shapes[1][key])) if x != y]
        if diff:
            axes[key] = diff[0]
    return axes


def _resized(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], axes: dict[str, int],
             rows: list[int | None], how: str, source: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, fresh in target.items():
        if key not in state:
            raise ConfigError(f"finetune.source: {source} has no {key}; is it a model of "
                              "another architecture?")
        t = state[key]
        if key not in axes:
            out[key] = t
        elif key.endswith(("._u", "._v")):  # a spectral-norm power-iteration vector
            out[key] = fresh
        else:
            out[key] = _class_rows(t, fresh, axes[key], rows, how)
    return out


def _class_rows(t: torch.Tensor, fresh: torch.Tensor, axis: int, rows: list[int | None],
                how: str) -> torch.Tensor:
    """`fresh`'s shape, slice k along `axis` = `t`'s slice rows[k]; a new class (None): the mean
    of `t`'s slices, or `fresh`'s own."""
    src, new = t.movedim(axis, 0).to(fresh.dtype), fresh.movedim(axis, 0).clone()
    mean = src.mean(0)
    for k, r in enumerate(rows):
        if r is not None:
            new[k] = src[r]
        elif how == "mean":
            new[k] = mean
    return new.movedim(0, axis).contiguous()


def freeze(cfg: Config, G: nn.Module, D: nn.Module) -> None:
    """`requires_grad` off on the first `finetune.freeze_g_blocks` of G and
    `freeze_d_blocks` of D; ConfigError naming the field when the model has fewer."""
    for name, net, n in (("g", G, cfg.finetune.freeze_g_blocks), ("d", D, cfg.finetune.freeze_d_blocks)):
        if not n:
            continue
        blocks = getattr(net, "blocks", None)
        count = len(blocks) if isinstance(blocks, nn.ModuleList) else 0
        if n > count:
            raise ConfigError(f"finetune.freeze_{name}_blocks={n} is invalid: model.arch="
                              f"{cfg.model.arch}'s {name.upper()} has {count} blocks")
        for block in blocks[:n]:
            block.requires_grad_(False)


def _source_model(manifest: dict, source: str) -> ModelConfig:
    if "config" not in manifest:
        raise ConfigError(f"finetune.source: {source} records no config; pass a bigan checkpoint, "
                          "run directory or weights file")
    return config_from_dict(manifest["config"]).model


def _check_same_model(src: ModelConfig, model: ModelConfig, has_d: bool, source: str) -> None:
    """ConfigError naming every model field that differs from the source's, but the class count
    (and D's settings where the source has no D)."""
    free = {"num_classes"} | (set() if has_d else set(D_ONLY))
    diff = [f"model.{f.name}={getattr(model, f.name)!r} (the source: {getattr(src, f.name)!r})"
            for f in dataclasses.fields(model)
            if f.name not in free and getattr(model, f.name) != getattr(src, f.name)]
    if diff:
        raise ConfigError(f"finetune.source: the model differs from {source}'s in "
                          f"{', '.join(diff)}; only model.num_classes may differ (`bigan train "
                          "--finetune-from` takes the rest from the source)")
