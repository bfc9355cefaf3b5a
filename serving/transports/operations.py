"""The operations routes: `/healthz` (the process is up), `/readyz` (every model is loaded and
batching; 503 while loading, so a load balancer waits) and `/metrics` (Prometheus text of
`serving.core.metrics`). An APIRouter that `serving.app` includes.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from serving.transports.server_state import ServerState, server_state

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: ServerState = Depends(server_state)):
    repo = state.repository
    if not repo.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    if len(repo.models) == 1:
        return {"status": "ready", "model": next(iter(repo.models))}
    return {"status": "ready", "models": sorted(repo.models)}


@router.get("/metrics", response_class=Response)
def prometheus(state: ServerState = Depends(server_state)):
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)
