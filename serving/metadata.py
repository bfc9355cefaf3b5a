"""Reading an exported model file: where the .onnx is, and whether it holds what the server expects.

`bigan.export.metadata` defines the contract; this module checks a loaded onnxruntime session against
it, both the metadata written into the file and the graph signature that metadata describes, so a
mismatched or foreign file stops the server at start-up with a message naming the file instead of
failing on the first request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bigan.export.metadata import INPUT_NAMES, MetadataError, ModelMetadata


class ModelFileError(RuntimeError):
    """The model file cannot be served; the message names the file and says what to do."""


def resolve_model_path(path: str | Path) -> Path:
    """The .onnx file to serve: `path` itself, or the single *.onnx file inside directory `path`."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.onnx"))
        if len(found) != 1:
            names = ", ".join(f.name for f in found) or "none"
            raise ModelFileError(f"model directory {str(p)!r} must hold exactly one .onnx file "
                                 f"(found {names}); pass the file itself")
        return found[0]
    if not p.is_file():
        raise ModelFileError(f"model file {str(p)!r} does not exist; export one with "
                             "`bigan export CKPT --out model.onnx`")
    return p


def read_metadata(session: Any, path: Path) -> ModelMetadata:
    """The validated `ModelMetadata` of an onnxruntime session opened from `path`.

    Raises ModelFileError (naming `path`) when the metadata is missing or malformed, or when the
    graph's inputs and outputs disagree with it (names, element types, dim_z, image shape).
    """
    try:
        meta = ModelMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map))
    except MetadataError as e:
        raise ModelFileError(f"{path}: {e}") from e
    _check_signature(session, meta, path)
    return meta


def _check_signature(session: Any, meta: ModelMetadata, path: Path) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    expected_in = {"z": ("tensor(float)", [None, meta.dim_z]), "y": ("tensor(int64)", [None])}
    expected_out = {"images": ("tensor(uint8)",
                               [None, meta.resolution, meta.resolution, meta.channels])}
    if set(inputs) != set(INPUT_NAMES):
        raise ModelFileError(f"{path}: graph inputs are {sorted(inputs)}, the metadata contract "
                             f"needs {list(INPUT_NAMES)}; re-export the model with `bigan export`")
    for kind, found, expected in (("input", inputs, expected_in), ("output", outputs, expected_out)):
        for name, (dtype, shape) in expected.items():
            if name not in found:
                raise ModelFileError(f"{path}: the graph has no {kind} {name!r}; re-export the "
                                     "model with `bigan export`")
            arg = found[name]
            if arg.type != dtype or not _shape_matches(arg.shape, shape):
                raise ModelFileError(
                    f"{path}: graph {kind} {name!r} is {arg.type} {arg.shape}, but the metadata "
                    f"says {dtype} {['N' if d is None else d for d in shape]}; the file's "
                    "metadata does not describe its graph: re-export the model")


def _shape_matches(actual: list, expected: list) -> bool:
    """Symbolic dimensions (strings, None) match anything; fixed ones must be equal."""
    if len(actual) != len(expected):
        return False
    return all(e is None or not isinstance(a, int) or a == e for a, e in zip(actual, expected))
