"""The HTTP app: `create_app(models)` -> FastAPI with the v1 API, KServe v2, metrics and a web page.

`models` is one `Engine` or a `ModelRepository` of several (each version with its own engine and
batcher). v1 (`POST /v1/generate`) is the convenient API: a model (optional when there is one), a
class (id or name), n images, a truncation psi (default: the model's recommended one) and a seed;
image i uses seed + i, drawn exactly as `bigan sample` draws it, so the same (class, seed, psi)
gives the same picture from the CLI, the server and the web page. `POST /v1/interpolate` draws
the images between two seeds' latents (`serving.interpolation`). `GET /v1/models` describes the
models; the page and a CDN-free /docs come from `serving.page`; `/healthz` says the process is up, `/readyz` that every model is loaded and batching;
`/metrics` is Prometheus text. Bad input is answered with a 4xx and a message, a full queue with
503 and Retry-After, never with a 5xx.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import secrets
from contextlib import asynccontextmanager
from typing import Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from bigan.onnx_metadata import MAX_TRUNCATION, MIN_TRUNCATION
from serving import images as encode
from serving.batcher import QueueFull
from serving.cache import CachedResponse, CacheKey, ResponseCache
from serving.engine import Engine
from serving.interpolation import interpolation_steps, slerp
from serving.kserve import add_kserve_routes
from serving.metrics import ServingMetrics
from serving.middleware import BodyDeadline, BodyLimit, RequestMetrics
from serving.page import add_page_routes
from serving.repository import ModelRepository, UnknownModel

log = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1
MAX_BODY_BYTES = 64 << 10  # a /v1 request is a few fields of JSON; /v2 infer sets its own limit
CACHE_MB = 64.0  # response cache: ~500 PNG grids of 16 128-px images, small beside the model
BODY_TIMEOUT_S = 30.0  # a whole request body must arrive within this (slow clients get 408)
_SHOWN_CHARS = 80  # longer strings in error messages are cut: a 5,000-digit "class" is not echoed


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    model: str | None = Field(None, description="model name from /v1/models (default: the only "
                                                "one)")
    version: str | None = Field(None, description="model version (default: its highest)")
    class_: int | str = Field(alias="class", description="class id, or class name from /v1/models")
    n: int = Field(1, ge=1, description="number of images; image i uses seed + i")
    truncation: float | None = Field(
        None, ge=MIN_TRUNCATION, le=MAX_TRUNCATION, allow_inf_nan=False,
        description="truncation psi in [0.01, 4]; omitted: the model's recommended psi; null: none")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed of image 0 (default random)")
    format: Literal["png", "npy", "json"] = Field(
        "png", description="png: one grid PNG; npy: uint8 [n, H, W, C]; json: base64 PNGs + seeds")
    columns: int | None = Field(None, ge=1, description="grid width for png (default ~square)")


class InterpolateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    model: str | None = Field(None, description="model name from /v1/models (default: the only "
                                                "one)")
    version: str | None = Field(None, description="model version (default: its highest)")
    class_: int | str = Field(alias="class", description="class id, or class name from /v1/models")
    seed_a: int = Field(ge=0, le=MAX_SEED, description="seed of the first image")
    seed_b: int = Field(ge=0, le=MAX_SEED, description="seed of the last image")
    steps: int = Field(8, ge=2, description="images from seed_a's to seed_b's, both included")
    truncation: float | None = Field(
        None, ge=MIN_TRUNCATION, le=MAX_TRUNCATION, allow_inf_nan=False,
        description="truncation psi of both ends; omitted: the model's recommended psi; null: none")
    format: Literal["png", "npy", "json"] = Field(
        "png", description="png: one row; npy: uint8 [steps, H, W, C]; json: base64 PNGs + t")


class BadRequest(ValueError):
    """Input that passes the schema but not the model (unknown class, too many images)."""


def create_app(models: Engine | ModelRepository, max_images: int = 64,
               body_timeout_s: float = BODY_TIMEOUT_S, cache_mb: float = CACHE_MB,
               grpc_port: int | None = None, grpc_host: str = "127.0.0.1") -> FastAPI:
    """The app serving `models`; the engines' batchers start and stop with the app's lifespan.
    `max_images` bounds n on /v1/generate and N on /v2 infer; a request body must arrive within
    `body_timeout_s` (0: no limit); /v1 responses are cached in up to `cache_mb` MiB (0: off).
    With `grpc_port` (0: any free port, then `app.state.grpc_port`), the lifespan also runs the
    KServe v2 gRPC service (`serving.grpc_service`) over the same engines."""
    if cache_mb < 0:
        raise ValueError(f"cache_mb={cache_mb} must be >= 0 (0 turns the cache off)")
    repo = models if isinstance(models, ModelRepository) else ModelRepository([models])
    metrics = ServingMetrics()
    cache = ResponseCache(int(cache_mb * (1 << 20))) if cache_mb > 0 else None
    if cache is not None:
        metrics.track_cache(cache)
    metrics.track_queue(lambda: sum(e.batcher.depth for e in repo.engines()),
                        lambda: sum(e.batcher.queued_images for e in repo.engines()))

    def count_batches(engine: Engine) -> None:  # every engine, also those a reload opens
        engine.batcher.on_batch = metrics.observe_batch
    repo.on_engine = count_batches
    for engine in repo.engines():
        count_batches(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await repo.start()
        grpc_server = None
        if grpc_port is not None:
            from serving.grpc_service import start_grpc

            grpc_server = await start_grpc(repo, grpc_port, max_images, cache, grpc_host)
            app.state.grpc_port = grpc_server.bound_port
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            await repo.stop()

    app = FastAPI(title="bigan generator", version="1",
                  description="Class-conditional images from exported bigan generators",
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # /docs: serving.page
    app.state.repository, app.state.metrics, app.state.cache = repo, metrics, cache
    app.state.engine = repo.engines()[0]  # the (first) model's engine, for a one-model server

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, skip_prefix="/v2/")
    app.add_middleware(BodyDeadline, timeout_s=body_timeout_s)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: counts the 413s too

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        # FastAPI's own handler echoes each bad input; JSON has no NaN or Infinity, so a request
        # with truncation=NaN made that echo fail with a 500. Echo a JSON-safe, bounded form.
        return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))},
                            status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull):
        return JSONResponse({"detail": str(exc)}, status_code=503,
                            headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(UnknownModel)
    async def unknown_model(_: Request, exc: UnknownModel):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.post("/v1/generate", tags=["v1"], response_class=Response,
              responses={200: {"content": {"image/png": {}, "application/octet-stream": {},
                                           "application/json": {}}}})
    async def generate(req: GenerateRequest):
        if req.model is None and len(repo.models) != 1:
            raise BadRequest(f"this server holds {len(repo.models)} models "
                             f"({', '.join(map(repr, sorted(repo.models)))}); name one in 'model'")
        with repo.use(req.model, req.version) as engine:  # a reload waits for this request
            return await _generate(req, engine)

    async def _generate(req: GenerateRequest, engine: Engine) -> Response:
        meta = engine.metadata
        class_id = resolve_class(req.class_, meta.class_names)
        if req.n > max_images:
            raise BadRequest(f"n={req.n} is above this server's limit of {max_images} images")
        psi = req.truncation if "truncation" in req.model_fields_set else meta.recommended_truncation
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        seeds = [seed + i for i in range(req.n)]
        if seeds[-1] > MAX_SEED:
            raise BadRequest(f"seed + n - 1 must stay <= {MAX_SEED}")
        key = None
        if cache is not None and req.seed is not None:  # a drawn seed is never asked for again
            key = CacheKey(engine.sha256, engine.name, class_id, seed, psi, req.format, req.n,
                           req.columns)
            hit = cache.get(key)
            metrics.observe_cache(engine.name, hit is not None)
            if hit is not None:
                return Response(hit.body, media_type=hit.media_type,
                                headers={**hit.headers, "X-Cache": "hit"})
        z = await asyncio.to_thread(engine.latents, seeds, psi)  # small psi resamples a while
        images = await engine.submit(z, np.full(req.n, class_id, dtype=np.int64), psi)
        answer = encode_answer(req, images, engine.name, class_id, meta.class_names[class_id],
                               seed, seeds, psi)
        headers = dict(answer.headers)
        if key is not None:
            cache.put(key, answer)
            headers["X-Cache"] = "miss"
        return Response(answer.body, media_type=answer.media_type, headers=headers)

    @app.post("/v1/interpolate", tags=["v1"], response_class=Response,
              responses={200: {"content": {"image/png": {}, "application/octet-stream": {},
                                           "application/json": {}}}})
    async def interpolate(req: InterpolateRequest):
        """`steps` images of one class along the slerp from seed_a's latent to seed_b's
        (`serving.interpolation`): the ends are /v1/generate's images of those seeds."""
        if req.model is None and len(repo.models) != 1:
            raise BadRequest(f"this server holds {len(repo.models)} models "
                             f"({', '.join(map(repr, sorted(repo.models)))}); name one in 'model'")
        if req.steps > max_images:
            raise BadRequest(f"steps={req.steps} is above this server's limit of {max_images} "
                             "images")
        with repo.use(req.model, req.version) as engine:
            meta = engine.metadata
            class_id = resolve_class(req.class_, meta.class_names)
            psi = (req.truncation if "truncation" in req.model_fields_set
                   else meta.recommended_truncation)
            ends = await asyncio.to_thread(engine.latents, [req.seed_a, req.seed_b], psi)
            t = interpolation_steps(req.steps)
            z = slerp(ends[0], ends[1], t)
            images = await engine.submit(z, np.full(req.steps, class_id, dtype=np.int64))
        headers = {"X-Truncation": "none" if psi is None else repr(psi),
                   "X-Class-Id": str(class_id)}
        if req.format == "png":
            return Response(encode.grid_png(images, req.steps), media_type="image/png",
                            headers=headers)
        if req.format == "npy":
            return Response(encode.npy_bytes(images), media_type="application/octet-stream",
                            headers=headers)
        return JSONResponse({"model": engine.name, "class_id": class_id,
                             "class_name": meta.class_names[class_id], "truncation": psi,
                             "seeds": [req.seed_a, req.seed_b], "t": t.tolist(),
                             "shape": list(images.shape), "images": encode.base64_pngs(images)},
                            headers=headers)

    @app.get("/v1/models", tags=["v1"])
    def list_models():
        listed = []
        for name in sorted(repo.models):
            engine = repo.get(name)
            listed.append({"name": name, "version": engine.version,
                           "versions": repo.versions(name), "file": engine.path.name,
                           "provider": engine.provider, "max_batch": engine.config.max_batch,
                           "max_images": max_images,
                           "metadata": dataclasses.asdict(engine.metadata)})
        return {"models": listed}

    @app.get("/healthz", tags=["ops"])
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz():
        if not repo.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        if len(repo.models) == 1:
            return {"status": "ready", "model": next(iter(repo.models))}
        return {"status": "ready", "models": sorted(repo.models)}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    add_kserve_routes(app, repo, max_images)

    add_page_routes(app)
    return app


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


def json_safe(value):
    """`value` (parsed JSON) with non-finite floats as strings ("nan", "inf") and long strings cut
    to _SHOWN_CHARS, so it can be sent back in an error body."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return shorten(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def shorten(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} chars)"


def resolve_class(value: int | str, names: list[str]) -> int:
    """A class id from an id or a name (names win for strings, then decimal ids)."""
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        digits = value.strip()
        if not (digits.isascii() and digits.isdigit()):
            shown = names if len(names) <= 20 else [*names[:20], "..."]
            raise BadRequest(f"unknown class name {shorten(value)!r}; classes: {shown}")
        if len(digits.lstrip("0")) > len(str(len(names))):  # clear of Python's int-string limit
            raise BadRequest(f"class id {shorten(digits)} is outside 0..{len(names) - 1}")
        value = int(digits)
    if not 0 <= value < len(names):
        raise BadRequest(f"class id {value} is outside 0..{len(names) - 1}")
    return value
