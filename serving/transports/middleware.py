"""ASGI middleware of the HTTP app: a request body size limit, a deadline for reading a body, an
answer for requests cancelled at shutdown, and per-request metrics."""

from __future__ import annotations

import asyncio
import time

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.core.metrics import ServingMetrics


class BodyLimit:
    """ASGI middleware answering 413 to a request body above `limit` bytes, judged by its
    Content-Length or, when streamed without one, as it arrives: nothing larger is buffered.
    Paths under `skip_prefix` bound their bodies themselves (the v2 infer route)."""

    def __init__(self, app, limit: int, skip_prefix: str):
        self.app, self.limit, self.skip_prefix = app, limit, skip_prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(self.skip_prefix):
            return await self.app(scope, receive, send)
        too_large = HTTPException(413, f"the request body is larger than this server's limit of "
                                       f"{self.limit} bytes; a /v1/generate request is a few "
                                       "JSON fields")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": too_large.detail}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise too_large  # FastAPI re-raises HTTPException from body reading: a 413
            return message

        await self.app(scope, counting_receive, send)


class BodyDeadline:
    """ASGI middleware answering 408 when a request body has not fully arrived `timeout_s` after
    the request started. A client trickling a byte a second otherwise holds its connection (and a
    graceful shutdown, which waits for open requests) forever; uvicorn bounds idle keep-alive
    connections and headers but not bodies."""

    def __init__(self, app, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.timeout_s <= 0:
            return await self.app(scope, receive, send)
        deadline = time.monotonic() + self.timeout_s
        body_done = False

        async def receive_before_deadline():
            nonlocal body_done
            if body_done:  # later receives wait for a disconnect: no deadline on those
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                # Connection: close, or uvicorn goes on reading (and discarding) the trickle.
                raise HTTPException(408, f"the request body did not arrive within "
                                         f"{self.timeout_s:g} s; send it at once",
                                    headers={"Connection": "close"}) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_before_deadline, send)


class CancelledAtShutdown:
    """ASGI middleware answering 503 (JSON, `Connection: close`) to a request whose task is
    cancelled: uvicorn cancels the requests still open when `--shutdown-timeout` runs out, and
    without this each one got a 500 and a traceback in the log. uvicorn logs the cancellation
    once ("Cancel N running task(s)"); the requests themselves log nothing more. A response
    already under way cannot be replaced and is cut."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_and_note_start(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_start)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or not task.cancelling():  # not this request's own cancellation
                raise
            task.uncancel()  # answered here: the task ends normally
            if started:
                return
            message = "the server is shutting down and cancelled this request; retry it"
            body = {"error" if scope["path"].startswith("/v2") else "detail": message}
            await JSONResponse(body, status_code=503, headers={
                "Connection": "close", "Retry-After": "1"})(scope, receive, send)


class RequestMetrics:
    """ASGI middleware counting every HTTP request by route template, method and status, with its
    latency. Plain ASGI rather than `@app.middleware("http")`, which wraps every request in an
    extra task and memory streams on the event loop that also feeds the batcher."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # unless a response starts

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:  # the router put the matched route into this same scope
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(route, scope["method"], status,
                                         time.perf_counter() - start)
