"""The engine's settings, `EngineConfig`, and `option`, the field form every serve setting uses.

Each setting is written once: a dataclass field whose default is the default everywhere (the
Python call, `create_app`, `ServeConfig` and the `bigan serve` flag, which `serving.config`
generates from these fields) and whose metadata carries the flag's help. Standard library only
(and `bigan.ort_session`'s provider names), so `bigan --help` builds the serve flags without the
serving stack installed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from bigan.ort_session import PROVIDERS

TRT_CACHE_DIR = "~/.cache/bigan/tensorrt"  # TensorRT engines, one subdirectory per model file
# A model name is one URL path segment (/v2/models/NAME/infer) and one directory of a Triton
# repository: letters, digits, '.', '_', '-', not starting with '.' or '-'.
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# Triton's GET /v2/models/stats is every model's statistics, so a model of that name is
# unreachable there (tritonclient's get_inference_statistics() asks that path).
RESERVED_MODEL_NAMES = ("stats",)


def check_model_name(name: str) -> None:
    """Raise ValueError saying why `name` cannot name a model."""
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"model name {name[:80]!r} must be 1-128 letters, digits, '.', '_' or "
                         "'-', not starting with '.' or '-' (it is a URL path segment)")
    if name in RESERVED_MODEL_NAMES:
        raise ValueError(f"model name {name!r} is taken by the route /v2/models/{name} (every "
                         "model's statistics); choose another")


def check_finite(config: Any) -> None:
    """Raise ValueError naming the flag of the first float option of dataclass `config` that is
    NaN or infinite: argparse's float() takes "nan" and "inf", and comparisons with NaN are all
    false, so range checks alone let them through (a NaN body timeout answered every body 408)."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            raise ValueError(f"{flag}={value} must be a finite number")


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
        check_finite(self)
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider={self.provider!r} must be one of {', '.join(PROVIDERS)}")
        for name in ("max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if (self.max_wait_ms is not None and self.max_wait_ms < 0) or self.threads < 0:
            raise ValueError("max_wait_ms and threads must be >= 0")
