"""The HTTP app: `create_app(models)` composes the core and the transports into one FastAPI app.

`models` is one `Engine` or a `ModelRepository` of several (each version with its own engine and
batcher). The app builds the core's shared objects once (the repository, the Prometheus metrics,
the response cache) as a `ServerState`, then only composes: the routers of
`serving.transports` (v1, operations, KServe v2 HTTP, the page), their error handlers, the
middleware (/v1/generate's lean path, body limit, body deadline, answers at shutdown, request
metrics) and a lifespan that starts the batchers (and the gRPC transport, with `grpc_port`) and
stops them. Every default is `ServeConfig`'s (`serving.config`).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving.config import ServeConfig
from serving.core.cache import ResponseCache
from serving.core.engine import Engine
from serving.core.metrics import ServingMetrics
from serving.core.repository import ModelRepository
from serving.transports import kserve_http, operations, page, v1
from serving.transports.errors import EXCEPTION_HANDLERS
from serving.transports.middleware import (BodyDeadline, BodyLimit, CancelledAtShutdown,
                                           RequestMetrics)
from serving.transports.server_state import ServerState

MAX_BODY_BYTES = 64 << 10  # a /v1 request is a few fields of JSON; /v2 infer sets its own limit


def create_app(models: Engine | ModelRepository, max_images: int = ServeConfig.max_images,
               body_timeout_s: float = ServeConfig.body_timeout_s,
               cache_mb: float = ServeConfig.cache_mb, grpc_port: int | None = None,
               grpc_host: str = ServeConfig.host,
               shutdown_timeout_s: float = ServeConfig.shutdown_timeout_s) -> FastAPI:
    """The app serving `models`; the engines' batchers start and stop with the app's lifespan.
    `max_images` bounds n on /v1/generate and N on /v2 infer; a request body must arrive within
    `body_timeout_s` (0: no limit); /v1 responses are cached in up to `cache_mb` MiB (0: off).
    With `grpc_port` (0: any free port, then `app.state.grpc_port`), the lifespan also runs the
    KServe v2 gRPC service (`serving.transports.grpc_service`) over the same engines, whose calls
    get `shutdown_timeout_s` to finish when the app stops."""
    state = server_state(models, max_images, cache_mb, grpc_port, grpc_host)
    state.shutdown_timeout_s = shutdown_timeout_s
    app = FastAPI(title="bigan generator", version="1",
                  description="Class-conditional images from exported bigan generators",
                  lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS,
                  docs_url=None, redoc_url=None)  # /docs: serving.transports.page
    app.state.server = state
    app.add_middleware(v1.LeanGenerate)  # innermost: the layers outside see both of its paths
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, skip_prefix="/v2/")
    app.add_middleware(BodyDeadline, timeout_s=body_timeout_s)
    app.add_middleware(CancelledAtShutdown)  # inside the metrics: they count its 503s
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # outermost: counts the 413s too
    for router in (v1.router, operations.router, kserve_http.router, page.router):
        app.include_router(router)
    app.mount("/static", page.static_files(), name="static")
    app.openapi = page.exact_bounds_openapi(app)  # 2^63 - 1, not 9.223372036854776e+18
    return app


def server_state(models: Engine | ModelRepository, max_images: int, cache_mb: float,
                 grpc_port: int | None, grpc_host: str) -> ServerState:
    """The core objects the transports share: the repository (every engine's batches counted in
    the metrics, also those a reload opens), the metrics and the response cache."""
    if cache_mb < 0:
        raise ValueError(f"cache_mb={cache_mb} must be >= 0 (0 turns the cache off)")
    repo = models if isinstance(models, ModelRepository) else ModelRepository([models])
    metrics = ServingMetrics()
    cache = ResponseCache(int(cache_mb * (1 << 20))) if cache_mb > 0 else None
    if cache is not None:
        metrics.track_cache(cache)

    def queues() -> dict[str, tuple[int, int]]:
        return {name: (sum(e.batcher.depth for e in versions.values()),
                       sum(e.batcher.queued_images for e in versions.values()))
                for name, versions in repo.models.items()}
    metrics.track_queue(queues)
    repo.on_engine = metrics.track_engine
    for engine in repo.engines():
        metrics.track_engine(engine)
    return ServerState(repo, metrics, cache, max_images, grpc_port, grpc_host)


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Start the batchers (and the gRPC transport, when a port is set); stop them at the end."""
    state: ServerState = app.state.server
    await state.repository.start()
    grpc_server = None
    try:
        if state.grpc_port is not None:
            try:
                from serving.transports.grpc_service import start_grpc
            except ImportError as e:
                raise RuntimeError(str(e)) from e
            grpc_server = await start_grpc(state)
            app.state.grpc_port = grpc_server.bound_port
        yield
    finally:
        if grpc_server is not None:
            # HTTP requests had up to --shutdown-timeout before this lifespan ended; gRPC calls
            # (streams included) get the same bound, then are cancelled.
            await grpc_server.stop(grace=state.shutdown_timeout_s)
        await state.repository.stop()
