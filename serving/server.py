"""Running the app: `ServeConfig` and `serve(cfg)` (what `bigan serve` calls), under uvicorn.

The models are loaded and checked before the port is bound, so a bad file stops `bigan serve` with a
message instead of a server that answers 500. With `workers > 1` uvicorn starts that many processes,
each with its own session and batcher; they build their app from the config in `$BIGAN_SERVE_CONFIG`
through `app_from_env`, the same factory Ray Serve replicas use (`serving.ray_serve`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field

from fastapi import FastAPI

from serving.app import create_app
from serving.engine import EngineConfig
from serving.repository import ModelRepository

log = logging.getLogger(__name__)

CONFIG_ENV = "BIGAN_SERVE_CONFIG"


@dataclass
class ServeConfig:
    model: str                   # .onnx file, or a repository directory (serving.repository)
    name: str | None = None      # model name in URLs (/v2/models/NAME) of a one-model repository;
                                 # default: the file's stem
    host: str = "127.0.0.1"      # bind address; 0.0.0.0 to accept outside connections
    port: int = 8000
    grpc_port: int | None = None  # KServe v2 over gRPC on this port too (Triton's is 8001)
    workers: int = 1             # uvicorn processes (or Ray Serve replicas), each with its own session
    max_images: int = 64         # n per /v1/generate request, N per /v2 infer request
    cache_mb: float = 64.0       # /v1 response cache in MiB (serving.cache); 0 turns it off
    body_timeout_s: float = 30.0  # a request body must arrive within this, else 408 (0: no limit)
    shutdown_timeout_s: float = 15.0  # on SIGTERM, requests still open after this are cancelled
                                      # (under Kubernetes' default 30 s grace period)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if isinstance(self.engine, dict):
            self.engine = EngineConfig(**self.engine)
        if self.workers < 1 or self.max_images < 1:
            raise ValueError(f"workers={self.workers} and max_images={self.max_images} must be >= 1")
        for name in ("port", "grpc_port"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name}={getattr(self, name)} must be in 0..65535")
        if self.cache_mb < 0:
            raise ValueError(f"cache_mb={self.cache_mb} must be >= 0 (0 turns the cache off)")
        if self.body_timeout_s < 0 or self.shutdown_timeout_s <= 0:
            raise ValueError(f"body_timeout_s={self.body_timeout_s} must be >= 0 and "
                             f"shutdown_timeout_s={self.shutdown_timeout_s} > 0")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))


def build_app(cfg: ServeConfig) -> FastAPI:
    """Load the models (raises ModelFileError naming a bad file) and wrap them in the HTTP app."""
    return create_app(ModelRepository.open(cfg.model, cfg.engine, cfg.name), cfg.max_images,
                      cfg.body_timeout_s, cfg.cache_mb, cfg.grpc_port, cfg.host)


def app_from_env() -> FastAPI:
    """The app for the config in $BIGAN_SERVE_CONFIG (uvicorn --factory workers, Ray replicas)."""
    if CONFIG_ENV not in os.environ:
        raise RuntimeError(f"${CONFIG_ENV} is not set; start the server with `bigan serve`")
    # A fresh worker process: log like `bigan serve` does (a no-op where logging is configured).
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return build_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))


def serve(cfg: ServeConfig) -> None:
    """Serve until interrupted."""
    import uvicorn

    app = build_app(cfg)  # fails here, before binding, for a bad model file
    # Without a graceful-shutdown bound uvicorn waits on SIGTERM for every open request, however
    # slowly its client sends; after it, open requests are cancelled and the process exits.
    options = dict(host=cfg.host, port=cfg.port, log_level="info",
                   timeout_graceful_shutdown=cfg.shutdown_timeout_s)
    if cfg.workers == 1:
        uvicorn.run(app, **options)
        return
    del app  # each worker process loads its own session
    os.environ[CONFIG_ENV] = cfg.to_json()
    uvicorn.run("serving.server:app_from_env", factory=True, workers=cfg.workers, **options)
