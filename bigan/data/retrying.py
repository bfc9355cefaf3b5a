"""Reading a shard over the network without dying on one bad GET: retries with backoff, counted.

`RetryingReader` is the binary file the tar reader sees for a shard at a URL or behind a `pipe:`
command. It remembers how many bytes it has handed out; when a read fails with a transient
error (a dropped connection, a timeout, a 5xx, a throttled request) it closes the stream, waits
`backoff_delay(attempt)`, opens the shard again, seeks back to that byte (or, on a pipe, reads
and discards that many bytes) and carries on, so the bytes the tar reader sees, and with them the
sample order and the exactly-once position, are the same as without the failure. Each retry is
counted in `retried` (the loader reports the counts with its batches). After `retries` failed
attempts in a row, or at once for an error that retrying cannot fix (the object does not exist,
access denied, a 4xx), it raises `ShardReadError` naming the URL and the last error; the loader
then skips the rest of the shard (counted and named) or stops, as `data.on_unreadable_shard`
says. The storage libraries' own retries are turned off where they would hide failures from
the count (`bigan.data.locations`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger(__name__)

# Errors no retry can fix: the object is not there or we may not read it.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class ShardReadError(OSError):
    """A shard at a URL could not be read after its retries; the message names it."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # failed attempts in a row retried before the shard is given up
    backoff_sec: float = 1.0  # first wait; doubles per attempt (with jitter), up to max_backoff_sec
    max_backoff_sec: float = 30.0


def backoff_delay(attempt: int, base_sec: float, cap_sec: float, u: float) -> float:
    """Seconds to wait before retry number `attempt` (0-based): "equal jitter" exponential backoff,

        d = min(cap, base * 2^attempt),   delay = d / 2 + u * d / 2,   u ~ U[0, 1)

    (M. Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015): the wait doubles
    per failed attempt, and the jitter keeps many ranks that failed together from retrying in
    lock step against the same endpoint.
    """
    d = min(cap_sec, base_sec * 2.0 ** attempt)
    return d / 2 + u * d / 2


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the read may help: network and server errors yes, a missing object, a
    denied access or another 4xx (but 408 timeout / 429 throttling) no."""
    if isinstance(exc, _PERMANENT):
        return False
    status = getattr(exc, "status", None)  # aiohttp.ClientResponseError (fsspec's http)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return False
    if isinstance(exc, (OSError, TimeoutError, EOFError)):
        return True
    for module, name in (("aiohttp", "ClientError"), ("botocore.exceptions", "BotoCoreError"),
                         ("botocore.exceptions", "ClientError")):
        try:
            kind = getattr(__import__(module, fromlist=[name]), name)
        except ImportError:
            continue
        if isinstance(exc, kind):
            return True
    return False


class RetryingReader:
    """A forward-reading binary file over `open_stream(url)` that survives transient errors.

    open_stream: returns a fresh binary stream at byte 0 (seekable or not). Only `read` is
    offered (the tar reader needs no more). `retried`: retries so far.
    """

    def __init__(self, url: str, open_stream: Callable[[str], BinaryIO], policy: RetryPolicy,
                 sleep: Callable[[float], None] = time.sleep):
        self.url, self.policy, self.retried = url, policy, 0
        self._open, self._sleep = open_stream, sleep
        self._stream: BinaryIO | None = None
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        attempt = 0
        while True:
            try:
                if self._stream is None:
                    self._stream = self._reopen()
                data = self._stream.read(n)
                self._pos += len(data)
                return data
            except Exception as exc:  # classified below: only transient errors are retried
                self._drop()
                if not is_transient(exc):
                    raise ShardReadError(f"{self.url}: {_describe(exc)}") from exc
                if attempt >= self.policy.retries:
                    raise ShardReadError(f"{self.url}: still failing after {attempt + 1} "
                                         f"attempts ({_describe(exc)})") from exc
                delay = backoff_delay(attempt, self.policy.backoff_sec,
                                      self.policy.max_backoff_sec, random.random())
                log.info("%s: %s at byte %d; retry %d in %.2f s", self.url, _describe(exc),
                         self._pos, attempt + 1, delay)
                self.retried += 1
                attempt += 1
                self._sleep(delay)

    def _reopen(self) -> BinaryIO:
        stream = self._open(self.url)
        if self._pos:
            if getattr(stream, "seekable", lambda: False)():
                stream.seek(self._pos)
            else:  # a pipe: read again up to where we were
                left = self._pos
                while left:
                    chunk = stream.read(min(left, 1 << 20))
                    if not chunk:
                        raise EOFError(f"the stream ended at byte {self._pos - left} on re-reading "
                                       f"up to byte {self._pos}")
                    left -= len(chunk)
        return stream

    def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # a broken stream may fail to close too; it is dropped either way
                pass

    def close(self) -> None:
        """Close the stream in use (read-only: nothing is lost if closing it fails)."""
        self._drop()

    def __enter__(self) -> RetryingReader:
        return self

    def __exit__(self, *exc) -> None:
        self._drop()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
