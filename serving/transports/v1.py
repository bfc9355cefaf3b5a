"""The v1 API, bigan's convenient HTTP routes: `POST /v1/generate`, `POST /v1/interpolate` and
`GET /v1/models` (an APIRouter that `serving.app` includes).

A request names a model (optional when there is one), a class (id or name), n images, a
truncation psi (default: the model's recommended one) and a seed; image i uses seed + i, drawn
exactly as `bigan sample` draws it, so the same (class, seed, psi) gives the same picture from
the CLI, the server and the web page. Repeated requests with a seed are answered from the
response cache (`serving.core.cache`). /v1/interpolate draws the images along the slerp between
two seeds' latents (`bigan.sampling.interpolate`, the one the CLI uses).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers

from bigan import sampling
from bigan.onnx_metadata import MAX_TRUNCATION, MIN_TRUNCATION
from serving.core.cache import CachedResponse, CacheKey
from serving.core.engine import Engine
from serving.core.repository import ModelRepository
from serving.transports import images as encode
from serving.transports.errors import BadRequest, shorten
from serving.transports.json_body import JsonBodyRoute, describe_int, plainly_valid
from serving.transports.server_state import ServerState, server_state

MAX_SEED = 2**63 - 1
_IMAGE_RESPONSES = {200: {"content": {"image/png": {}, "application/octet-stream": {},
                                      "application/json": {}}}}

router = APIRouter(tags=["v1"], route_class=JsonBodyRoute)  # long integers named, not a 400


class ModelClassRequest(BaseModel):
    """What every /v1 image request names: the model (and version) and the class."""

    # strict: true is not 1 and "2" is not 2 (lax mode served both); ints still pass as floats
    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=(),
                              strict=True)

    model: str | None = Field(None, description="model name from /v1/models (default: the only "
                                                "one)")
    version: str | None = Field(None, description="model version (default: its highest)")
    class_: int | str = Field(alias="class", description="class id, or class name from /v1/models")


class GenerateRequest(ModelClassRequest):
    n: int = Field(1, ge=1, le=MAX_SEED, description="number of images; image i uses seed + i")
    truncation: float | None = Field(
        None, ge=MIN_TRUNCATION, le=MAX_TRUNCATION, allow_inf_nan=False,
        description=f"truncation psi in [{MIN_TRUNCATION:g}, {MAX_TRUNCATION:g}]; omitted: the "
                    "model's recommended psi; null: none")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed of image 0 (default random)")
    format: Literal["png", "npy", "json"] = Field(
        "png", description="png: one grid PNG; npy: uint8 [n, H, W, C]; json: base64 PNGs + seeds")
    columns: int | None = Field(None, ge=1, le=MAX_SEED,
                                description="grid width for png (default ~square)")


class InterpolateRequest(ModelClassRequest):
    seed_a: int = Field(ge=0, le=MAX_SEED, description="seed of the first image")
    seed_b: int = Field(ge=0, le=MAX_SEED, description="seed of the last image")
    steps: int = Field(8, ge=2, le=MAX_SEED,
                       description="images from seed_a's to seed_b's, both included")
    truncation: float | None = Field(
        None, ge=MIN_TRUNCATION, le=MAX_TRUNCATION, allow_inf_nan=False,
        description="truncation psi of both ends; omitted: the model's recommended psi; null: none")
    format: Literal["png", "npy", "json"] = Field(
        "png", description="png: one row; npy: uint8 [steps, H, W, C]; json: base64 PNGs + t")


async def generate(req: GenerateRequest, request: Request):
    # The state straight from the app, not `Depends(server_state)`: a dependency is one more
    # pass of FastAPI's solver per request.
    return await _generate_with(req, request.app.state.server)


router.add_api_route("/v1/generate", generate, methods=["POST"], response_class=Response,
                     responses=_IMAGE_RESPONSES)
_GENERATE_ROUTE = router.routes[-1]  # what the router would put in the scope: metrics name it


class LeanGenerate:
    """ASGI middleware, the innermost of the app's own: a plainly valid `POST /v1/generate` (a
    body sent whole as exactly `application/json` that passes `GenerateRequest`: `plainly_valid`)
    goes straight to the endpoint, and its errors (unknown class, a full queue) to the app's own
    exception handlers; any other request, with the body it sent, goes on to FastAPI,
    which answers it as it always did. The middleware outside this one (body limit, body
    deadline, the answer at shutdown, the request metrics) sees both paths alike.
    Why: at one client every event-loop microsecond beside the generator's run lowers
    throughput, and FastAPI's router, its request and response plumbing and its exception
    middleware are the largest part left of what the loop spends on a request
    (docs/benchmarks.md, Serving)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["path"] != "/v1/generate"
                or scope["method"] != "POST"
                or Headers(scope=scope).get("content-type") != "application/json"):
            return await self.app(scope, receive, send)
        try:
            first = await receive()
        except Exception as e:  # a 413 or 408 from the middleware outside: FastAPI answers it
            return await self.app(scope, _raising(e), send)
        receive = _replaying(first, receive)
        req = None
        if first["type"] == "http.request" and not first.get("more_body", False):
            req = plainly_valid(first.get("body", b""), GenerateRequest)
        if req is None:
            return await self.app(scope, receive, send)
        scope["route"] = _GENERATE_ROUTE
        try:
            response = await _generate_with(req, scope["app"].state.server)
        except Exception as e:
            handler = _exception_handler(scope["app"].exception_handlers, e)
            if handler is None:
                raise  # as from FastAPI: the server's 500, and the traceback in its log
            response = await handler(Request(scope, receive), e)
        await response(scope, receive, send)


def _replaying(first: dict, receive):
    """A receive that gives `first` (already read) once, then reads on."""
    given = False

    async def receive_again():
        nonlocal given
        if given:
            return await receive()
        given = True
        return first

    return receive_again


def _raising(error: Exception):
    async def receive_fails():
        raise error

    return receive_fails


def _exception_handler(handlers: dict, error: Exception):
    """The app's handler for `error` (`create_app` installs `errors.EXCEPTION_HANDLERS`), looked
    up along its class's MRO as Starlette's exception middleware does."""
    for cls in type(error).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


async def _generate_with(req: GenerateRequest, state: ServerState) -> Response:
    _check_model_named(state.repository, req.model)
    with state.repository.use(req.model, req.version) as engine:  # a reload waits for this
        return await _generate(req, engine, state)


async def _generate(req: GenerateRequest, engine: Engine, state: ServerState) -> Response:
    meta = engine.metadata
    class_id = resolve_class(req.class_, meta.class_names)
    if req.n > state.max_images:
        raise BadRequest(f"n={req.n} is above this server's limit of {state.max_images} images")
    psi = (req.truncation if "truncation" in req.model_fields_set
           else meta.default_truncation(class_id))  # the class's own psi where it has one
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
    seeds = [seed + i for i in range(req.n)]
    if seeds[-1] > MAX_SEED:
        raise BadRequest(f"seed + n - 1 must stay <= {MAX_SEED}")
    cache, key = state.cache, None
    if cache is not None and req.seed is not None:  # a drawn seed is never asked for again
        key = CacheKey(engine.sha256, engine.name, class_id, seed, psi, req.format, req.n,
                       req.columns)
        hit = cache.get(key)
        state.metrics.observe_cache(engine.name, hit is not None, engine.version)
        if hit is not None:
            return Response(hit.body, media_type=hit.media_type,
                            headers={**hit.headers, "X-Cache": "hit"})
    if engine.latents_are_cheap(req.n, psi):  # cheaper than a hop to a thread and back
        z = engine.latents(seeds, psi)
    else:
        z = await asyncio.to_thread(engine.latents, seeds, psi)  # small psi resamples a while
    images = await engine.submit(z, np.full(req.n, class_id, dtype=np.int64), psi)
    answer = await _off_the_loop(req.format, encode_answer, req, images, engine.name, class_id,
                                 meta.class_names[class_id], seed, seeds, psi)
    headers = dict(answer.headers)
    if key is not None:
        cache.put(key, answer)
        headers["X-Cache"] = "miss"
    return Response(answer.body, media_type=answer.media_type, headers=headers)


@router.post("/v1/interpolate", response_class=Response, responses=_IMAGE_RESPONSES)
async def interpolate(req: InterpolateRequest, state: ServerState = Depends(server_state)):
    """Steps images of one class along the spherical interpolation (slerp) from seed_a's latent
    to seed_b's, all at the request's psi: the first and last are the images /v1/generate draws
    for those seeds. (This docstring is the route's description in /docs: written for users.)"""
    _check_model_named(state.repository, req.model)
    if req.steps > state.max_images:
        raise BadRequest(f"steps={req.steps} is above this server's limit of {state.max_images} "
                         "images")
    with state.repository.use(req.model, req.version) as engine:
        meta = engine.metadata
        class_id = resolve_class(req.class_, meta.class_names)
        psi = (req.truncation if "truncation" in req.model_fields_set
               else meta.default_truncation(class_id))
        ends = await asyncio.to_thread(engine.latents, [req.seed_a, req.seed_b], psi)
        z = sampling.interpolate(ends[0], ends[1], req.steps, "spherical")
        # psi travels with the latents: a psi-input graph picks its statistics by it.
        images = await engine.submit(z, np.full(req.steps, class_id, dtype=np.int64), psi)
    headers = {"X-Truncation": "none" if psi is None else repr(psi), "X-Class-Id": str(class_id)}
    if req.format == "png":
        return Response(await _off_the_loop("png", encode.grid_png, images, req.steps),
                        media_type="image/png", headers=headers)
    if req.format == "npy":
        return Response(encode.npy_bytes(images), media_type="application/octet-stream",
                        headers=headers)
    return JSONResponse({"model": engine.name, "class_id": class_id,
                         "class_name": meta.class_names[class_id], "truncation": psi,
                         "seeds": [req.seed_a, req.seed_b],
                         "t": np.linspace(0.0, 1.0, req.steps).tolist(),
                         "shape": list(images.shape),
                         "images": await _off_the_loop("json", encode.base64_pngs, images)},
                        headers=headers)


async def _off_the_loop(fmt: str, encode_fn, *args):
    """encode_fn(*args), in a worker thread for PNG and JSON (base64 PNG) bodies: zlib takes
    ~4 ms per 128x128 image (a 64-image grid 0.26 s), time the event loop would not read requests
    or start the next batch, while Pillow releases the GIL as it compresses. A .npy body (a
    memory copy, ~10 us an image) is written on the loop: a thread hop costs more."""
    if fmt == "npy":
        return encode_fn(*args)
    return await asyncio.to_thread(encode_fn, *args)


@router.get("/v1/models")
def list_models(state: ServerState = Depends(server_state)):
    repo, listed = state.repository, []
    for name in sorted(repo.models):
        engine = repo.get(name)
        listed.append({"name": name, "version": engine.version,
                       "versions": repo.versions(name), "file": engine.path.name,
                       "provider": engine.provider, "max_batch": engine.config.max_batch,
                       "max_images": state.max_images,
                       "metadata": dataclasses.asdict(engine.metadata)})
    return {"models": listed}


def _check_model_named(repo: ModelRepository, model: str | None) -> None:
    """A v1 request may leave the model out only when the server holds one (else 422)."""
    if model is None and len(repo.models) != 1:
        raise BadRequest(f"this server holds {len(repo.models)} models "
                         f"({', '.join(map(repr, sorted(repo.models)))}); name one in 'model'")


def encode_answer(req: GenerateRequest, images: np.ndarray, model: str, class_id: int,
                  class_name: str, seed: int, seeds: list[int], psi: float | None
                  ) -> CachedResponse:
    """The /v1/generate response body in the requested format, with its headers."""
    headers = {"X-Seed": str(seed), "X-Truncation": "none" if psi is None else repr(psi),
               "X-Class-Id": str(class_id)}
    if req.format == "png":
        return CachedResponse(encode.grid_png(images, req.columns), "image/png", headers)
    if req.format == "npy":
        headers["Content-Disposition"] = f'attachment; filename="{model}-{seed}.npy"'
        return CachedResponse(encode.npy_bytes(images), "application/octet-stream", headers)
    body = {"model": model, "class_id": class_id, "class_name": class_name, "truncation": psi,
            "seeds": seeds, "shape": list(images.shape), "images": encode.base64_pngs(images)}
    return CachedResponse(json.dumps(body, separators=(",", ":")).encode(), "application/json",
                          headers)


def resolve_class(value: int | str, names: list[str]) -> int:
    """A class id from an id or a name (names win for strings, then decimal ids). A name matches
    exactly, or else ignoring case where only one class matches so (as the page's search does)."""
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        folded = [i for i, name in enumerate(names) if name.casefold() == value.casefold()]
        if len(folded) == 1:
            return folded[0]
        if folded:
            raise BadRequest(f"class name {shorten(value)!r} matches "
                             f"{[names[i] for i in folded[:5]]} when case is ignored; give one "
                             "exactly")
        digits = value.strip()
        if not (digits.isascii() and digits.isdigit()):
            shown = names if len(names) <= 20 else [*names[:20], "..."]
            raise BadRequest(f"unknown class name {shorten(value)!r}; classes: {shown}")
        if len(digits.lstrip("0")) > len(str(len(names))):  # clear of Python's int-string limit
            raise BadRequest(f"class id {shorten(digits)} is outside 0..{len(names) - 1}")
        value = int(digits)
    if not 0 <= value < len(names):
        raise BadRequest(f"class id {describe_int(value)} is outside 0..{len(names) - 1}")
    return value
