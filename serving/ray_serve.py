"""The same HTTP app as Ray Serve replicas, for scaling out over a Ray cluster.

`deployment(cfg)` returns a Ray Serve application of two deployments:

- `bigan-generator`: the replicas. Each builds the whole app of `serving.app` (one onnxruntime
  session and micro-batcher per model version, its own repository, cache and metrics) and runs its
  lifespan, and answers forwarded HTTP requests by calling that app in process (`call_app`).
  `cfg.workers` fixed replicas, or autoscaling between `cfg.min_replicas` and `cfg.max_replicas`
  from the requests in flight per replica (Ray Serve's `autoscaling_config`).
  `max_ongoing_requests` is two batches' worth, so a replica is sent enough concurrent requests
  to fill a batch while the previous one computes; beyond that the front door's handle queues.
- `bigan` (the ingress, `FrontDoor`): reads each request from Ray's HTTP proxy and forwards it to
  a replica through a deployment handle. A replica that dies while it holds a request fails that
  request only (the handle sends later ones to live replicas), and the front door answers it 503
  with `Retry-After` where the proxy alone would answer 500: the request was not wrong, the
  capacity went away, and a client should retry.

A repository `load` or `unload` call reaches one replica, as any request does; when it succeeds
the front door appends it to `RepositoryLog`, a small Ray actor, and every replica replays the log
within `LOG_POLL_S` (a replica started later, by autoscaling or after a crash, replays it from the
start), so all replicas serve the same files. Loading is idempotent (an unchanged file keeps its
engine), so the replica that answered the call replays it at no cost.

The front door reads a whole body before forwarding it (the handle takes bytes, not a stream), so
it applies `cfg.body_timeout_s` and a size cap itself; the replica's app then applies its exact
per-route limits. Ray is imported only when this module is used (the `ray-serve` extra).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import uuid
from typing import Any

from bigan.ort_session import ModelFileError
from serving.core.repository import ModelRepository, UnknownModel
from serving.server import ServeConfig, build_app
from serving.transports.middleware import BodyDeadline

log = logging.getLogger(__name__)

# A lost replica's requests are told to come back after this long: the surviving replicas take a
# retry at once, and a lone replica's replacement needs about this long to start (deploying two
# replicas took 12 s on one idle core here; on a loaded core, minutes).
REPLICA_LOST_RETRY_AFTER_S = 5
# The most the front door buffers of one body: /v2 infer's own limit at --max-images 64 and
# 512-px latents is far below it, and the replica's app answers the exact per-route 413.
MAX_FORWARDED_BYTES = 64 << 20
LOG_NAME = "bigan-repository-log"
LOG_POLL_S = 1.0  # how soon the other replicas follow a load or unload
REPOSITORY_CALL = re.compile(r"^/v2/repository/models/([^/]+)/(load|unload)$")
FORWARDED_SCOPE_KEYS = ("type", "http_version", "method", "scheme", "path", "raw_path",
                        "query_string", "root_path", "headers", "client", "server")


def _serve_module():
    try:
        from ray import serve
    except ImportError as e:
        raise RuntimeError("--ray needs Ray Serve: pip install 'bigan[ray-serve]' "
                           "-c constraints.txt") from e
    return serve


def replica_options(cfg: ServeConfig, replicas: int | None = None,
                    num_gpus: float = 0.0) -> dict[str, Any]:
    """The Ray Serve options of the generator deployment: fixed `replicas` (default cfg.workers),
    or `autoscaling_config` when cfg sets min/max replicas."""
    options: dict[str, Any] = dict(
        name="bigan-generator", max_ongoing_requests=max(2 * cfg.engine.max_batch, 8),
        ray_actor_options={"num_gpus": num_gpus, "num_cpus": 1})
    if cfg.max_replicas is None and cfg.min_replicas is None:
        replicas = replicas or cfg.workers
        if replicas < 1:
            raise ValueError(f"replicas={replicas} must be >= 1")
        options["num_replicas"] = replicas
        return options
    low = cfg.min_replicas if cfg.min_replicas is not None else 1
    options["autoscaling_config"] = dict(
        min_replicas=low, initial_replicas=low,
        max_replicas=cfg.max_replicas if cfg.max_replicas is not None else max(low, cfg.workers),
        target_ongoing_requests=cfg.target_ongoing_requests,
        upscale_delay_s=cfg.upscale_delay_s, downscale_delay_s=cfg.downscale_delay_s)
    return options


def deployment(cfg: ServeConfig, replicas: int | None = None, num_gpus: float = 0.0):
    """A Ray Serve `Application`: the front door bound to the generator replicas."""
    serve = _serve_module()
    if cfg.grpc_port is not None:
        raise ValueError("grpc_port: gRPC is served by `bigan serve` itself, not by Ray Serve "
                         "replicas; drop --ray or --grpc-port")
    generator = serve.deployment(GeneratorReplica, **replica_options(cfg, replicas, num_gpus))
    front = serve.deployment(serve.ingress()(FrontDoor), name="bigan",
                             ray_actor_options={"num_cpus": 0})
    return front.bind(generator.bind(cfg.to_json()), cfg.body_timeout_s)


class GeneratorReplica:
    """One replica: the app of `serving.app` for the config, running in this process."""

    async def __init__(self, cfg_json: str):
        self.app = build_app(ServeConfig.from_json(cfg_json))
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()  # starts the batchers
        self._follower = asyncio.create_task(self._follow_repository_log())

    async def _follow_repository_log(self) -> None:
        """Replay the loads and unloads other replicas answered (module docstring)."""
        import ray
        from ray.exceptions import RayActorError

        repository, log_id, applied = self.app.state.server.repository, None, 0
        while True:
            try:
                actor = await asyncio.to_thread(ray.get_actor, LOG_NAME)  # a GCS lookup
                log_id, applied, ops = await actor.since.remote(log_id, applied)
            except (ValueError, RayActorError):  # no log yet, or it went with its front door
                ops = []
            for op, name in ops:
                try:
                    await (repository.load if op == "load" else repository.unload)(name)
                except UnknownModel:  # the unload this replica answered itself, or a load of
                    pass  # a file since removed: the same state as the replica that answered
                except ModelFileError as e:
                    log.warning("replaying %s of model %s: %s", op, name, e)
                applied += 1
            await asyncio.sleep(LOG_POLL_S)

    async def __call__(self, scope: dict[str, Any], body: bytes) -> tuple[int, list, bytes]:
        return await call_app(self.app, scope, body)

    async def __del__(self):  # Ray Serve awaits it when it stops the replica
        self._follower.cancel()
        await self._lifespan.__aexit__(None, None, None)


async def call_app(app, scope: dict[str, Any], body: bytes) -> tuple[int, list, bytes]:
    """Run one HTTP request (an ASGI scope and its whole body) through the ASGI `app`; returns
    (status, headers as [name, value] byte pairs, body)."""
    status, headers, chunks = 500, [], []
    done = asyncio.Event()
    request = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if request:
            return request.pop()
        await done.wait()  # the client "disconnects" only once the answer is complete
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(dict(scope, asgi={"version": "3.0"}), receive, send)
    done.set()
    return status, headers, b"".join(chunks)


class FrontDoor:
    """The ingress: forwards every HTTP request to a generator replica; a replica lost with the
    request on it is a 503 with Retry-After, not the proxy's 500."""

    def __init__(self, generator, body_timeout_s: float):
        import ray

        self.generator = generator
        self.body_timeout_s = body_timeout_s
        # Owned by the front door: if it is restarted, the replicas replay a fresh, empty log.
        self.log = ray.remote(num_cpus=0)(RepositoryLog).options(
            name=LOG_NAME, get_if_exists=True).remote()

    def __serve_build_asgi_app__(self):
        return BodyDeadline(self.forward, timeout_s=self.body_timeout_s)

    async def forward(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await _lifespan_noop(receive, send)
        body = await _read_body(receive, MAX_FORWARDED_BYTES)
        if body is None:
            return await _send(send, 413, {"detail": "the request body is larger than this "
                                                     f"server's limit of {MAX_FORWARDED_BYTES} bytes"})
        forwarded = {k: scope[k] for k in FORWARDED_SCOPE_KEYS if k in scope}
        from ray.exceptions import RayActorError

        try:
            status, headers, content = await self.generator.remote(forwarded, body)
        except RayActorError:
            return await _send(send, 503, {"detail": "the replica serving this request stopped; "
                                                     "retry it"},
                               [(b"retry-after", str(REPLICA_LOST_RETRY_AFTER_S).encode())])
        call = REPOSITORY_CALL.match(scope["path"])
        if call and status == 200 and scope["method"] == "POST":
            await self.log.append.remote(call.group(2), call.group(1))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


class RepositoryLog:
    """The successful repository calls, in order: (op, model name) with op load or unload."""

    def __init__(self):
        self.id, self.ops = uuid.uuid4().hex, []

    def append(self, op: str, name: str) -> None:
        self.ops.append((op, name))

    def since(self, log_id: str | None, applied: int) -> tuple[str, int, list[tuple[str, str]]]:
        """(this log's id, where the caller starts, the ops from there): a caller that followed
        another log (one gone with a restarted front door) starts again from 0."""
        start = applied if log_id == self.id else 0
        return self.id, start, self.ops[start:]


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None once it exceeds `limit` bytes."""
    chunks, seen = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        seen += len(chunks[-1])
        if seen > limit:
            return None
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send(send, status: int, detail: dict, headers: list | None = None) -> None:
    content = json.dumps(detail).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(content)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": content})


async def _lifespan_noop(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def serve_forever(cfg: ServeConfig, replicas: int | None = None) -> None:
    """Start (or join) a Ray cluster, deploy on cfg.host:cfg.port and block until interrupted.
    Each replica gets a whole GPU when the cluster has GPUs, else runs on a CPU."""
    import ray

    serve = _serve_module()
    # Refuse a bad file here, with the file named, rather than in every replica's log.
    # Not warmed: only a check here; each replica warms its own engines before it is ready.
    ModelRepository.open(cfg.model, dataclasses.replace(cfg.engine, provider="cpu"), cfg.name,
                         warm=False)
    ray.init(ignore_reinit_error=True)
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    app = deployment(cfg, replicas, num_gpus=gpus)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(app, name="bigan", route_prefix="/", blocking=True)

