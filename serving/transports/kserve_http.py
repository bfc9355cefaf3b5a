"""The KServe v2 / Triton HTTP inference protocol for the exported generator.

Routes (`router`, which `serving.app` includes): `GET /v2`, `/v2/health/live`, `/v2/health/ready`,
`/v2/models/{name}[/versions/{version}]` (no version: the model's highest), `.../ready`,
`.../config` and `.../stats` (Triton's extensions, which `tritonclient` asks for), `POST
/v2/repository/index` and `/v2/repository/models/{name}/load|unload` (Triton's repository
extension: load re-reads a model's files, see `serving.core.repository`), and `POST .../infer`
with inputs `z` FP32 [N, dim_z], `y` INT64 [N] (and, for a psi-input model, an optional `psi`
FP32 [N] or [1]) and the output `images` UINT8 [N, H, W, C] (read
and checked by `serving.transports.v2_protocol`). Tensor data travels as JSON or with Triton's
binary tensor extension (a JSON header of `Inference-Header-Content-Length` bytes followed by the
raw little-endian tensors), which is what `tritonclient.http` sends by default, so the official
client works unchanged. Errors are `{"error": message}` with a 4xx status, the shape the client
reads (`serving.transports.errors`). Here z is whatever the client sends: seeds are the v1 API's
business, and psi only tells a psi-input graph which statistics z was drawn for.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bigan.ort_session import ModelFileError
from serving.core.batcher import QueueFull
from serving.core.engine import Engine
from serving.core.repository import ModelRepository, UnknownModel
from serving.transports import json_body
from serving.transports.errors import v2_error
from serving.transports.server_state import ServerState, server_state
from serving.transports.v2_protocol import (InferError, check_load_parameters, model_config,
                                            model_metadata, model_statistics, read_inputs)
from serving.transports.v2_protocol import server_metadata as v2_server_metadata

_INFER_BODY_SCHEMA = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": {
            "type": "object", "required": ["name", "shape", "datatype"],
            "properties": {"name": {"type": "string"},
                           "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                           "datatype": {"type": "string"},
                           "parameters": {"type": "object"},
                           "data": {"type": "array"}}}},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}},
    },
}


def parse_infer_request(body: bytes, header_length: str | None, engine: Engine,
                        max_images: int) -> tuple[np.ndarray, np.ndarray, Any, dict[str, Any], bool]:
    """(z, y, psi, the request's JSON, whether outputs go back as binary) from a v2 infer body
    (psi: `v2_protocol.read_inputs`'s)."""
    header, binary = _split_body(body, header_length)
    try:
        request, huge = json_body.loads(header)
    except RecursionError:
        raise InferError("the request body nests JSON too deeply to parse") from None
    except ValueError as e:  # also UnicodeDecodeError
        raise InferError(f"the request body is not JSON this server can read ({str(e)[:200]})"
                         ) from None
    if huge and (where := json_body.huge_integer_at(request)) is not None:
        raise InferError(f"{where}: an integer beyond int64; no field of a request takes one")
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InferError("the request must be a JSON object with an 'inputs' list")
    z, y, psi = read_inputs(request["inputs"], binary, engine, max_images)
    return z, y, psi, request, _binary_output(request)


def encode_infer_response(engine: Engine, images: np.ndarray, request: dict[str, Any],
                          binary: bool) -> Response:
    output: dict[str, Any] = {"name": "images", "datatype": "UINT8", "shape": list(images.shape)}
    if binary:
        output["parameters"] = {"binary_data_size": images.nbytes}
    else:
        output["data"] = images.reshape(-1).tolist()
    result: dict[str, Any] = {"model_name": engine.name, "model_version": engine.version,
                              "outputs": [output]}
    if isinstance(request.get("id"), str):
        result["id"] = request["id"]
    header = json.dumps(result).encode()
    if not binary:
        return Response(header, media_type="application/json")
    return Response(header + images.tobytes(), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


router = APIRouter(tags=["kserve-v2"])
_INFER_OPENAPI = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _INFER_BODY_SCHEMA}}}}


def _lookup(repo: ModelRepository, name: str, version: str | None) -> Engine | JSONResponse:
    try:
        return repo.get(name, version)
    except UnknownModel as e:
        return v2_error(str(e), 404)


def _stats(state: ServerState, engines: list[Engine]) -> dict[str, Any]:
    return {"model_stats": [model_statistics(e, state.cache) for e in engines]}


@router.get("/v2")
def server_metadata():
    return v2_server_metadata()


@router.get("/v2/health/live")
def live():
    return {"live": True}


@router.get("/v2/health/ready")
def ready(state: ServerState = Depends(server_state)):
    return ({"ready": True} if state.repository.ready
            else v2_error("the models are not loaded yet", 503))


@router.get("/v2/models/stats")  # before /v2/models/{name} claims "stats"
def all_statistics(state: ServerState = Depends(server_state)):
    return _stats(state, state.repository.engines())


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
def metadata(name: str, version: str | None = None, state: ServerState = Depends(server_state)):
    found = _lookup(state.repository, name, version)
    return found if isinstance(found, JSONResponse) else model_metadata(found, state.repository)


@router.get("/v2/models/{name}/config")
@router.get("/v2/models/{name}/versions/{version}/config")
def config(name: str, version: str | None = None, state: ServerState = Depends(server_state)):
    found = _lookup(state.repository, name, version)
    return found if isinstance(found, JSONResponse) else model_config(found, state.max_images)


@router.get("/v2/models/{name}/stats")
@router.get("/v2/models/{name}/versions/{version}/stats")
def statistics(name: str, version: str | None = None,
               state: ServerState = Depends(server_state)):
    found = _lookup(state.repository, name, version)
    if isinstance(found, JSONResponse):
        return found
    return _stats(state, [found] if version is not None
                  else list(state.repository.models[name].values()))


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
def model_ready(name: str, version: str | None = None,
                state: ServerState = Depends(server_state)):
    found = _lookup(state.repository, name, version)
    if isinstance(found, JSONResponse):
        return found
    return {"name": name, "ready": True} if found.ready else v2_error("not ready", 503)


@router.post("/v2/repository/index")
def repository_index(state: ServerState = Depends(server_state)):
    return state.repository.index()


@router.post("/v2/repository/models/{name}/load")
async def load(name: str, request: Request, state: ServerState = Depends(server_state)):
    try:
        body = await read_body(request, 64 << 10, "; a load request carries no files here")
        check_load_parameters(_load_parameters(body))
        await state.repository.load(name)
    except InferError as e:
        return v2_error(str(e), e.status, e.headers)
    except UnknownModel as e:
        return v2_error(str(e), 404)
    except ModelFileError as e:
        return v2_error(str(e), 400)
    return {}


def _load_parameters(body: bytes) -> list[str]:
    """The parameter names of a load request's body: none, or Triton's `{"parameters": {...}}`
    (tritonclient sends `{}` for a plain load)."""
    if not body.strip():
        return []
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):  # also bad UTF-8 and ints past Python's limit
        raise InferError("the load request body is not JSON; send none, or Triton's "
                         '{"parameters": {...}}') from None
    if not isinstance(request, dict):
        raise InferError("the load request body must be a JSON object")
    if unknown := sorted(set(request) - {"parameters"}):
        raise InferError(f"the load request has field {unknown[0][:80]!r}; Triton's has only "
                         "'parameters'")
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise InferError("the load request's 'parameters' must be an object")
    return list(params)


@router.post("/v2/repository/models/{name}/unload")
async def unload(name: str, state: ServerState = Depends(server_state)):
    try:
        await state.repository.unload(name)
    except UnknownModel as e:
        return v2_error(str(e), 404)
    return {}


@router.post("/v2/models/{name}/infer", openapi_extra=_INFER_OPENAPI)
@router.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=_INFER_OPENAPI)
async def infer(name: str, request: Request, version: str | None = None,
                state: ServerState = Depends(server_state)):
    max_images = state.max_images
    try:
        with state.repository.use(name, version) as engine:  # a reload waits for this request
            # The largest valid request is max_images rows of z written out as JSON text (up to
            # ~25 characters a float) plus y; anything much larger is refused before it is
            # buffered whole.
            limit = (1 << 20) + max_images * (engine.metadata.dim_z + 1) * 32
            z, y, psi, body, binary = parse_infer_request(
                await read_body(request, limit),
                request.headers.get("inference-header-content-length"), engine, max_images)
            images = await engine.submit(z, y, psi)
    except UnknownModel as e:
        return v2_error(str(e), 404)
    except InferError as e:
        return v2_error(str(e), e.status, e.headers)
    except QueueFull as e:
        return v2_error(str(e), 503, {"Retry-After": str(e.retry_after_s)})
    return encode_infer_response(engine, images, body, binary)


async def read_body(request: Request, limit: int,
                    hint: str = "(max images x dim_z as JSON text); send fewer images per "
                                "request") -> bytes:
    """The request body, or InferError 413 once it (or its declared length) exceeds `limit`."""
    too_large = InferError(f"the request body is larger than this server's limit of {limit} bytes "
                           + hint, 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except StarletteHTTPException as e:  # the body deadline (408) of transports.middleware
        raise InferError(str(e.detail), e.status_code, e.headers) from None
    return bytes(body)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise InferError(f"Inference-Header-Content-Length {header_length!r} is not an integer")
    if not 0 < n <= len(body):
        raise InferError(f"Inference-Header-Content-Length {n} does not fit a {len(body)}-byte body")
    return body[:n], body[n:]


def _binary_output(request: dict[str, Any]) -> bool:
    params = request.get("parameters")
    if isinstance(params, dict) and params.get("binary_data_output") is True:
        return True
    outputs = request.get("outputs")
    if outputs is None:
        return False
    if not isinstance(outputs, list):
        raise InferError("'outputs' must be a list")
    binary = False
    for out in outputs:
        if not isinstance(out, dict) or out.get("name") != "images":
            raise InferError("the only output is 'images' (UINT8 [N, H, W, C])")
        out_params = out.get("parameters") or {}
        binary |= isinstance(out_params, dict) and out_params.get("binary_data") is True
    return binary
