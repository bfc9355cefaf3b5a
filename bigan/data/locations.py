"""Where a pack of shards lives: a local directory, an object store or HTTP URL, or a `pipe:` command.

`ShardLocation.parse(spec)` reads what `data.path`, `bigan data pack ... OUT` and
`bigan data inspect` accept, the same spellings as WebDataset:

- a local directory (or its `dataset.json`), or `file:///dir`;
- a URL fsspec knows, `s3://bucket/prefix`, `gs://...`, `https://host/path` (needs s3fs,
  gcsfs, aiohttp: the `cloud` extra);
- either with WebDataset's brace expansion for the shard names,
  `s3://bucket/ds/shard-{000000..000009}.tar`: those shards of the pack, `dataset.json` from
  the same directory;
- `pipe:CMD`, a shell command that writes one shard to stdout, e.g.
  `pipe:aws s3 cp s3://bucket/ds/shard-{000000..000009}.tar -`: the token with the shard
  name is rewritten per shard, and to `dataset.json` for the index.

`open_stream(url)` opens one of those for streaming reads: a local file, an fsspec file read
forward in `READ_BLOCK` range requests (a shard is never downloaded whole), or the command's
stdout. Credentials and endpoints come from each store's own configuration (for S3 the AWS
variables and files: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL(_S3), AWS_PROFILE,
~/.aws/config), never from bigan's config files. Reads are retried by
`bigan.data.retrying.RetryingReader`, which counts the retries; so s3fs's and botocore's own
retries are turned off here (they would retry silently, and stack with ours).
"""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bigan.data.retrying import RetryingReader, RetryPolicy, ShardReadError
from bigan.data.sources import DataError

INDEX_NAME = "dataset.json"
READ_BLOCK = 8 << 20  # bytes per range request (fsspec readahead): few GETs, bounded memory
_NAME = "\0name\0"  # placeholder for the file name in a location's template
_BRACES = re.compile(r"\{[^{}]*\}")


def is_url(spec: str | Path) -> bool:
    """True for `scheme://...` (but file://) and `pipe:` specs."""
    text = str(spec)
    return text.startswith("pipe:") or ("://" in text and not text.startswith("file://"))


@dataclass(frozen=True)
class ShardLocation:
    kind: str  # local | url | pipe
    template: str  # the place of any file of the pack, with _NAME for its file name
    index_name: str = INDEX_NAME  # the index's file name
    names: tuple[str, ...] | None = None  # shards picked by brace expansion; None: all listed

    @classmethod
    def parse(cls, spec: str | Path) -> ShardLocation:
        text = str(spec)
        if text.startswith("pipe:"):
            return cls._parse_pipe(text)
        if text.startswith("file://"):
            text = text[len("file://"):]
        kind = "url" if "://" in text else "local"
        base, _, last = text.rstrip("/").rpartition("/")
        if not (_BRACES.search(last) or last.endswith((".tar", ".json"))):
            base, last = text.rstrip("/"), ""
        if _BRACES.search(base):
            raise DataError(f"{spec}: braces are expanded in the shard file name only")
        if kind == "local" and not base and last:
            base = "."
        template = f"{base}/{_NAME}"
        if last.endswith(".json") and not _BRACES.search(last):
            return cls(kind, template, last)
        return cls(kind, template, INDEX_NAME, _expand(last, spec) if last else None)

    @classmethod
    def _parse_pipe(cls, spec: str) -> ShardLocation:
        command = spec[len("pipe:"):]
        for token in re.finditer(r"\S+", command):
            word = token.group()
            if _BRACES.search(word) or word.endswith(".tar"):
                head, slash, last = word.rpartition("/")
                template = (command[:token.start()] + head + slash + _NAME
                            + command[token.end():])
                return cls("pipe", template, INDEX_NAME, _expand(last, spec))
        raise DataError(f"{spec!r}: a pipe: URL must name its shards, e.g. "
                        "'pipe:aws s3 cp s3://bucket/ds/shard-{000000..000009}.tar -'")

    def url(self, name: str) -> str:
        """Where file `name` of the pack is: a local path, a URL or a `pipe:` command."""
        if self.kind == "pipe":
            return "pipe:" + self.template.replace(_NAME, shlex.quote(name))
        return self.template.replace(_NAME, name)

    @property
    def index_url(self) -> str:
        return self.url(self.index_name)

    @property
    def root(self) -> str:
        """The directory (or command template) the spec points into, for messages."""
        return self.template.replace("/" + _NAME, "") if self.kind != "pipe" else self.template

    def list_names(self) -> set[str] | None:
        """File names present beside the index, or None where the store cannot list (http, pipe)."""
        if self.kind == "local":
            root = Path(self.root)
            return {p.name for p in root.iterdir()} if root.is_dir() else set()
        if self.kind == "pipe" or self.root.startswith(("http://", "https://")):
            return None
        fs, path = filesystem(self.root)
        try:
            return {p.rstrip("/").rpartition("/")[2] for p in fs.ls(path, detail=False,
                                                                      refresh=True)}
        except FileNotFoundError:
            return set()


def _expand(last: str, spec: str) -> tuple[str, ...]:
    from braceexpand import braceexpand

    names = tuple(braceexpand(last))
    if len(set(names)) != len(names):
        raise DataError(f"{spec}: the brace pattern names a shard twice")
    return names


def filesystem(url: str):
    """(fsspec filesystem, path) for `url`, configured from the store's standard environment."""
    import fsspec

    protocol = url.split("://", 1)[0]
    options: dict = {}
    if protocol in ("s3", "s3a"):
        # Only RetryingReader retries (and counts); botocore's standard mode would add its own.
        options["config_kwargs"] = {"retries": {"max_attempts": 1, "mode": "standard"}}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:
        raise DataError(f"{url}: no file system for {protocol}:// ({exc}); install the `cloud` "
                        "extra for s3:// and http(s):// (pip install 'bigan[cloud]'), gcsfs for "
                        "gs://") from None
    if protocol in ("s3", "s3a"):
        fs.retries = 1  # s3fs's own retry loop (not a constructor argument in s3fs 2026.9)
    return fs, path


class _PipeStream:
    """stdout of a shell command, as a forward-only binary file; a non-zero exit is an OSError."""

    def __init__(self, command: str):
        self.command = command
        self._stderr = tempfile.TemporaryFile()  # a pipe could fill and block the command
        self._proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE,
                                      stderr=self._stderr)

    def read(self, n: int = -1) -> bytes:
        data = self._proc.stdout.read(n) if n >= 0 else self._proc.stdout.read()
        if n < 0 or len(data) < n:
            status = self._proc.wait()
            if status != 0:
                self._stderr.seek(0)
                tail = self._stderr.read()[-300:].decode("utf-8", "replace").strip()
                raise OSError(f"`{self.command}` exited with status {status}: {tail}")
        return data

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.stdout.close()
        self._proc.wait()
        self._stderr.close()


def open_stream(url: str, size: int | None = None) -> BinaryIO:
    """A binary stream at byte 0 of a local file, a URL (range requests) or a `pipe:` command.
    `size` (bytes, from dataset.json) spares the store a HEAD request, and fsspec's http layer
    the habit of reporting any failed HEAD as FileNotFoundError (which would not be retried)."""
    if url.startswith("pipe:"):
        return _PipeStream(url[len("pipe:"):])
    if not is_url(url):
        return open(url.removeprefix("file://"), "rb", buffering=1 << 20)
    fs, path = filesystem(url)
    return fs.open(path, "rb", block_size=READ_BLOCK, cache_type="readahead", size=size)


def reader(url: str, policy: RetryPolicy, size: int | None = None) -> RetryingReader:
    """`url` read forward with retries (`RetryingReader`); `size` as for `open_stream`."""
    return RetryingReader(url, lambda u: open_stream(u, size), policy)


def _whole(url: str) -> BinaryIO:
    """The file at `url` in one request (GET; a missing object is FileNotFoundError)."""
    if url.startswith("pipe:") or not is_url(url):
        return open_stream(url)
    fs, path = filesystem(url)
    return io.BytesIO(fs.cat_file(path))


def read_bytes(url: str, policy: RetryPolicy = RetryPolicy()) -> bytes:
    """The whole (small) file at `url`, with retries; FileNotFoundError when it is not there."""
    with RetryingReader(url, _whole, policy) as f:
        try:
            return f.read()
        except ShardReadError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise FileNotFoundError(url) from None
            raise


def open_for_writing(url: str) -> BinaryIO:
    """A binary file to write at a local path or a URL (S3: a multipart upload as it grows)."""
    if url.startswith("pipe:"):
        raise DataError(f"{url}: cannot write through a pipe: URL; write to a directory or a "
                        "bucket URL")
    if not is_url(url):
        path = Path(url.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "wb")
    fs, path = filesystem(url)
    return fs.open(path, "wb")


def remove(url: str) -> None:
    """Delete the file at `url` if it is there."""
    if not is_url(url):
        Path(url.removeprefix("file://")).unlink(missing_ok=True)
        return
    fs, path = filesystem(url)
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass
