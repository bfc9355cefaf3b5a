"""The KServe v2 inference protocol's content, shared by its HTTP (`serving.transports.kserve_http`)
and gRPC (`serving.transports.grpc_service`) forms: the server's metadata with the extensions both
transports implement, a model's metadata, Triton's model configuration and statistics,
and reading and checking the input tensors of an infer request: `z` FP32 [N, dim_z] and `y` INT64
[N], given as typed data or as raw little-endian bytes. Every malformed request raises
`InferError` with a message; the transports map it to 4xx or to a gRPC status code.

Truncation: z is whatever the client drew, so psi matters only to a graph that takes it
(`psi_input`: batch-norm statistics picked by psi). Such a model, and only such a model, declares
a third, optional input `psi` FP32 [N] (one psi per row) or [1] (one for all rows): the psi the
client drew z with. A request without it gets the model's default psi (`ModelMetadata.
default_truncation`), as /v1 does, row by row by class where the model has one psi per class;
psi is checked against the contract's range. The model configuration's parameters carry the
defaults and `z_sampling`, so a client can draw z as the server would.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import bigan
from bigan.onnx_metadata import PSI_INPUT, TruncationError, check_truncation
from serving.core.engine import Engine
from serving.core.repository import ModelRepository

_DTYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8"), "UINT8": np.dtype("u1")}
_RANKS = {"z": 2, "y": 1, PSI_INPUT: 1}
_TYPES = {"z": "FP32", "y": "INT64", PSI_INPUT: "FP32"}
_JSON_KINDS = {"FP32": "fiu", "INT64": "iu"}  # numpy kinds accepted in JSON data, before the cast
# The protocol extensions this server implements on both transports: binary tensors (HTTP's
# binary section, gRPC's raw contents), Triton's repository index/load/unload and statistics.
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics")


class InferError(ValueError):
    """A request the protocol rejects; `status` is its HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


def server_metadata() -> dict[str, Any]:
    """`GET /v2` and gRPC ServerMetadata: the same name, version and extensions on both."""
    return {"name": "bigan", "version": bigan.__version__, "extensions": list(EXTENSIONS)}


def check_load_parameters(names: list[str]) -> None:
    """Refuse (InferError naming it) every parameter of a repository load request. Triton's
    `config` and `file:PATH` override a model's configuration and upload its files; this server
    loads what its repository folder holds and nothing else, so a load that carries them would
    report success for work not done."""
    for name in sorted(names):  # gRPC's map has no order: name the same one every time
        shown = str(name)[:80]
        what = ("uploads a model file" if shown.startswith("file:") else
                "overrides the model's configuration" if shown == "config" else "is not one")
        raise InferError(f"load parameter {shown!r} {what}: this server does not support load "
                         "parameters; put the model's files in its repository folder and call "
                         "load with none")


def model_metadata(engine: Engine, repo: ModelRepository) -> dict[str, Any]:
    m = engine.metadata
    inputs = [{"name": "z", "datatype": "FP32", "shape": [-1, m.dim_z]},
              {"name": "y", "datatype": "INT64", "shape": [-1]}]
    if m.psi_input:  # optional: without it the model's default psi
        inputs.append({"name": PSI_INPUT, "datatype": "FP32", "shape": [-1]})
    return {
        "name": engine.name, "versions": repo.versions(engine.name), "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": [{"name": "images", "datatype": "UINT8",
                     "shape": [-1, m.resolution, m.resolution, m.channels]}],
    }


def model_config(engine: Engine, max_images: int) -> dict[str, Any]:
    """The model's configuration in Triton's JSON form (`tritonclient`'s `get_model_config`):
    batching models declare dims without the batch dimension, and y is one id per image."""
    m = engine.metadata
    inputs = [{"name": "z", "data_type": "TYPE_FP32", "dims": [m.dim_z]},
              {"name": "y", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}}]
    if m.psi_input:
        inputs.append({"name": PSI_INPUT, "data_type": "TYPE_FP32", "dims": [1],
                       "reshape": {"shape": []}, "optional": True})
    return {
        "name": engine.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "max_batch_size": max_images,
        "input": inputs,
        "output": [{"name": "images", "data_type": "TYPE_UINT8",
                    "dims": [m.resolution, m.resolution, m.channels]}],
        "dynamic_batching": {"preferred_batch_size": [engine.config.max_batch],
                             "max_queue_delay_microseconds": int(engine.max_wait_ms * 1000)},
        "parameters": {k: {"string_value": v} for k, v in m.client_parameters().items()},
    }


def model_statistics(engine: Engine, cache: Any = None) -> dict[str, Any]:
    """One entry of Triton's statistics extension (`get_inference_statistics`); durations in ns.
    Cache hits and misses are those of /v1 (`serving.core.cache`); their durations are not
    measured."""
    b, r = engine.batcher, engine.stats
    hits, misses = (0, 0) if cache is None else (cache.hits[engine.name], cache.misses[engine.name])

    def stat(count: int, seconds: float) -> dict[str, int]:
        return {"count": count, "ns": int(seconds * 1e9)}

    return {"name": engine.name, "version": engine.version, "last_inference": r.last_ms,
            "inference_count": b.run_images, "execution_count": b.runs,
            "inference_stats": {"success": stat(r.success, r.success_seconds),
                                "fail": stat(r.fail, r.fail_seconds),
                                "queue": stat(b.queued_requests, b.queue_seconds),
                                "compute_input": stat(0, 0.0),
                                "compute_infer": stat(b.runs, b.run_seconds),
                                "compute_output": stat(0, 0.0),
                                "cache_hit": stat(hits, 0.0), "cache_miss": stat(misses, 0.0)},
            "batch_stats": []}


def read_inputs(items: Any, binary: bytes, engine: Engine,
                max_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | float | None]:
    """(z, y, psi) from the request's `inputs` entries (name, datatype, shape, and `data` or
    parameters.binary_data_size bytes taken in order from `binary`), checked against `engine`.
    psi: float32 [N] for a psi-input model given `psi`, else the model's default psi."""
    if not isinstance(items, list):
        raise InferError("the request must have an 'inputs' list")
    tensors, offset = {}, 0
    for item in items:
        name, array, offset = _read_input(item, binary, offset)
        if name in tensors:
            raise InferError(f"input {name!r} is given twice")
        tensors[name] = array
    if offset != len(binary):
        raise InferError(f"{len(binary) - offset} bytes of binary data follow the tensors the "
                         "header describes")
    meta = engine.metadata
    if PSI_INPUT in tensors and not meta.psi_input:
        raise InferError(f"unexpected inference input {PSI_INPUT!r} for model {engine.name!r}: its "
                         "graph takes no psi (the client's z carries the truncation)")
    if not {"z", "y"} <= set(tensors):
        raise InferError(f"inputs must be exactly 'z' and 'y'"
                         f"{' (and optionally psi)' * meta.psi_input}, got {sorted(tensors)}")
    z, y = tensors["z"], tensors["y"]
    if z.ndim != 2 or z.shape[1] != meta.dim_z or y.ndim != 1 or len(y) != len(z):
        raise InferError(f"shapes z {list(z.shape)}, y {list(y.shape)} do not fit z [N, "
                         f"{meta.dim_z}], y [N]")
    if not 1 <= len(y) <= max_images:
        raise InferError(f"batch N={len(y)} must be in 1..{max_images}")
    if not np.isfinite(z).all():
        raise InferError("z holds NaN or infinite values")
    if y.min() < 0 or y.max() >= meta.num_classes:
        raise InferError(f"class ids in y must lie in 0..{meta.num_classes - 1}")
    if PSI_INPUT not in tensors:  # each row's default: its class's psi where the model has one
        if meta.recommended_truncation_per_class is None:
            return z, y, meta.default_truncation()
        return z, y, np.array([meta.default_truncation(c) for c in y.tolist()], np.float32)
    return z, y, _psi_column(tensors[PSI_INPUT], len(y), engine.name)


def _psi_column(psi: np.ndarray, n: int, model: str) -> np.ndarray:
    """float32 [n] from input psi of shape [n] or [1] (one psi for every row), each in range."""
    if psi.shape not in ((n,), (1,)):
        raise InferError(f"unexpected shape for input {PSI_INPUT!r} for model {model!r}: expected "
                         f"[{n}] or [1] (one psi per row of z, or one for all), got "
                         f"{list(psi.shape)}")
    for value in np.unique(psi):  # NaN is unique per element; the first one stops it
        try:
            check_truncation(float(value), f"input {PSI_INPUT!r}")
        except TruncationError as e:
            raise InferError(str(e)) from None
    return np.broadcast_to(psi.astype(np.float32), (n,)).copy()


def _read_input(item: Any, binary: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    """(name, array, new offset into the binary section) of one entry of 'inputs'."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InferError("each input must be an object with a 'name'")
    name, dtype_name, shape = item["name"], item.get("datatype"), item.get("shape")
    expected = _TYPES.get(name)
    if expected is None:
        raise InferError(f"unknown input {name[:80]!r}; the inputs are 'z' (FP32), 'y' (INT64) "
                         f"and, for models that declare it, {PSI_INPUT!r} (FP32)")
    if dtype_name != expected:
        raise InferError(f"input {name!r} must have datatype {expected}, got {str(dtype_name)[:80]!r}")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                               and d >= 0 for d in shape)):
        raise InferError(f"input {name!r}: shape must be a list of non-negative integers")
    rank = _RANKS[name]
    if len(shape) != rank:  # also keeps NumPy's 64-dimension limit out of reach
        raise InferError(f"input {name!r} must have {rank} dimension{'s' * (rank > 1)} "
                         f"({'[N, dim_z]' if name == 'z' else '[N]'}), got {len(shape)}")
    count = math.prod(shape)
    if count == 0:  # else a batch of 0 failed later on its data's numpy kind
        raise InferError(f"input {name!r}: shape {shape} holds no values; a request draws at "
                         "least one image (N >= 1)")
    if count > 2**24:
        raise InferError(f"input {name!r}: shape {shape} is far too large")
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise InferError(f"input {name!r}: parameters must be an object")
    dtype = _DTYPES[expected]
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size != count * dtype.itemsize:
            raise InferError(f"input {name!r}: binary_data_size {size!r} does not match shape "
                             f"{shape} of {expected} ({count * dtype.itemsize} bytes)")
        if offset + size > len(binary):
            raise InferError(f"input {name!r}: the body ends before its {size} bytes of data")
        array = np.frombuffer(binary, dtype, count, offset).astype(dtype.newbyteorder("="))
        return name, array.reshape(shape), offset + size
    if "data" not in item:
        raise InferError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    try:
        raw = np.asarray(item["data"])
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InferError(f"input {name!r}: data is not a rectangular array of numbers") from None
    if raw.dtype.kind not in _JSON_KINDS[expected] or raw.size != count:
        raise InferError(f"input {name!r}: data must hold {count} {expected} numbers for shape "
                         f"{shape}, got {raw.size} of numpy kind {raw.dtype.kind!r}")
    return name, raw.astype(dtype).reshape(shape), offset
