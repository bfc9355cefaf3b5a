"""The one writer of an exported file's metadata: `stamp` while `bigan export` builds the model,
`rewrite_metadata` for a file already written (`truncation-sweep --write` asks it to store the
recommended psi).

What the keys mean is `bigan.onnx_metadata`'s contract; this module only puts them into a file.
A rewrite reads the model without its external weights, changes `metadata_props` and nothing
else, and replaces the file atomically (fsync, rename, directory fsync), so the graph that
`bigan export` checked for parity is the graph on disk afterwards, byte for byte, and a reader
(the server reloading, a crash mid-write) sees the old file or the new one, whole. The new
metadata is validated before anything is written, so a bad value never reaches the file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bigan.checkpoint.durable import write_atomically
from bigan.onnx_metadata import MetadataError, ModelMetadata


def stamp(props: Any, meta: ModelMetadata) -> None:
    """Write `meta` into a model's metadata entries in place: an onnx ModelProto's repeated
    `metadata_props`, or the dict the exporter's in-memory model holds."""
    entries = meta.to_props()  # validates first
    if isinstance(props, dict):
        props.update(entries)
        return
    kept = [(p.key, p.value) for p in props if p.key not in entries]  # the exporter's own keys
    del props[:]
    for key, value in [*kept, *entries.items()]:
        props.add(key=key, value=value)


def rewrite_metadata(path: str | Path, **changes: Any) -> ModelMetadata:
    """Set metadata fields (`ModelMetadata` names, e.g. recommended_truncation=0.7) of an exported
    file in place; returns the new metadata. Raises MetadataError naming a bad field or value
    (the file is then untouched)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)  # weights stay in their side file
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    known = {f.name for f in dataclasses.fields(ModelMetadata)}
    for name in changes:
        if name not in known:
            raise MetadataError(f"ONNX metadata has no field {name!r}; fields: {sorted(known)}")
    new = dataclasses.replace(meta, **changes)  # __post_init__ validates
    stamp(model.metadata_props, new)
    write_atomically(path, model.SerializeToString())
    return new
