"""The serve settings, written once: `ServeConfig` (with the engine's `EngineConfig`) and the
`bigan serve` flags generated from its fields.

Every default lives in a field here or in `serving.core.config`; `create_app`'s keyword defaults,
the JSON that uvicorn workers and Ray replicas rebuild the config from, and the CLI flags
(`add_serve_arguments`, `serve_config_from_args`) all read them, so a default changed here
changes everywhere. Standard library only: `bigan --help` builds these flags without fastapi or
onnxruntime installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import typing
from dataclasses import dataclass, field, fields

from serving.core.config import EngineConfig, check_finite, check_model_name, option

__all__ = ["EngineConfig", "ServeConfig", "add_serve_arguments", "serve_config_from_args"]


@dataclass
class ServeConfig:
    model: str  # .onnx file, or a repository directory (serving.core.repository); positional
    name: str | None = option(None, "model name in URLs (/v2/models/NAME) when one model is "
                                    "served (default: the file's stem)")
    host: str = option("127.0.0.1", "bind address; 0.0.0.0 to accept outside connections")
    port: int = option(8000, "HTTP port")
    grpc_port: int | None = option(None, "also serve KServe v2 over gRPC on this port, as "
                                         "tritonclient.grpc calls it (Triton uses 8001; needs the "
                                         "grpc extra; default: off)")
    workers: int = option(1, "server processes (or Ray Serve replicas with --ray), each with its "
                             "own session")
    max_images: int = option(64, "images per request: n of /v1/generate, N of /v2 infer")
    cache_mb: float = option(64.0, "MiB of /v1 responses kept for repeated (class, seed, psi) "
                                   "requests (serving.core.cache); 0 turns the cache off")
    body_timeout_s: float = option(30.0, "seconds a request body may take to arrive before 408 "
                                         "(0: no limit)", flag="--body-timeout")
    shutdown_timeout_s: float = option(15.0, "on SIGTERM, seconds open requests get before they "
                                             "are cancelled (under Kubernetes' default 30 s grace "
                                             "period)", flag="--shutdown-timeout")
    header_timeout_s: float = option(10.0, "seconds a request's headers (and a new connection's "
                                           "first request) may take to arrive before 408 and the "
                                           "connection closed (0: no limit)",
                                     flag="--header-timeout")
    access_log: bool = option(False, "log one line per HTTP request (uvicorn's access log; off "
                                     "by default: it cost the event loop ~0.1 ms a request, and "
                                     "/metrics counts requests by route and status)")
    max_connections: int = option(1024, "open HTTP connections per server process; one more "
                                        "gets 503 and is closed at once")
    # --ray only (serving.ray_serve): Ray Serve's autoscaling, off unless a bound is set.
    min_replicas: int | None = option(None, "--ray: autoscale from this many replicas (default: "
                                            "1 once --max-replicas is set; without either, "
                                            "--workers fixed replicas)")
    max_replicas: int | None = option(None, "--ray: autoscale up to this many replicas (default: "
                                            "--workers once --min-replicas is set)")
    target_ongoing_requests: float = option(2.0, "--ray autoscaling: requests in flight per "
                                                 "replica that the replica count aims at (Ray "
                                                 "Serve's default)")
    upscale_delay_s: float = option(30.0, "--ray autoscaling: seconds the load must stay above "
                                          "target before a replica is added (Ray Serve's "
                                          "default)", flag="--upscale-delay")
    downscale_delay_s: float = option(600.0, "--ray autoscaling: seconds the load must stay "
                                             "below target before a replica is removed (Ray "
                                             "Serve's default)", flag="--downscale-delay")
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if isinstance(self.engine, dict):
            self.engine = EngineConfig(**self.engine)
        check_finite(self)
        if self.header_timeout_s < 0 or self.max_connections < 1:
            raise ValueError(f"--header-timeout={self.header_timeout_s} must be >= 0 and "
                             f"--max-connections={self.max_connections} >= 1")
        if self.name is not None:
            try:
                check_model_name(self.name)
            except ValueError as e:
                raise ValueError(f"--name: {e}") from None
        _check_host(self.host)
        if self.workers < 1 or self.max_images < 1:
            raise ValueError(f"workers={self.workers} and max_images={self.max_images} must be >= 1")
        for name in ("port", "grpc_port"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name}={getattr(self, name)} must be in 0..65535")
        if self.cache_mb < 0:
            raise ValueError(f"cache_mb={self.cache_mb} must be >= 0 (0 turns the cache off)")
        if self.body_timeout_s < 0 or self.shutdown_timeout_s <= 0:
            raise ValueError(f"body_timeout_s={self.body_timeout_s} must be >= 0 and "
                             f"shutdown_timeout_s={self.shutdown_timeout_s} > 0")
        self._check_replicas()

    def _check_replicas(self) -> None:
        """The autoscaling bounds (`check_finite` has refused NaN and infinities already)."""
        low, high = self.min_replicas, self.max_replicas
        if low is not None and low < 1:  # a cold replica takes seconds to load: never scale to 0
            raise ValueError(f"--min-replicas={low} must be >= 1")
        if high is not None and high < (low or 1):
            raise ValueError(f"--max-replicas={high} must be >= --min-replicas ({low or 1})")
        if self.target_ongoing_requests <= 0 or min(self.upscale_delay_s,
                                                    self.downscale_delay_s) < 0:
            raise ValueError(f"--target-ongoing-requests={self.target_ongoing_requests} must be "
                             f"> 0, --upscale-delay={self.upscale_delay_s} and --downscale-delay="
                             f"{self.downscale_delay_s} >= 0")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))


def _check_host(host: str) -> None:
    """Raise ValueError unless `host` is an address or a name this machine resolves (uvicorn
    found out only after loading the models, and exited 3 with its own text)."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise ValueError(f"--host {host[:80]!r} is not an address or a name this machine "
                         f"resolves ({getattr(e, 'strerror', None) or e}); e.g. 127.0.0.1 or "
                         "0.0.0.0") from None


def _options(cls) -> list[dataclasses.Field]:
    """The fields of `cls` that are flags (made with `option`)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def _flag_type(f: dataclasses.Field, owner) -> type:
    """int, float, str or bool: the field's annotation without `| None`."""
    hint = typing.get_type_hints(owner)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `ServeConfig` and `EngineConfig` option (after the positional MODEL), with
    the field's default and help; `serve_config_from_args` reads them back."""
    parser.add_argument("model", help="exported .onnx file (`bigan export`), or a model "
                                      "repository: a directory of NAME.onnx files and/or "
                                      "NAME/VERSION/model.onnx")
    for owner in (ServeConfig, EngineConfig):
        for f in _options(owner):
            flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
            kind = _flag_type(f, owner)
            if kind is bool:
                parser.add_argument(flag, dest=f.name, action="store_true",
                                    help=f.metadata["help"])
                continue
            shown = "" if f.default is None else f" (default {f.default})"
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default,
                                metavar=flag[2:].upper().replace("-", "_"),
                                choices=f.metadata["choices"], help=f.metadata["help"] + shown)


def serve_config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The `ServeConfig` of parsed `bigan serve` flags; raises ValueError for a bad value."""
    engine = EngineConfig(**{f.name: getattr(args, f.name) for f in _options(EngineConfig)})
    return ServeConfig(model=args.model, engine=engine,
                       **{f.name: getattr(args, f.name) for f in _options(ServeConfig)})
