"""Where the server's model file is. Whether it holds what the server expects (its metadata and
the graph signature that metadata describes) is checked by `bigan.ort_session`, which export and
evaluation share, so a mismatched or foreign file stops the server at start-up with a message
naming the file instead of failing on the first request.
"""

from __future__ import annotations

from pathlib import Path

from bigan.ort_session import ModelFileError

__all__ = ["ModelFileError", "resolve_model_path"]


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
