"""Running the app: `serve(cfg)` (what `bigan serve` calls) under uvicorn, for a `ServeConfig`
(`serving.config`, re-exported here).

First the address is tried (`check_bindable`: bound once and let go, so `--host`/`--port` that
cannot be listened on are one line before anything loads); then the models are loaded and checked
before the port is bound, so a bad file stops `bigan serve` with a message instead of a server
that answers 500. With `workers > 1` uvicorn starts that many processes,
each with its own session and batcher; they build their app from the config in `$BIGAN_SERVE_CONFIG`
through `app_from_env`. Ray Serve replicas (`serving.ray_serve`) call `build_app` with the config
they are given.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

from fastapi import FastAPI

from serving.app import create_app
from serving.config import ServeConfig
from serving.core.repository import ModelRepository

__all__ = ["CONFIG_ENV", "BindError", "ServeConfig", "app_from_env", "build_app",
           "check_bindable", "serve"]

log = logging.getLogger(__name__)

CONFIG_ENV = "BIGAN_SERVE_CONFIG"


def build_app(cfg: ServeConfig) -> FastAPI:
    """Load the models (raises ModelFileError naming a bad file) and wrap them in the HTTP app."""
    return create_app(ModelRepository.open(cfg.model, cfg.engine, cfg.name),
                      max_images=cfg.max_images, body_timeout_s=cfg.body_timeout_s,
                      cache_mb=cfg.cache_mb, grpc_port=cfg.grpc_port, grpc_host=cfg.host,
                      shutdown_timeout_s=cfg.shutdown_timeout_s)


class BindError(ValueError):
    """--host/--port name an address this machine cannot listen on; the message names the flag."""


def check_bindable(host: str, port: int) -> None:
    """Raise BindError unless a listening socket can be bound to (host, port), as uvicorn binds
    it (SO_REUSEADDR). A host can resolve and still not be this machine's (192.0.2.1), and a port
    can be taken: uvicorn found out only after the models were loaded, logged its own text and
    exited 3, where a bad argument exits 2 with one line. The socket is closed again at once, so
    another process may still take the port before uvicorn binds it (uvicorn then fails as
    before)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            why = e.strerror or str(e)
            if e.errno == errno.EADDRNOTAVAIL:
                raise BindError(f"--host {host}: cannot listen on this address ({why}): it is "
                                "not one of this machine's; use one of its addresses, 127.0.0.1 "
                                "or 0.0.0.0") from None
            if e.errno == errno.EADDRINUSE:
                raise BindError(f"--port {port}: already in use on {host} ({why}); pick another "
                                "port or stop the process holding it") from None
            if e.errno == errno.EACCES:
                raise BindError(f"--port {port}: not allowed on {host} ({why}); ports below 1024 "
                                "need privileges, use a higher one") from None
            raise BindError(f"--host {host} --port {port}: cannot listen there ({why})") from None


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

    check_bindable(cfg.host, cfg.port)  # before the models load: a bad address fails at once
    app = build_app(cfg)  # fails here, before binding, for a bad model file
    # Without a graceful-shutdown bound uvicorn waits on SIGTERM for every open request, however
    # slowly its client sends; after it, open requests are cancelled and the process exits.
    options = dict(host=cfg.host, port=cfg.port, log_level="info", access_log=cfg.access_log,
                   timeout_graceful_shutdown=cfg.shutdown_timeout_s,
                   http=GuardedHttpToolsProtocol)  # header deadline, connection cap
    os.environ[CONFIG_ENV] = cfg.to_json()  # the protocol's bounds, here and in every worker
    if cfg.workers == 1:
        uvicorn.run(app, **options)
        return
    del app  # each worker process loads its own session
    uvicorn.run("serving.server:app_from_env", factory=True, workers=cfg.workers, **options)
