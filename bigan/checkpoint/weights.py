"""Consolidated weights: one safetensors file with G, EMA G and D of a checkpoint, for export,
evaluation and sharing (`bigan checkpoint consolidate CKPT OUT`).

A checkpoint directory (`checkpoint/store.py`) holds full weights whatever strategy and world
size wrote it (possibly split by whole tensors into one part per rank, merged on load), plus the
optimizer states, RNG and data position needed to resume. The consolidated file keeps only what
inference and evaluation need: tensors under `G/<key>`, `G_ema/<key>`, `D/<key>`, and the source
checkpoint's manifest.json verbatim in the file's metadata (config, class names, step, strategy,
world size, ProGAN phase). Keeping the manifest's exact bytes means its sha256 identifies the
training checkpoint equally from the directory or from the file, so an ONNX model exported from
either names the same source. safetensors holds no code: loading it is safe whatever its origin.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from bigan.checkpoint import store as ckpt
from bigan.checkpoint.loading import load_checkpoint
from bigan.checkpoint.resume import find_resume

FORMAT = "bigan-weights"
VERSION = 1
MODELS = ("G", "G_ema", "D")


@dataclass
class Weights:
    path: Path                                   # the .safetensors file, or the checkpoint directory
    models: dict[str, dict[str, torch.Tensor]]   # "G", "G_ema", "D" -> state dict
    manifest: dict                               # the source checkpoint's manifest
    source_sha256: str                           # sha256 of that manifest.json's bytes


def is_weights_file(path: str | Path) -> bool:
    return Path(path).suffix == ".safetensors" and Path(path).is_file()


def consolidate(checkpoint: str | Path, out: str | Path) -> Path:
    """Write `out` (a .safetensors file) from a checkpoint directory, or the newest checkpoint
    under a checkpoints root / run directory. Atomic: `out` appears only when complete."""
    found = _resolve(checkpoint)
    c = load_checkpoint(found)  # verifies every file's sha256 first
    missing = [m for m in MODELS if m not in c.models]
    if missing:
        raise ckpt.CheckpointError(f"{found} has no {', '.join(missing)} weights; it was not "
                                   "written by the bigan trainer")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"output {out} must end in .safetensors")
    tensors = {f"{m}/{k}": v.contiguous() for m in MODELS for k, v in c.models[m].items()}
    manifest_text = (found / ckpt.MANIFEST).read_text(encoding="utf-8")
    meta = {"format": FORMAT, "version": str(VERSION), "manifest": manifest_text}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_weights(path: str | Path) -> Weights:
    """G, EMA G and D with the source manifest, from a consolidated file or a checkpoint
    (directory, checkpoints root or run directory: the newest verified checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        found = _resolve(path)
        c = load_checkpoint(found)
        data = (found / ckpt.MANIFEST).read_bytes()
        return Weights(found, {m: c.models[m] for m in MODELS if m in c.models}, c.manifest,
                       hashlib.sha256(data).hexdigest())
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ckpt.CheckpointError(f"{path} is a safetensors file but not bigan weights "
                                           "(no 'format: bigan-weights' metadata); write it with "
                                           "`bigan checkpoint consolidate`")
            if int(meta.get("version", 0)) > VERSION:
                raise ckpt.CheckpointError(f"{path} has weights format version {meta['version']}; "
                                           f"this bigan reads up to {VERSION}: upgrade bigan")
            models: dict[str, dict[str, torch.Tensor]] = {}
            for key in f.keys():
                model, _, name = key.partition("/")
                models.setdefault(model, {})[name] = f.get_tensor(key)
    except ckpt.CheckpointError:
        raise
    except Exception as e:  # truncated or not safetensors at all
        raise ckpt.CheckpointError(f"{path} is not a readable safetensors file ({e})") from e
    text = meta.get("manifest", "")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ckpt.CheckpointError(f"{path} carries an unreadable manifest ({e})") from e
    return Weights(path, models, manifest, hashlib.sha256(text.encode("utf-8")).hexdigest())


def _resolve(path: str | Path) -> Path:
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"checkpoint {str(root)!r} does not exist")
    if (root / "checkpoints").is_dir() and not (root / ckpt.MANIFEST).exists():
        root = root / "checkpoints"  # a run directory
    return find_resume(root, str(root))
