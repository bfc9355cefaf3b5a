"""gRPC requests in the server's metrics: a `grpc.aio` server interceptor that counts every RPC of
`serving.transports.grpc_service` by method and status code, with its latency
(`bigan_grpc_requests_total`, `bigan_grpc_request_duration_seconds`), as the HTTP middleware
does for HTTP. Inference through gRPC reaches the engines' hooks like HTTP's, so Triton's
`nv_inference_*` counters see it without this module.

Only methods the service registers get a handler, so the `method` label takes the service's own
RPC names and no client can add a label value; an unknown method is answered UNIMPLEMENTED by
grpc before any handler runs, and is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc

from serving.core.metrics import ServingMetrics


def _code(context: Any, failed: BaseException | None) -> str:
    """The status name the RPC ended with: the one the servicer set (abort included), else OK,
    CANCELLED for a cancelled call, UNKNOWN for an exception grpc turns into UNKNOWN."""
    code = context.code()
    if code is not None:
        return code.name if isinstance(code, grpc.StatusCode) else str(code)
    if failed is None:
        return "OK"
    # A client gone mid-stream closes the stream's generator (GeneratorExit).
    cancelled = isinstance(failed, (asyncio.CancelledError, GeneratorExit))
    return "CANCELLED" if cancelled else "UNKNOWN"


class GrpcMetrics(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServingMetrics):
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        wrap = dict(request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary),
                                                       **wrap)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream), **wrap)
        return handler  # the service has no other kind of RPC

    @contextlib.contextmanager
    def _observed(self, method: str, context):
        """Count one call with its status code and duration, however it ends."""
        start, failed = time.perf_counter(), None
        try:
            yield
        except BaseException as e:
            failed = e
            raise
        finally:
            self.metrics.observe_grpc(method, _code(context, failed), time.perf_counter() - start)

    def _unary(self, method: str, behavior):
        async def counted(request, context):
            with self._observed(method, context):
                return await behavior(request, context)
        return counted

    def _stream(self, method: str, behavior):
        async def counted(requests, context):
            with self._observed(method, context):
                async for response in behavior(requests, context):
                    yield response
        return counted
