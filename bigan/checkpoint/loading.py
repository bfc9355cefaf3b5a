"""Reading a checkpoint back: `verify_checkpoint` checks the manifest and every file's size and
sha256, `load_checkpoint` verifies, then reads the weights (safetensors) and the other state
(`torch.load(weights_only=True)`, never unpickling anything but plain data) into a `Checkpoint`,
merging the parts that several writers saved of one name (`<name>-RRRRR-of-WWWWW.<ext>`) back
into one state dict, so readers never see the sharding. The writing side, the manifest's
fields and the `latest` pointer are `store.py`'s.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from bigan.checkpoint.checks import _NAME, _SHARD, STEP_DIR, CheckpointError, load_plain
from bigan.checkpoint.store import CONFIG, FORMAT, LATEST, MANIFEST, VERSION, list_checkpoints


@dataclass
class Checkpoint:
    path: Path                                   # the step-NNNNNNNN directory
    manifest: dict                               # manifest.json as written (step, files, extra fields)
    models: dict[str, dict[str, torch.Tensor]]   # name -> state dict, from <name>.safetensors
    objects: dict[str, Any]                      # name -> torch.load(<name>.pt, weights_only=True)
    config_text: str                             # config.yaml as given at save time


def verify_checkpoint(path: str | Path) -> dict:
    """Check the manifest and every listed file's size and sha256; return the manifest.

    Raises CheckpointError naming the directory or file that is missing, truncated or altered.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    mpath = path / MANIFEST
    if not mpath.is_file():
        hint = (" It looks like a checkpoints root: pass one of its step-* directories."
                if (path / LATEST).exists() or list_checkpoints(path) else
                " It is probably an interrupted save: delete it or resume from another checkpoint.")
        raise CheckpointError(f"{path} is not a complete checkpoint (no {MANIFEST}).{hint}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{mpath} is unreadable ({e}); resume from another checkpoint") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath} is not a {FORMAT} manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{mpath} has format version {version!r}; this bigan reads up to "
                              f"{VERSION}: upgrade bigan to load it")
    files = manifest.get("files")
    if not isinstance(files, dict) or CONFIG not in files:
        raise CheckpointError(f"{mpath} lists no files or no {CONFIG}; the checkpoint is damaged")
    m = STEP_DIR.match(path.name)
    if m and manifest.get("step") != int(m.group(1)):
        raise CheckpointError(f"{mpath} says step {manifest.get('step')!r} but the directory is "
                              f"{path.name}; the checkpoint was mixed up with another")
    for fname, info in files.items():
        if not _NAME.match(fname):  # a manifest must not point outside its own directory
            raise CheckpointError(f"{mpath} lists an invalid file name {fname!r}")
        fpath = path / fname
        if not fpath.is_file():
            raise CheckpointError(f"{fpath} is missing; the checkpoint is incomplete")
        size = fpath.stat().st_size
        if size != info.get("bytes"):
            raise CheckpointError(f"{fpath} has {size} bytes but the manifest says "
                                  f"{info.get('bytes')}; the file is truncated or altered")
        with open(fpath, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != info.get("sha256"):
            raise CheckpointError(f"{fpath} fails its sha256 check (corrupted or altered); "
                                  "resume from another checkpoint")
    return manifest


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Checkpoint:
    """Verify, then read a checkpoint directory. Never unpickles anything but plain data.

    map_location is passed to torch.load for the objects; model tensors go to it when it is a
    device (str or torch.device), else to the CPU.
    """
    path = Path(path)
    manifest = verify_checkpoint(path)
    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    models, objects = {}, {}
    shards: dict[str, tuple[int, set[int]]] = {}  # name -> (world, ranks seen)
    for fname in manifest["files"]:
        fpath = path / fname
        if not fname.endswith((".safetensors", ".pt")):
            continue
        stem, _, ext = fname.rpartition(".")
        name, sharded = stem, _SHARD.match(stem)
        if sharded:
            name, world = sharded["name"], int(sharded["world"])
            seen_world, ranks = shards.setdefault(f"{name}.{ext}", (world, set()))
            if seen_world != world:
                raise CheckpointError(f"{path} mixes shards of {name} written by {seen_world} and "
                                      f"{world} writers; the checkpoint is damaged")
            ranks.add(int(sharded["rank"]))
        if ext == "safetensors":
            try:
                part = safetensors.torch.load_file(str(fpath), device=device)
            except Exception as e:
                raise CheckpointError(f"{fpath} is not a readable safetensors file ({e})") from e
            _merge_into(models, name, part, fpath)
        else:
            _merge_into(objects, name, load_plain(fpath, map_location), fpath)
    for key, (world, ranks) in shards.items():
        if ranks != set(range(world)):
            missing = sorted(set(range(world)) - ranks)
            raise CheckpointError(f"{path} lacks the part(s) {missing} of {world} of {key}; the "
                                  "checkpoint is incomplete")
    config_text = (path / CONFIG).read_text(encoding="utf-8")
    return Checkpoint(path=path, manifest=manifest, models=models, objects=objects,
                      config_text=config_text)


def _merge_into(group: dict, name: str, part: Any, fpath: Path) -> None:
    """group[name] = part, or part merged into the parts of `name` read before."""
    if name not in group:
        group[name] = part
        return
    try:
        _merge(group[name], part)
    except (ValueError, RuntimeError) as e:  # RuntimeError: comparing lists that hold tensors
        raise CheckpointError(f"{fpath} disagrees with the other parts of {name} ({e}); the "
                              "checkpoint is damaged") from e


def _merge(into: dict, part: Any, where: str = "") -> None:
    """Union of nested dicts; a key both hold must be a dict on both sides or equal plain data."""
    if not isinstance(into, dict) or not isinstance(part, dict):
        raise ValueError(f"{where or 'the top level'} is not a dict in every part")
    for k, v in part.items():
        if k not in into:
            into[k] = v
        elif isinstance(v, dict):
            _merge(into[k], v, f"{where}/{k}")
        elif isinstance(v, torch.Tensor) or isinstance(into[k], torch.Tensor) or into[k] != v:
            raise ValueError(f"entry {where}/{k} is in more than one part")
