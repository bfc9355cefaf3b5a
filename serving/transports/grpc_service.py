"""The KServe v2 gRPC protocol (Triton's `inference.GRPCInferenceService`), so `tritonclient.grpc`
works unchanged: live/ready, server and model metadata, model config, infer (raw tensor contents,
as the client sends them, or typed contents), the bidirectional ModelStreamInfer (the client's
`start_stream` / `async_stream_infer`), statistics and the repository extension.

`start_grpc(state)` runs `InferenceService` in a `grpc.aio` server on the event loop the HTTP app
runs on (the app's lifespan starts and stops it), so both transports share the repository, its
engines and their micro-batchers: a gRPC request and an HTTP request can land in the same batch.
Requests are read and checked by `serving.transports.v2_protocol`, the code the HTTP routes use,
with the same limits and the same advertised extensions; errors map to status codes: malformed
input INVALID_ARGUMENT, unknown model or version NOT_FOUND, a full queue UNAVAILABLE (its message
says when to retry).

The message classes are the ones generated from Triton's own .proto files, shipped with the
`grpc` extra (tritonclient, grpcio, protobuf); this module imports them, and the app imports this
module only when a gRPC port is asked for.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

try:
    import grpc
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
except ImportError as e:
    raise ImportError(f"--grpc-port needs grpcio and Triton's protocol messages ({e}): "
                      "pip install 'bigan[grpc]' -c constraints.txt") from e

from bigan.ort_session import ModelFileError
from serving.core.batcher import QueueFull
from serving.core.repository import UnknownModel
from serving.transports.grpc_metrics import GrpcMetrics
from serving.transports.server_state import ServerState
from serving.transports.v2_protocol import (InferError, check_load_parameters, model_config,
                                            model_metadata, model_statistics, read_inputs,
                                            server_metadata)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 20  # requests are small; answers of 64 images of 512 px are ~50 MB
Code = grpc.StatusCode
pb2 = service_pb2


async def start_grpc(state: ServerState):
    """A started `grpc.aio.Server` on state.grpc_host:state.grpc_port (0: a free port, see
    `.bound_port`) serving `InferenceService(state)`."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
                             interceptors=[GrpcMetrics(state.metrics)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state), server)
    server.bound_port = server.add_insecure_port(f"{state.grpc_host}:{state.grpc_port}")
    await server.start()
    log.info("KServe v2 gRPC on %s:%d", state.grpc_host, server.bound_port)
    return server


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's `GRPCInferenceService` over a server's repository (the RPCs it does not
    implement, shared memory, trace and log settings, answer UNIMPLEMENTED)."""

    def __init__(self, state: ServerState):
        self.state = state
        self.repo = state.repository

    async def _engine(self, context, name: str, version: str):
        try:
            return self.repo.get(name, version or None)
        except UnknownModel as e:
            await context.abort(Code.NOT_FOUND, str(e))

    async def ServerLive(self, request, context):
        return pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb2.ServerReadyResponse(ready=self.repo.ready)

    async def ModelReady(self, request, context):
        try:
            engine = self.repo.get(request.name, request.version or None)
        except UnknownModel:
            return pb2.ModelReadyResponse(ready=False)
        return pb2.ModelReadyResponse(ready=engine.ready)

    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(server_metadata(), pb2.ServerMetadataResponse())

    async def ModelMetadata(self, request, context):
        engine = await self._engine(context, request.name, request.version)
        return json_format.ParseDict(model_metadata(engine, self.repo),
                                     pb2.ModelMetadataResponse())

    async def ModelConfig(self, request, context):
        engine = await self._engine(context, request.name, request.version)
        config = json_format.ParseDict(model_config(engine, self.state.max_images),
                                       model_config_pb2.ModelConfig())
        return pb2.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):
        if request.name:
            engine = await self._engine(context, request.name, request.version)
            engines = ([engine] if request.version
                       else list(self.repo.models[request.name].values()))
        else:
            engines = self.repo.engines()
        stats = {"model_stats": [model_statistics(e, self.state.cache) for e in engines]}
        return json_format.ParseDict(stats, pb2.ModelStatisticsResponse())

    async def RepositoryIndex(self, request, context):
        models = [m for m in self.repo.index() if not request.ready or m["state"] == "READY"]
        return json_format.ParseDict({"models": models}, pb2.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request, context):
        try:
            check_load_parameters(list(request.parameters))
            await self.repo.load(request.model_name)
        except InferError as e:
            await context.abort(Code.INVALID_ARGUMENT, str(e))
        except UnknownModel as e:
            await context.abort(Code.NOT_FOUND, str(e))
        except ModelFileError as e:
            await context.abort(Code.INVALID_ARGUMENT, str(e))
        return pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            await self.repo.unload(request.model_name)
        except UnknownModel as e:
            await context.abort(Code.NOT_FOUND, str(e))
        return pb2.RepositoryModelUnloadResponse()

    async def _infer(self, request):
        """The ModelInferResponse for `request`; raises UnknownModel, InferError, QueueFull."""
        with self.repo.use(request.model_name, request.model_version or None) as engine:
            z, y, psi = read_inputs(*_as_v2_inputs(request), engine, self.state.max_images)
            for out in request.outputs:
                if out.name != "images":
                    raise InferError("the only output is 'images' (UINT8 [N, H, W, C])")
            images = await engine.submit(z, y, psi)
        output = pb2.ModelInferResponse.InferOutputTensor(
            name="images", datatype="UINT8", shape=list(images.shape))
        return pb2.ModelInferResponse(model_name=engine.name, model_version=engine.version,
                                      id=request.id, outputs=[output],
                                      raw_output_contents=[images.tobytes()])

    async def ModelInfer(self, request, context):
        try:
            return await self._infer(request)
        except UnknownModel as e:
            await context.abort(Code.NOT_FOUND, str(e))
        except InferError as e:
            await context.abort(Code.INVALID_ARGUMENT, str(e))
        except QueueFull as e:
            await context.abort(Code.UNAVAILABLE, str(e))

    async def _stream_answer(self, request, answers: asyncio.Queue) -> None:
        """Put the answer to one streamed request on `answers`: its response, or its error."""
        try:
            await answers.put(pb2.ModelStreamInferResponse(
                infer_response=await self._infer(request)))
        except (UnknownModel, InferError, QueueFull) as e:
            await answers.put(pb2.ModelStreamInferResponse(
                error_message=str(e), infer_response=pb2.ModelInferResponse(
                    id=request.id, model_name=request.model_name)))

    async def ModelStreamInfer(self, request_iterator, context):
        """Triton's bidirectional stream: every request read is answered on the stream, in the
        order the answers are ready (a client matches them by `id`); requests run concurrently,
        so those of one stream share batches like separate calls do. A failing request gets
        `error_message` (what the unary call's status would say) and the stream goes on, as
        Triton does."""
        answers: asyncio.Queue = asyncio.Queue()
        running: set[asyncio.Task] = set()

        async def read():
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(self._stream_answer(request, answers))
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.gather(*running)
            finally:
                await answers.put(None)  # the end of the stream, also after an error

        reader = asyncio.create_task(read())
        try:
            while (item := await answers.get()) is not None:
                yield item
            await reader  # raises what reading raised
        finally:
            for task in (reader, *running):
                task.cancel()


def _as_v2_inputs(request) -> tuple[list[dict], bytes]:
    """A gRPC ModelInferRequest's inputs as the HTTP form's `inputs` entries and binary section,
    for `v2_protocol.read_inputs`: raw contents become binary_data_size parameters (in order),
    typed contents become `data`."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InferError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; give "
                         "one per input, or none and typed contents")
    items = []
    for i, tensor in enumerate(request.inputs):
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                "shape": list(tensor.shape)}
        if raw:
            if tensor.HasField("contents"):  # which one would count? Triton refuses both too
                raise InferError(f"input {tensor.name[:80]!r} has both raw_input_contents and "
                                 "typed contents; send one of them")
            item["parameters"] = {"binary_data_size": len(raw[i])}
        elif tensor.datatype == "FP32":
            item["data"] = list(tensor.contents.fp32_contents)
        elif tensor.datatype == "INT64":
            item["data"] = list(tensor.contents.int64_contents)
        items.append(item)
    return items, b"".join(raw)
