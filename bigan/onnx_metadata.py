"""The contract between `bigan export` and the server: what an exported ONNX file holds and means.

The exporter writes a `ModelMetadata` into the ONNX model's `metadata_props` (string keys to string
values: strings as they are, everything else JSON-encoded) and the server reads it back, e.g. from
onnxruntime's `session.get_modelmeta().custom_metadata_map`, with `ModelMetadata.from_props`. The
graph's input and output names below are part of the same contract. The server imports this module,
so it must import neither torch nor onnx (standard library only).

Graph signature (fixed for `version` 1):
  inputs   z             float32 [N, dim_z]           latents, e.g. `bigan.sampling.latents(seeds, dim_z, psi)`
           y             int64   [N]                  class ids in 0..num_classes-1
           psi           float32 [N]                  only when `psi_input`: each sample's
                                                      truncation, which picks the batch-norm
                                                      statistics inside the graph (TF-Hub
                                                      BigGAN-deep); the psi its z was drawn
                                                      with (1.0 for none)
  outputs  images        uint8   [N, res, res, C]     NHWC, clamp(floor((x + 1) * 127.5 + 0.5), 0, 255)
           images_float  float32 [N, C, res, res]     NCHW, G's output x in [-1, 1]
N is dynamic. Inputs and outputs are float32/int64/uint8 whatever `precision` the weights have.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

FORMAT = "bigan-onnx"
VERSION = 1
FAMILIES = ("biggan", "biggan-deep", "dcgan", "progan")
PRECISIONS = ("fp32", "fp16")
OUTPUT_LAYOUT = "uint8 NHWC"
INPUT_NAMES = ("z", "y")
PSI_INPUT = "psi"  # the third input of graphs with `psi_input`
OUTPUT_NAMES = ("images", "images_float")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The truncation psi a server accepts in a request, and so the range a file's recommended psi
# must lie in (a recommendation the server would refuse as a request is a broken default).
# Below MIN, resampling needs ~1/psi rounds per value: a bound on the work one request can ask.
# Above MAX, truncation keeps > 99.99% of N(0, 1): no truncation at all, most likely a typo.
MIN_TRUNCATION = 0.01
MAX_TRUNCATION = 4.0


class MetadataError(ValueError):
    """An ONNX file's metadata is missing a key or holds a bad value; the message names the key."""


@dataclass
class ModelMetadata:
    family: str                     # generator architecture: biggan | biggan-deep | dcgan | progan
    class_names: list[str]          # name of class id k at index k
    num_classes: int                # number of classes; y must lie in 0..num_classes-1
    dim_z: int                      # latent size (second dimension of input z)
    resolution: int                 # image side in pixels (square images)
    channels: int                   # image channels (3 = RGB)
    training_step: int              # G steps of the checkpoint the weights come from
    source_checkpoint_sha256: str   # sha256 (hex) of that checkpoint's manifest.json
    recommended_truncation: float | None = 1.0  # psi for `latents` in [MIN_TRUNCATION,
                                                # MAX_TRUNCATION]; None = no truncation
    precision: str = "fp32"         # weights and compute inside the graph: fp32 | fp16
    psi_input: bool = False         # the graph takes input `psi` float32 [N] (truncation-dependent
                                    # batch-norm statistics); absent from files written before it
    exported_at: str = field(       # UTC time of the export, ISO 8601
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    output: str = OUTPUT_LAYOUT     # layout of the `images` output
    format: str = FORMAT            # always "bigan-onnx": tells our files from other ONNX models
    version: int = VERSION          # contract version; a reader refuses versions newer than its own

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise MetadataError naming the first field that breaks the contract."""
        if self.format != FORMAT:
            _bad("format", self.format, f"must be {FORMAT!r}: this is not a bigan export")
        if not _is_int(self.version) or self.version < 1:
            _bad("version", self.version, "must be an int >= 1")
        if self.version > VERSION:
            _bad("version", self.version, f"this bigan reads up to version {VERSION}; upgrade it")
        if self.family not in FAMILIES:
            _bad("family", self.family, f"must be one of {', '.join(FAMILIES)}")
        for name in ("num_classes", "dim_z", "resolution", "channels"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                _bad(name, getattr(self, name), "must be an int >= 1")
        if not _is_int(self.training_step) or self.training_step < 0:
            _bad("training_step", self.training_step, "must be an int >= 0")
        if (not isinstance(self.class_names, list)
                or not all(isinstance(n, str) for n in self.class_names)):
            _bad("class_names", self.class_names, "must be a list of strings")
        if len(self.class_names) != self.num_classes:
            _bad("class_names", self.class_names,
                 f"has {len(self.class_names)} names but num_classes is {self.num_classes}")
        if not isinstance(self.source_checkpoint_sha256, str) or not _SHA256.match(
                self.source_checkpoint_sha256):
            _bad("source_checkpoint_sha256", self.source_checkpoint_sha256,
                 "must be 64 lowercase hex digits")
        psi = self.recommended_truncation
        if psi is not None and (isinstance(psi, bool) or not isinstance(psi, (int, float))
                                or not math.isfinite(psi)
                                or not MIN_TRUNCATION <= psi <= MAX_TRUNCATION):
            _bad("recommended_truncation", psi, f"must be a number in [{MIN_TRUNCATION}, "
                 f"{MAX_TRUNCATION}] (the psi a request may ask for) or null")
        if not isinstance(self.psi_input, bool):
            _bad("psi_input", self.psi_input, "must be true or false")
        if self.precision not in PRECISIONS:
            _bad("precision", self.precision, f"must be one of {', '.join(PRECISIONS)}")
        if self.output != OUTPUT_LAYOUT:
            _bad("output", self.output, f"must be {OUTPUT_LAYOUT!r} in version {VERSION}")
        if not isinstance(self.exported_at, str):
            _bad("exported_at", self.exported_at, "must be an ISO 8601 string")
        try:
            datetime.fromisoformat(self.exported_at)
        except ValueError:
            _bad("exported_at", self.exported_at, "must be an ISO 8601 string")

    def to_props(self) -> dict[str, str]:
        """The `metadata_props` entries: strings verbatim, everything else as JSON."""
        self.validate()
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value if isinstance(value, str) else json.dumps(value)
        return out

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Parse and validate what `to_props` wrote. Keys it does not know (e.g. the exporter's
        own `pkg.torch.*` entries) are ignored; a missing or malformed key raises MetadataError."""
        if "format" not in props:
            raise MetadataError("ONNX metadata has no 'format' key: the file was not written by "
                                "`bigan export` (or its metadata was stripped); re-export it")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in _OPTIONAL and f.name not in props:
                continue  # added within version 1; its default keeps older files' meaning
            if f.name not in props:
                raise MetadataError(f"ONNX metadata is missing the key {f.name!r}; re-export the "
                                    "model with `bigan export`")
            raw = props[f.name]
            if not isinstance(raw, str):
                _bad(f.name, raw, "metadata values must be strings")
            if f.name in _STRING_FIELDS:
                values[f.name] = raw
                continue
            try:
                values[f.name] = json.loads(raw)
            except json.JSONDecodeError as e:
                raise MetadataError(f"ONNX metadata key {f.name!r} holds {raw!r}, which is not "
                                    f"JSON ({e}); re-export the model") from e
        return cls(**values)


_STRING_FIELDS = {f.name for f in fields(ModelMetadata) if f.type == "str"}
_OPTIONAL = {"psi_input"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(key: str, value: Any, why: str) -> None:
    raise MetadataError(f"ONNX metadata key {key!r} = {value!r} {why}")
