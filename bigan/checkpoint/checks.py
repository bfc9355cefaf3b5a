"""What a checkpoint may hold, checked before anything touches the disk: plain file names, tensors
in model state dicts, only types `torch.load(weights_only=True)` rebuilds in other state, JSON in
the manifest; reading such state back (`load_plain`); the step directory's name; and the
exceptions of the checkpoint format. `store.py` re-exports the public names.
"""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import torch

STEP_DIR = re.compile(r"^step-(\d{8,})$")  # what step_dir_name writes; group 1 is the step
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SHARD = re.compile(r"^(?P<name>.+)-(?P<rank>\d{5})-of-(?P<world>\d{5})$")
_RESERVED = {"format", "version", "step", "created", "files"}
# Exactly what torch's weights_only unpickler rebuilds without extra allow-listing (a subset of it).
_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray,
                 torch.dtype, torch.device, torch.Size)
_PLAIN_CONTAINERS = (dict, OrderedDict, Counter, list, tuple, set)


def step_dir_name(step: int) -> str:
    """`step-NNNNNNNN`: the directory of the checkpoint written after G step `step`."""
    return f"step-{step:08d}"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, found or trusted; the message names the file and the fix."""


class CheckpointWarning(UserWarning):
    """`--resume auto` (`bigan.checkpoint.resume`) skipped a checkpoint it cannot trust."""


def check_step(step: Any, keep: Any = 0) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint step must be a non-negative int, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise CheckpointError(f"keep must be a non-negative int (0 keeps all), got {keep!r}")


def check_part(models: dict, objects: dict) -> None:
    """Refuse, before touching the disk, state that would be written but could not be read."""
    for kind, group in (("model", models), ("object", objects)):
        for name in group:
            if not isinstance(name, str) or not _NAME.match(name) or _SHARD.match(name):
                raise CheckpointError(f"{kind} name {name!r} is not a plain file name "
                                      "(letters, digits, '_', '-', '.'; not ending in "
                                      "-NNNNN-of-NNNNN, the mark of a shard)")
    for mname, state in models.items():
        for key, value in state.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise CheckpointError(f"model {mname!r} entry {key!r} is a {type(value).__name__}, "
                                      "not a tensor; pass non-tensor state in `objects`")
    for oname, value in objects.items():
        _check_plain(value, f"objects[{oname!r}]", set())


def check_commit(config_text: Any, extra: dict) -> None:
    """Refuse a config text or extra manifest fields that the manifest could not hold."""
    if not isinstance(config_text, str):
        raise CheckpointError(f"config_text must be the YAML text (str), got {type(config_text).__name__}")
    clash = _RESERVED & extra.keys()
    if clash:
        raise CheckpointError(f"extra fields {sorted(clash)} would overwrite manifest fields; rename them")
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"extra manifest fields must be JSON-serializable: {e}") from e


def _check_plain(value: Any, where: str, seen: set[int]) -> None:
    """Raise CheckpointError unless `value` is made only of types weights_only loading rebuilds."""
    t = type(value)
    if t in (torch.Tensor, torch.nn.Parameter) or t in _PLAIN_LEAVES:
        return
    if t not in _PLAIN_CONTAINERS:
        raise CheckpointError(
            f"{where} is a {t.__module__}.{t.__qualname__}, which torch.load(weights_only=True) "
            "refuses; convert it to tensors, numbers, strings and dict/list/tuple (e.g. a NumPy "
            "RNG state to tensors and ints) before saving")
    if id(value) in seen:  # shared or cyclic containers are checked once
        return
    seen.add(id(value))
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, f"{where} key {k!r}", seen)
            _check_plain(v, f"{where}[{k!r}]", seen)
    else:
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", seen)


def load_plain(fpath: Path, map_location: Any = "cpu") -> Any:
    """torch.load(fpath, weights_only=True), failures as CheckpointError: a refusal of what the
    file holds (pickled classes) is told apart from a file that is not a whole torch file."""
    try:
        return torch.load(fpath, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            # `from None`: torch's own message advises weights_only=False or allow-listing the
            # class, both of which run whatever code the file holds.
            raise CheckpointError(
                f"{fpath} was refused by torch.load(weights_only=True) ({_refusal(e)}): it holds "
                "something other than tensors and plain containers, so it was not written by "
                "bigan's save_checkpoint or it was altered; resume from another checkpoint and "
                "load this file only if you trust where it came from") from None
        raise _unreadable(fpath, e) from None
    except Exception as e:  # a cut zip archive (RuntimeError), an empty file (EOFError), ...
        raise _unreadable(fpath, e) from None


def _unreadable(fpath: Path, e: BaseException) -> CheckpointError:
    first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
    return CheckpointError(f"{fpath} is not a readable torch file ({first or type(e).__name__}): "
                           "it is truncated or damaged; resume from another checkpoint")


def _refusal(e: BaseException) -> str:
    """torch's reason for refusing a weights_only load ('Unsupported global: GLOBAL x.Foo'),
    without the advice around it."""
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\s+was not an allowed global|\s+Please use|"
                  r"\n\n|$)", str(e), re.DOTALL)
    if m and m.group(1).strip():
        return m.group(1).strip()
    first = (str(e).strip().splitlines() or [""])[0]
    return first if first and "weights_only" not in first else type(e).__name__
