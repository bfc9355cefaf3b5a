"""Which checkpoint a run resumes from, and whether it can be trusted.

A checkpoint is resumed from only if it verifies (every file's size and sha256, `store.py`),
loads (each `.pt` through `torch.load(weights_only=True)`: a file that passes its checksum yet
holds pickled classes is refused), its weights fit the model of its manifest's config
(`shapes.py`) and it holds finite numbers only (a checkpoint written after training diverged is
useless to resume). `--resume auto` walks the complete checkpoints newest first and skips any
that fails, with a `CheckpointWarning` naming why; it says which one it chose when that is not
the one `latest` names. When checkpoints are there but none can be used it refuses, listing
why for each, rather than start from step 0 over them (a damaged run may still hold weights
worth rescuing); `--resume auto-or-fresh` starts from step 0 then. An explicit checkpoint that
fails raises `CheckpointError`. The trainer itself never writes a non-finite checkpoint
(`bigan.train.train_state`), so this guards against older runs, copies and tampering.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from bigan.checkpoint.remote import fetch_checkpoint, is_url
from bigan.checkpoint.loading import Checkpoint, load_checkpoint, verify_checkpoint
from bigan.checkpoint.store import (LATEST, MANIFEST, STEP_DIR, CheckpointError, CheckpointWarning,
                                    incomplete_step_dirs, list_checkpoints)
from bigan.checkpoint.shapes import check_model_shapes

log = logging.getLogger(__name__)

AUTO = "auto"  # the newest usable checkpoint; refuse when there are checkpoints but none is usable
AUTO_OR_FRESH = "auto-or-fresh"  # the same, but then start from step 0 (overwriting them)


def nonfinite_entries(groups: dict[str, Any]) -> list[str]:
    """'G/blocks.0.conv.weight', 'opt_G/state/3/exp_avg', ...: every floating tensor in the
    nested dicts/lists of `groups` (name -> state dict or object) holding NaN or +-inf."""
    bad: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            if (value.is_floating_point() or value.is_complex()) and not bool(
                    torch.isfinite(value).all()):
                bad.append(where)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}/{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{where}/{i}")

    for name, value in groups.items():
        walk(value, name)
    return bad


def describe(entries: list[str], shown: int = 3) -> str:
    more = f" and {len(entries) - shown} more" if len(entries) > shown else ""
    return ", ".join(entries[:shown]) + more


def load_trusted(path: str | Path, map_location: Any = "cpu") -> Checkpoint:
    """`load_checkpoint(path)` (verify, then weights_only loads), refusing non-finite values."""
    c = load_checkpoint(path, map_location)
    check_model_shapes(c.path, c.manifest, c.models)
    bad = nonfinite_entries({**c.models, **c.objects})
    if bad:
        raise CheckpointError(f"{c.path} holds NaN or infinite values ({describe(bad)}): it was "
                              "written after training diverged; resume from an earlier checkpoint")
    return c


def load_resume(root: str | Path, spec: str | None, map_location: Any = "cpu") -> Checkpoint | None:
    """The checkpoint to resume from, loaded; None for a fresh start.

    spec None: None. spec "auto": the newest checkpoint under root that verifies, loads, fits its
    config and is finite (a newer one than `latest` names wins, e.g. after a crash between the
    directory rename and the pointer update); others are skipped with a CheckpointWarning; None
    when root holds no step directory, CheckpointError listing each one's fault when it holds
    some but none is usable. "auto-or-fresh": the same, but None (with a warning) in that case.
    Any other spec is a checkpoint directory, or a root whose `latest` (else newest checkpoint)
    is used, or the same at a URL (fetched first, `remote.py`); it must pass the same checks,
    else CheckpointError.
    """
    if not spec:
        return None
    if is_url(spec):  # fetched into a private directory, then trusted like any other
        return load_trusted(fetch_checkpoint(spec), map_location)
    if spec not in (AUTO, AUTO_OR_FRESH):
        return load_trusted(_explicit(Path(spec)), map_location)
    root = Path(root)
    named = _auto_preamble(root)
    faults = []
    for path in reversed(list_checkpoints(root)):
        try:
            c = load_trusted(path, map_location)
        except CheckpointError as e:
            _skip(path, e)
            faults.append(f"{path.name}: {e}")
            continue
        _say_choice(root, named, path)
        return c
    faults += [f"{p.name}: no {MANIFEST}" for p in incomplete_step_dirs(root)]
    if faults:
        _none_usable(root, spec, faults)
    return None


def find_resume(root: str | Path, spec: str | None) -> Path | None:
    """Where `load_resume` would resume from. "auto" loads each candidate to check it (as
    `load_resume` does); an explicit checkpoint is only verified (its loader checks the rest)."""
    if spec in (AUTO, AUTO_OR_FRESH):
        c = load_resume(root, spec)
        return None if c is None else c.path
    if not spec:
        return None
    path = fetch_checkpoint(spec) if is_url(spec) else _explicit(Path(spec))
    verify_checkpoint(path)
    return path


def _none_usable(root: Path, spec: str, faults: list[str]) -> None:
    """Refuse (`auto`) or warn (`auto-or-fresh`) when no step directory under root is usable:
    a fresh start would overwrite them as it reaches their steps."""
    head = (f"--resume {spec} found {len(faults)} checkpoint(s) in {root} and none can be "
            "resumed from")
    if spec == AUTO_OR_FRESH:
        log.warning("%s; starting from step 0 as asked: each is overwritten when the run reaches "
                    "its step", head)
        return
    listing = "".join(f"\n  {fault}" for fault in faults)
    raise CheckpointError(f"{head}:{listing}\nNo checkpoint was changed. Resume from a copy you "
                          "trust (--resume PATH), move the damaged ones out of the way, or rerun "
                          f"with --resume {AUTO_OR_FRESH} to start from step 0 and overwrite them")


def _explicit(path: Path) -> Path:
    """A checkpoint directory as given, or a root's `latest` (else its newest checkpoint)."""
    if (path / MANIFEST).is_file() or not path.is_dir() or STEP_DIR.match(path.name):
        return path  # verify_checkpoint names what is wrong with it
    named = read_latest(path)
    if named is not None:
        return path / named
    if found := list_checkpoints(path):
        return found[-1]
    raise CheckpointError(f"{path} holds no checkpoint (no {MANIFEST}, no {LATEST}, no "
                          "complete step-* directory); pass a checkpoint directory or 'auto'")


def _auto_preamble(root: Path) -> str | None:
    """Warn about what `auto` will not consider; return the step `latest` names (or None)."""
    for path in incomplete_step_dirs(root):
        _warn(f"{path} has no {MANIFEST} (an interrupted save, or written by a version without "
              "manifests): it is not resumed from; delete it, or move it away to keep it")
    named = read_latest(root)
    if named is not None and not (root / named / MANIFEST).is_file():
        log.warning("%s names %s, which is missing or incomplete; looking for another checkpoint",
                    root / LATEST, named)
    return named


def _say_choice(root: Path, named: str | None, path: Path) -> None:
    if named is None or path.name == named:
        return
    if _step(path.name) > _step(named):
        log.info("resuming from %s, newer than %s named in %s (a save ended between renaming "
                 "its directory and updating the pointer)", path.name, named, root / LATEST)
    else:
        log.warning("resuming from %s, older than %s named in %s, which could not be used (see "
                    "above)", path.name, named, root / LATEST)


def _step(name: str) -> int:
    return int(STEP_DIR.match(name).group(1))


def _skip(path: Path, e: CheckpointError) -> None:
    _warn(f"skipping checkpoint {path}: {e}")


def _warn(message: str) -> None:
    # Both: the warning reaches an interactive user and tests, the log line the run's log.
    warnings.warn(message, CheckpointWarning, stacklevel=3)
    log.warning("%s", message)


def read_latest(root: Path) -> str | None:
    """The step directory name `latest` holds, or None (absent, unreadable, not a step name)."""
    try:
        raw = (root / LATEST).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("%s cannot be read (%s); ignoring it", root / LATEST, e)
        return None
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8 text (%d bytes, damaged?); ignoring it and using the newest "
                    "checkpoint that verifies", root / LATEST, len(raw))
        return None
    if not STEP_DIR.match(name):
        log.warning("%s holds %r, not a step-* directory name; ignoring it", root / LATEST, name)
        return None
    return name
