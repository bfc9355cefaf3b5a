"""What every transport of one server shares: the core objects the app builds once, and how an
HTTP route reaches them.

`create_app` builds one `ServerState` (the repository, the metrics, the response cache and the
request limit) and keeps it as `app.state.server`; each route of `serving.transports` takes it with
`Depends(server_state)`, and the gRPC service is given it at start. No transport holds an engine:
an engine is looked up per request in the repository, so a reload is seen at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from serving.core.cache import ResponseCache
from serving.core.metrics import ServingMetrics
from serving.core.repository import ModelRepository


@dataclass
class ServerState:
    repository: ModelRepository
    metrics: ServingMetrics
    cache: ResponseCache | None  # /v1 responses; None when the cache is off
    max_images: int              # n per /v1 request, N per /v2 infer request
    grpc_port: int | None = None  # KServe v2 over gRPC on this port too (0: any free port)
    grpc_host: str = "127.0.0.1"
    shutdown_timeout_s: float = 15.0  # gRPC calls' grace at shutdown (ServeConfig's default)


async def server_state(request: Request) -> ServerState:
    """The `ServerState` of the app serving `request` (a FastAPI dependency). `async` although it
    never awaits: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per
    request that cost the event loop more than the lookup itself."""
    return request.app.state.server
