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
# The truncation contract, the one place every path (export, sweep, `bigan sample`, evaluation,
# /v1, KServe v2 HTTP and gRPC, the page) takes it from. A psi anyone may ask for lies in
# [MIN_TRUNCATION, MAX_TRUNCATION], and so must a file's recommended psi (a recommendation the
# server would refuse as a request is a broken default). Below MIN, resampling needs ~1/psi
# rounds per value: a bound on the work one request can ask. Above MAX, truncation keeps > 99.99%
# of N(0, 1): no truncation at all, most likely a typo.
MIN_TRUNCATION = 0.01
MAX_TRUNCATION = 4.0
# What `bigan export` writes without --truncation, and so every path's default for a model
# without a recommendation (a checkpoint, a fresh export): None, no truncation, as in training.
# A request, a command or an evaluation that names no psi takes `ModelMetadata.default_truncation`.
DEFAULT_TRUNCATION: float | None = None
TRUNCATION_FIELD = "recommended_truncation"  # the metadata key of the default psi
PER_CLASS_FIELD = "recommended_truncation_per_class"  # ... and of one default psi per class
PSI_INPUT_FIELD = "psi_input"                # the metadata key saying the graph takes `psi`
# How z is drawn from a seed and psi (`bigan.sampling.latents`), a property of the model since an
# imported generator was trained, and is sampled by its authors, under its own convention:
#   resample      bigan's: one `np.random.default_rng(seed)` per seed, N(0, 1) truncated to
#                 [-psi, psi] by redrawing the values outside (Brock et al. 2019, Sec. 3.1)
#   tfhub-scaled  TF-Hub's and pytorch-pretrained-BigGAN's `truncated_noise_sample`:
#                 z = psi * truncnorm(-2, 2) drawn from `np.random.RandomState(seed)`, so a seed
#                 gives the package's z of `truncated_noise_sample(1, dim_z, psi, seed)`
# psi = None (no truncation) draws plain N(0, 1) under both.
Z_SAMPLINGS = ("resample", "tfhub-scaled")
DEFAULT_Z_SAMPLING = "resample"
Z_SAMPLING_FIELD = "z_sampling"


class MetadataError(ValueError):
    """An ONNX file's metadata is missing a key or holds a bad value; the message names the key."""


class TruncationError(ValueError):
    """A truncation psi outside the contract's range; the message names where it came from."""


def check_truncation(psi: Any, what: str) -> float | None:
    """psi as a float, or None (no truncation), if it lies in [MIN_TRUNCATION, MAX_TRUNCATION];
    else TruncationError naming `what` (the option, field or input that gave it)."""
    if psi is None:
        return None
    if (isinstance(psi, bool) or not isinstance(psi, (int, float)) or not math.isfinite(psi)
            or not MIN_TRUNCATION <= psi <= MAX_TRUNCATION):
        raise TruncationError(f"{what}={psi!r} must be a truncation psi in [{MIN_TRUNCATION:g}, "
                              f"{MAX_TRUNCATION:g}] (or none)")
    return float(psi)


class PerClassTruncation(tuple):
    """One psi per class id (a model's per-class default, `ModelMetadata.default_truncations`):
    a sample of class c is drawn at self[c]. A distinct type, so that nothing mistakes it for one
    psi per row; JSON writes it as a list."""

    def for_classes(self, classes: Any) -> list[float]:
        """The psi of each row of a batch of these classes."""
        return [self[int(c)] for c in classes]

    def __str__(self) -> str:
        return f"per class ({min(self):g} to {max(self):g})"


def parse_truncation(text: str, what: str) -> float | None:
    """A command-line psi: a number in the contract's range, or "none" for no truncation."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise TruncationError(f"{what}={text!r} is not a number; give a psi in "
                              f"[{MIN_TRUNCATION:g}, {MAX_TRUNCATION:g}] or none") from None
    return check_truncation(value, what)


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
    recommended_truncation: float | None = DEFAULT_TRUNCATION  # the default psi of every path
                                                # (`default_truncation`), in [MIN_TRUNCATION,
                                                # MAX_TRUNCATION]; None = no truncation
    recommended_truncation_per_class: list[float] | None = None  # one default psi per class id
                                    # (`truncation-sweep --per-class`), each in the psi range;
                                    # None: every class takes recommended_truncation
    z_sampling: str = DEFAULT_Z_SAMPLING  # how z is drawn from a seed: resample | tfhub-scaled
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
        try:
            check_truncation(self.recommended_truncation, TRUNCATION_FIELD)
        except TruncationError:
            _bad(TRUNCATION_FIELD, self.recommended_truncation, f"must be a number in "
                 f"[{MIN_TRUNCATION}, {MAX_TRUNCATION}] (the psi a request may ask for) or null")
        self._validate_per_class()
        if self.z_sampling not in Z_SAMPLINGS:
            _bad(Z_SAMPLING_FIELD, self.z_sampling, f"must be one of {', '.join(Z_SAMPLINGS)}")
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

    def _validate_per_class(self) -> None:
        vector = self.recommended_truncation_per_class
        if vector is None:
            return
        if not isinstance(vector, list):
            _bad(PER_CLASS_FIELD, vector, "must be a list of one psi per class, or null")
        if len(vector) != self.num_classes:
            _bad(PER_CLASS_FIELD, _short(vector), f"has {len(vector)} values but num_classes is "
                 f"{self.num_classes} (one psi per class id)")
        for k, psi in enumerate(vector):
            try:
                if check_truncation(psi, PER_CLASS_FIELD) is None:
                    raise TruncationError
            except TruncationError:
                _bad(PER_CLASS_FIELD, _short(vector), f"holds {psi!r} at class {k}: each must be "
                     f"a psi in [{MIN_TRUNCATION}, {MAX_TRUNCATION}]")

    def default_truncation(self, class_id: int | None = None) -> float | None:
        """The psi of a request, command or evaluation that names none (None: no truncation), for
        a sample of class `class_id`: its class's psi where the model has one per class, else
        (and for class_id None) the model's one recommended psi."""
        if class_id is not None and self.recommended_truncation_per_class is not None:
            return float(self.recommended_truncation_per_class[int(class_id)])
        return self.recommended_truncation

    def default_truncations(self) -> float | None | PerClassTruncation:
        """Every class's `default_truncation` at once: one value, or one per class id (what a
        sampler is handed, to resolve per row by each row's class)."""
        if self.recommended_truncation_per_class is None:
            return self.default_truncation()
        return PerClassTruncation(self.default_truncation(k) for k in range(self.num_classes))

    def client_parameters(self) -> dict[str, str]:
        """What a KServe v2 or Triton client needs to draw z and pick each row's psi as /v1
        does (a v2 request carries z, not a seed), as the string `parameters` of the model's
        Triton configuration: `bigan serve`'s /v2 config and `bigan export --triton-repo`'s
        config.pbtxt. JSON values, except z_sampling's plain name."""
        return {"class_names": json.dumps(self.class_names),
                TRUNCATION_FIELD: json.dumps(self.recommended_truncation),
                PER_CLASS_FIELD: json.dumps(self.recommended_truncation_per_class),
                Z_SAMPLING_FIELD: self.z_sampling}

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
_OPTIONAL = {PSI_INPUT_FIELD, PER_CLASS_FIELD, Z_SAMPLING_FIELD}  # added within version 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(vector: list) -> Any:
    """A long per-class vector shown by its first values, so an error stays one readable line."""
    return vector if len(vector) <= 8 else f"[{', '.join(map(repr, vector[:6]))}, ... {len(vector)} values]"


def _bad(key: str, value: Any, why: str) -> None:
    raise MetadataError(f"ONNX metadata key {key!r} = {value!r} {why}")
