"""Running the app: `serve(cfg)` (what `bigan serve` calls) under uvicorn, for a `ServeConfig`
(`serving.config`, re-exported here).

The models are loaded and checked before the port is bound, so a bad file stops `bigan serve` with a
message instead of a server that answers 500. With `workers > 1` uvicorn starts that many processes,
each with its own session and batcher; they build their app from the config in `$BIGAN_SERVE_CONFIG`
through `app_from_env`. Ray Serve replicas (`serving.ray_serve`) call `build_app` with the config
they are given.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI

from serving.app import create_app
from serving.config import ServeConfig
from serving.core.repository import ModelRepository

__all__ = ["CONFIG_ENV", "ServeConfig", "app_from_env", "build_app", "serve"]

log = logging.getLogger(__name__)

CONFIG_ENV = "BIGAN_SERVE_CONFIG"


def build_app(cfg: ServeConfig) -> FastAPI:
    """Load the models (raises ModelFileError naming a bad file) and wrap them in the HTTP app."""
    return create_app(ModelRepository.open(cfg.model, cfg.engine, cfg.name),
                      max_images=cfg.max_images, body_timeout_s=cfg.body_timeout_s,
                      cache_mb=cfg.cache_mb, grpc_port=cfg.grpc_port, grpc_host=cfg.host,
                      shutdown_timeout_s=cfg.shutdown_timeout_s)


def app_from_env() -> FastAPI:
    """The app for the config in $BIGAN_SERVE_CONFIG (uvicorn --factory workers)."""
    if CONFIG_ENV not in os.environ:
        raise RuntimeError(f"${CONFIG_ENV} is not set; start the server with `bigan serve`")
    # A fresh worker process: log like `bigan serve` does (a no-op where logging is configured).
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return build_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))


def serve(cfg: ServeConfig) -> None:
    """Serve until interrupted."""
    import uvicorn

    from serving.http_protocol import GuardedHttpToolsProtocol

    app = build_app(cfg)  # fails here, before binding, for a bad model file
    # Without a graceful-shutdown bound uvicorn waits on SIGTERM for every open request, however
    # slowly its client sends; after it, open requests are cancelled and the process exits.
    options = dict(host=cfg.host, port=cfg.port, log_level="info",
                   timeout_graceful_shutdown=cfg.shutdown_timeout_s,
                   http=GuardedHttpToolsProtocol)  # header deadline, connection cap
    os.environ[CONFIG_ENV] = cfg.to_json()  # the protocol's bounds, here and in every worker
    if cfg.workers == 1:
        uvicorn.run(app, **options)
        return
    del app  # each worker process loads its own session
    uvicorn.run("serving.server:app_from_env", factory=True, workers=cfg.workers, **options)
