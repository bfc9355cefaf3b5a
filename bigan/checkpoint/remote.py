"""Resuming from a checkpoint at a URL (`--resume s3://bucket/run/step-00000400`): fetched, then
trusted exactly like a local one.

Ray Train copies each reported checkpoint to `--storage` (`launch/ray_job.py`), a bucket on a
cluster; resuming a new run from there needs the step directory on local disk, because the
checkpoint is verified (sizes, sha256) and loaded file by file. `fetch_checkpoint` copies it with
fsspec into a private temporary directory, removed when the process ends (the tensors are in
memory by then). The URL may name a step directory (holding `manifest.json`) or a root holding
`latest` or `step-*` directories (Ray's `STORAGE/NAME`): then `latest`, else the newest step.
Credentials and endpoints come from the store's standard configuration (AWS_* variables and
files for s3://), as for data (`bigan.data.locations`).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from bigan.checkpoint.store import LATEST, MANIFEST, STEP_DIR, CheckpointError


def is_url(spec: str | Path) -> bool:
    """True for `scheme://...` other than file:// (which names a local directory)."""
    text = str(spec)
    return "://" in text and not text.startswith("file://")


def _step_path(fs, path: str, url: str) -> str:
    if fs.isfile(f"{path}/{MANIFEST}"):
        return path
    if fs.isfile(f"{path}/{LATEST}"):
        name = fs.cat_file(f"{path}/{LATEST}").decode("utf-8", "replace").strip()
        if STEP_DIR.match(name):
            return f"{path}/{name}"
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        raise CheckpointError(f"{url} not found: pass a checkpoint URL (…/step-NNNNNNNN) or a "
                              "run's storage URL") from None
    steps = sorted(e.rstrip("/") for e in entries if STEP_DIR.match(e.rstrip("/").rpartition("/")[2]))
    for step in reversed(steps):  # newest first; a step without its manifest is incomplete
        if fs.isfile(f"{step}/{MANIFEST}"):
            return step
    raise CheckpointError(f"{url} holds no checkpoint (no {MANIFEST}, no {LATEST}, no complete "
                          "step-* directory)")


def fetch_checkpoint(url: str, into: str | Path | None = None) -> Path:
    """Copy the checkpoint `url` names into `into` (default: a temporary directory removed at
    exit); returns the local step directory."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise CheckpointError(f"{url}: no file system for it ({exc}); install the `cloud` extra "
                              "(pip install 'bigan[cloud]')") from None
    step = _step_path(fs, path.rstrip("/"), url)
    if into is None:
        into = tempfile.mkdtemp(prefix="bigan-resume-")
        atexit.register(shutil.rmtree, into, ignore_errors=True)
    local = Path(into) / step.rpartition("/")[2]
    files = [f for f in fs.find(step) if not f.endswith("/")]
    for remote in files:  # file by file: fsspec's recursive get nests differently per backend
        target = local / remote[len(step):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(target))
    return local
