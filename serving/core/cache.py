"""A response cache for /v1/generate: bigan's answers are deterministic per (model file, class,
seed, psi), so a repeated request can be served without running the generator at all.

`ResponseCache(max_bytes)` is an LRU of finished responses (the encoded PNG, .npy or JSON body and
its headers) keyed by `CacheKey`: the sha256 of the model file (so a replaced file never serves
stale images), the class, the seed, psi, the format and the size of the answer (n, grid columns).
It is bounded by the bytes of the bodies it holds; the least recently used entries go first, and
a body larger than the whole budget is not kept. Requests without a seed draw a random one and are
not cached: they would only push out entries that can be asked for again. Hits and misses are
counted per model, for /metrics and the v2 statistics.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

ENTRY_OVERHEAD_BYTES = 512  # key, headers and bookkeeping of one entry, counted with its body


@dataclass(frozen=True)
class CacheKey:
    model_sha256: str       # sha256 of the .onnx file the images came from
    model_name: str         # the name the JSON body reports
    class_id: int
    seed: int
    truncation: float | None
    format: str             # png | npy | json
    n: int                  # images
    columns: int | None     # grid width of a png


@dataclass
class CachedResponse:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.body) + ENTRY_OVERHEAD_BYTES


class ResponseCache:
    """An LRU of `CachedResponse`s bounded at `max_bytes`; thread-safe."""

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes={max_bytes} must be > 0 (no cache: pass none)")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: collections.OrderedDict[CacheKey, CachedResponse] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits: collections.Counter[str] = collections.Counter()    # by model name
        self.misses: collections.Counter[str] = collections.Counter()  # by model name

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> CachedResponse | None:
        """The cached response (now the most recently used), or None; counts a hit or a miss."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses[key.model_name] += 1
                return None
            self._entries.move_to_end(key)
            self.hits[key.model_name] += 1
            return found

    def put(self, key: CacheKey, response: CachedResponse) -> None:
        """Keep `response`, evicting least recently used entries to stay within max_bytes."""
        if response.size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.size
            self._entries[key] = response
            self.bytes += response.size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.size
