"""The engine's settings, `EngineConfig`, and `option`, the field form every serve setting uses.

Each setting is written once: a dataclass field whose default is the default everywhere (the
Python call, `create_app`, `ServeConfig` and the `bigan serve` flag, which `serving.config`
generates from these fields) and whose metadata carries the flag's help. Standard library only
(and `bigan.ort_session`'s provider names), so `bigan --help` builds the serve flags without the
serving stack installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bigan.ort_session import PROVIDERS

TRT_CACHE_DIR = "~/.cache/bigan/tensorrt"  # TensorRT engines, one subdirectory per model file


def option(default: Any, help: str, *, flag: str | None = None,
           choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field that is also a `bigan serve` option: `flag` defaults to the field name
    with dashes (`max_batch` -> `--max-batch`); `help` is the flag's help, without the default,
    which `serving.config.add_serve_arguments` appends."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


@dataclass
class EngineConfig:
    max_batch: int = option(32, "images per onnxruntime run; larger requests run in chunks")
    max_wait_ms: float | None = option(
        None, "how long a batch that finds the runtime idle waits for more requests (default: "
              "serving.core.engine.DEFAULT_WAIT_MS, 5 ms on CUDA and 0 on CPU, where a larger "
              "batch saves nothing)")
    max_queue: int = option(64, "requests waiting for a batch before 503 + Retry-After")
    provider: str = option("auto", "onnxruntime execution provider (auto: CUDA when a GPU is "
                                   "usable, else CPU)", choices=PROVIDERS)
    threads: int = option(0, "onnxruntime intra-op threads; 0: $OMP_NUM_THREADS, else all cores")
    shrink_arena_every_s: float = option(
        10.0, "give unused onnxruntime arena memory back at most this often, in seconds (0: "
              "after every run, < 0: never); bounds the memory kept after bursts")
    cuda_graphs: bool = option(False, "CUDA provider: pad each batch to the next of a few fixed "
                                      "sizes and replay a captured CUDA graph per size (saves "
                                      "kernel launches at small batches; arena shrinking is off)")
    trt: bool = option(False, "try onnxruntime's TensorRT provider before CUDA, when it is "
                              "installed; engines are cached (--trt-cache) so only the first "
                              "start builds them")
    trt_cache_dir: str = option(TRT_CACHE_DIR, "directory of cached TensorRT engines",
                                flag="--trt-cache")

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider={self.provider!r} must be one of {', '.join(PROVIDERS)}")
        for name in ("max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if (self.max_wait_ms is not None and self.max_wait_ms < 0) or self.threads < 0:
            raise ValueError("max_wait_ms and threads must be >= 0")
