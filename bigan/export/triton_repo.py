"""A Triton model repository for an exported file (`bigan export --triton-repo DIR`), so the same
model moves to a Triton Inference Server deployment unchanged.

`write_triton_repo(model_file, repo)` writes `repo/NAME/config.pbtxt` and `repo/NAME/1/model.onnx`
(with the file's external weights, when it has them, under their own names, which the graph
refers to). The configuration is the one `bigan serve` runs with, in Triton's words:

- `backend: "onnxruntime"`, `max_batch_size` = the server's `--max-batch` (default 32);
- inputs `z` [dim_z] and `y` (and `psi` for graphs that take it), each id given to Triton as
  dims [1] reshaped to a scalar, because the graph takes y as [N]. `psi` is required here, where
  the server's own config marks it optional: the server fills a missing psi in with the model's
  default, Triton feeds the graph what the request holds and the graph has no default; outputs
  `images` [H, W, C] uint8 and `images_float` [C, H, W]: dims without the batch axis, as
  batching models declare;
- `dynamic_batching` whose preferred batch sizes are the server's buckets
  (`bigan.ort_session.batch_buckets`: 1, 2, 4, ... max_batch) and whose max queue delay is the
  server's wait on a GPU (5 ms, `serving.core.engine.DEFAULT_WAIT_MS`). Triton runs a batch of a
  preferred size at once, so its batches land on the sizes warmed below, as the server's do;
- `model_warmup`: one zero-data sample per bucket, Triton's form of the server's warm-up
  (`serving.core.engine.Engine.warm_up`), so Triton too reports the model ready only after
  every bucket ran once;
- `parameters` (`ModelMetadata.client_parameters`, as the server's own `/v2/models/NAME/config`
  reports them): class_names, recommended_truncation, recommended_truncation_per_class (JSON
  strings) and z_sampling. Triton applies no defaults and does not show the ONNX file's metadata
  over its API, so its client draws z itself (`bigan.sampling.latents` in that z_sampling mode)
  and, for a psi-input graph, sends each row's psi (its class's, else the recommended one); the
  same keys stay in model.onnx's metadata for tools that open the file.

The text is Triton's `ModelConfig` protobuf in text format, written here without tritonclient
(which export does not need); the tests parse it with the `model_config_pb2` tritonclient ships.
Defaults that are the server's are repeated here, because export sits below `serving` in the
layers; `tests/test_triton_repo.py` checks that they agree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from bigan.checkpoint.durable import write_atomically
from bigan.config import ConfigError
from bigan.onnx_metadata import PSI_INPUT, ModelMetadata
from bigan.ort_session import batch_buckets

DEFAULT_MAX_BATCH = 32           # serving.core.config.EngineConfig.max_batch
DEFAULT_QUEUE_DELAY_US = 5000    # serving.core.engine.DEFAULT_WAIT_MS on CUDA, in microseconds
VERSION = "1"

# ONNX TensorProto element types -> Triton's data types (those an exported graph uses).
_TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64", 6: "TYPE_INT32",
                 2: "TYPE_UINT8"}


class _Enum(str):
    """An enum value of the text format: written bare, not quoted."""


def write_triton_repo(model_file: str | Path, repo: str | Path, name: str | None = None,
                      max_batch: int = DEFAULT_MAX_BATCH,
                      max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> Path:
    """Write `repo/NAME/config.pbtxt` and `repo/NAME/1/model.onnx` (+ its side file) for an
    exported file; NAME defaults to the file's stem. Returns the model's directory. Raises
    ConfigError naming a bad option, MetadataError for a file `bigan export` did not write."""
    import onnx

    model_file, name = Path(model_file), name if name is not None else Path(model_file).stem
    check_options(name, max_batch, max_queue_delay_us)
    graph = onnx.load(str(model_file), load_external_data=False)
    meta = ModelMetadata.from_props({p.key: p.value for p in graph.metadata_props})
    types = {v.name: _TRITON_TYPES[v.type.tensor_type.elem_type]
             for v in [*graph.graph.input, *graph.graph.output]}
    side_files = sorted({e.value for t in graph.graph.initializer
                         if t.data_location == onnx.TensorProto.EXTERNAL
                         for e in t.external_data if e.key == "location"})
    config = model_config(meta, name, types, max_batch, max_queue_delay_us)
    version_dir = Path(repo) / name / VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    for side in side_files:  # weights first: the new model.onnx must never name old ones
        _copy_atomically(model_file.parent / side, version_dir / side)
    _copy_atomically(model_file, version_dir / "model.onnx")
    write_atomically(version_dir.parent / "config.pbtxt", config.encode())
    return version_dir.parent


def check_options(name: str, max_batch: int, max_queue_delay_us: int) -> None:
    """Raise ConfigError naming the flag of a bad model name, batch size or delay (before an
    export spends its minutes)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise ConfigError(f"--triton-name={name!r} must be one directory name (Triton's model "
                          "name), without slashes")
    if max_batch < 1:
        raise ConfigError(f"--triton-max-batch={max_batch} must be >= 1")
    if max_queue_delay_us < 0:
        raise ConfigError(f"--triton-queue-delay-us={max_queue_delay_us} must be >= 0")


def model_config(meta: ModelMetadata, name: str, types: dict[str, str], max_batch: int,
                 max_queue_delay_us: int) -> str:
    """Triton's `ModelConfig` in text format (see the module docstring); `types` maps each graph
    input and output name to its Triton data type."""
    res, ch = meta.resolution, meta.channels
    ids = [PSI_INPUT] if meta.psi_input else []
    inputs = [{"name": "z", "data_type": _Enum(types["z"]), "dims": [meta.dim_z]}]
    for key in ["y", *ids]:  # one value per image: [N] in the graph, [N, 1] to Triton
        inputs.append({"name": key, "data_type": _Enum(types[key]), "dims": [1], "reshape": {}})
    buckets = list(batch_buckets(max_batch))
    warmup = [{"name": f"batch_{n}", "batch_size": n,
               "inputs": [{"key": i["name"], "value": {"data_type": i["data_type"],
                                                       "dims": i["dims"], "zero_data": True}}
                          for i in inputs]} for n in buckets]
    config = {
        "name": name, "backend": "onnxruntime", "max_batch_size": max_batch,
        "input": inputs,
        "output": [{"name": "images", "data_type": _Enum(types["images"]), "dims": [res, res, ch]},
                   {"name": "images_float", "data_type": _Enum(types["images_float"]),
                    "dims": [ch, res, res]}],
        "dynamic_batching": {"preferred_batch_size": buckets,
                             "max_queue_delay_microseconds": max_queue_delay_us},
        "model_warmup": warmup,
        "parameters": [{"key": k, "value": {"string_value": v}}
                       for k, v in meta.client_parameters().items()],
    }
    header = (f"# Triton model configuration of {name}, written by `bigan export --triton-repo` "
              f"({meta.family}, {meta.num_classes} classes, {res}x{res}x{ch}).\n")
    return header + "\n".join(_text_format(config)) + "\n"


def _text_format(message: dict[str, Any], indent: int = 0) -> list[str]:
    """Lines of protobuf's text format for a message given as a dict: a list is a repeated
    field, a dict a sub-message (a map is a repeated {key, value} message)."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                lines += [f"{pad}{key} {{", *_text_format(item, indent + 1), f"{pad}}}"]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return lines


def _scalar(value: Any) -> str:
    from google.protobuf import text_encoding  # protobuf comes with onnx

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _Enum) or isinstance(value, int):
        return str(value)
    return '"' + text_encoding.CEscape(str(value), as_utf8=True) + '"'


def _copy_atomically(src: Path, dst: Path) -> None:
    """Copy src to dst so that a reader (Triton polling the repository) sees the old file or
    the new one, whole."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
