"""Opening an exported generator with onnxruntime, without torch: the one place for session options,
the choice of execution provider, and the check that a file's metadata describes its graph.

Three readers share it: the server (`serving.core.engine`), export's parity check (`bigan.export.onnx`)
and the ONNX sampler of evaluation (`bigan.generation`). `open_model(path)` returns the session,
the provider it actually runs on and the validated `ModelMetadata`; a foreign, corrupt or
mismatched file raises `ModelFileError` naming the file and saying what to do, at open time
rather than on the first run. Standard library at import; onnxruntime is imported when a session
is opened, so `import bigan.ort_session` costs nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any

from bigan.onnx_metadata import INPUT_NAMES, PSI_INPUT, MetadataError, ModelMetadata

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cuda", "cpu")  # what a user may ask for; auto = CUDA when a GPU is usable
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


class ModelFileError(RuntimeError):
    """A model file cannot be opened or used; the message names the file and says what to do."""


def cuda_usable() -> bool:
    """True when the CUDA driver loads and sees at least one GPU. Asked of the driver directly:
    the onnxruntime-gpu wheel lists its CUDA provider even on machines without a GPU, and torch
    may be absent (the server)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def default_threads() -> int:
    """onnxruntime intra-op threads: as many as torch would use ($OMP_NUM_THREADS), not every core
    of a shared machine; 0 (all cores) when it is unset."""
    return int(os.environ.get("OMP_NUM_THREADS", "0") or 0)


def open_session(path: str | Path, provider: str = "auto", threads: int = 0,
                 cuda_options: dict[str, str] | None = None,
                 trt_options: dict[str, str] | None = None) -> tuple[Any, str]:
    """(onnxruntime.InferenceSession, name of the provider it runs on).

    provider: auto | cuda | cpu (PROVIDERS). threads: intra-op threads, 0 = `default_threads()`.
    cuda_options: CUDA provider options (the server bounds its arena; export turns TF32 off).
    trt_options: with CUDA, also try TensorRT first with these options (the server's `--trt`);
    a warning, not an error, where this onnxruntime has no TensorRT provider.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"provider={provider!r} must be one of {', '.join(PROVIDERS)}")
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModelFileError(f"opening {path} needs onnxruntime ({e}): pip install "
                             "'bigan[serve]' -c constraints.txt") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.log_severity_level = 3  # errors only; callers report the provider used instead
    providers: list[Any] = [CPU]
    want_cuda = provider == "cuda" or (provider == "auto" and cuda_usable())
    if want_cuda:
        if CUDA not in ort.get_available_providers():
            if provider == "cuda":
                raise ModelFileError("provider 'cuda' was asked for but this onnxruntime has no "
                                     "CUDA provider; install onnxruntime-gpu or use --provider cpu")
        else:
            providers.insert(0, (CUDA, dict(cuda_options or {})))
            if trt_options is not None:
                if TENSORRT in ort.get_available_providers():
                    providers.insert(0, (TENSORRT, dict(trt_options)))
                else:
                    log.warning("TensorRT was asked for but this onnxruntime has no TensorRT "
                                "provider; running on CUDA without it")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own types for corrupt or foreign files
        raise ModelFileError(f"{path}: onnxruntime cannot load this file ({type(e).__name__}: "
                             f"{str(e).strip()[:300]}); is it an ONNX file written by "
                             "`bigan export`? Re-export it") from e
    used = session.get_providers()[0]
    if want_cuda and used not in (CUDA, TENSORRT):
        log.warning("CUDA provider failed to initialise (driver/CUDA libraries?); running on %s", used)
    return session, used


def read_metadata(session: Any, path: str | Path) -> ModelMetadata:
    """The validated `ModelMetadata` of an onnxruntime session opened from `path`.

    Raises ModelFileError (naming `path`) when the metadata is missing or malformed, when the
    graph's inputs and outputs disagree with it (names, element types, dim_z, image shape), or when
    the graph cannot draw the last class the metadata names (`_check_classes`).
    """
    try:
        meta = ModelMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map))
    except MetadataError as e:
        raise ModelFileError(f"{path}: {e}") from e
    _check_signature(session, meta, Path(path))
    _check_classes(session, meta, Path(path))
    return meta


def open_model(path: str | Path, provider: str = "auto", threads: int = 0,
               cuda_options: dict[str, str] | None = None) -> tuple[Any, str, ModelMetadata]:
    """`open_session` + `read_metadata`: (session, provider used, metadata)."""
    session, used = open_session(path, provider, threads, cuda_options)
    return session, used, read_metadata(session, path)


def _check_signature(session: Any, meta: ModelMetadata, path: Path) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    expected_in = {"z": ("tensor(float)", [None, meta.dim_z]), "y": ("tensor(int64)", [None])}
    names = list(INPUT_NAMES)
    if meta.psi_input:
        expected_in[PSI_INPUT] = ("tensor(float)", [None])
        names.append(PSI_INPUT)
    expected_out = {"images": ("tensor(uint8)",
                               [None, meta.resolution, meta.resolution, meta.channels]),
                    "images_float": ("tensor(float)",
                                     [None, meta.channels, meta.resolution, meta.resolution])}
    if set(inputs) != set(names):
        raise ModelFileError(f"{path}: graph inputs are {sorted(inputs)}, the metadata contract "
                             f"needs {names}; re-export the model with `bigan export`")
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


def _check_classes(session: Any, meta: ModelMetadata, path: Path) -> None:
    """One image of class num_classes - 1, the largest id the server will accept. The class count
    lives in the graph's initializers (an embedding table), which onnxruntime does not expose and
    the `onnx` package is too heavy to read for the server; a run is the one torch-free way to ask.
    A Gather past the table's end raises in onnxruntime, so metadata claiming more classes than
    the embedding holds stops here instead of failing every batch that holds such a request.
    Graphs that condition through a one-hot (no table) accept any id, and cannot be told apart."""
    import numpy as np

    z = np.zeros((1, meta.dim_z), np.float32)
    y = np.array([meta.num_classes - 1], np.int64)
    feed = {"z": z, "y": y}
    if meta.psi_input:
        feed[PSI_INPUT] = np.ones(1, np.float32)
    try:
        (images,) = session.run(["images"], feed)
    except Exception as e:  # onnxruntime's own error types
        raise ModelFileError(
            f"{path}: the metadata names {meta.num_classes} classes but the graph cannot draw "
            f"class {meta.num_classes - 1} ({type(e).__name__}: {str(e).strip()[:200]}); the "
            "metadata does not describe this graph: re-export the model") from e
    expected = (1, meta.resolution, meta.resolution, meta.channels)
    if tuple(images.shape) != expected:
        raise ModelFileError(f"{path}: the graph drew an image of shape {list(images.shape)}, the "
                             f"metadata says {list(expected)}; re-export the model")


def run_inputs(meta: ModelMetadata, z: Any, y: Any, psi: Any = None) -> dict[str, Any]:
    """The feed of one run: z float32 [N, dim_z], y int64 [N], and for graphs with `psi_input`
    psi float32 [N] from `psi` (a number, None = 1.0, or one value per row)."""
    feed = {"z": z, "y": y}
    if meta.psi_input:
        feed[PSI_INPUT] = psi_column(psi, len(y))
    return feed


def psi_column(psi: Any, n: int) -> Any:
    """float32 [n]: each row's truncation psi (None = 1.0: no truncation, the psi = 1 set)."""
    import numpy as np

    if psi is None:
        return np.ones(n, np.float32)
    column = np.asarray(psi, np.float32)
    return np.full(n, column, np.float32) if column.ndim == 0 else column


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a server of `max_batch` runs at: 1, 2, 4, ... below max_batch, and
    max_batch. The GPU path pads a batch of n to the smallest bucket >= n (at most half of a run
    is padding, with log2(max_batch) + 1 captured graphs, each holding its activations' memory);
    the engine warms every bucket before it reports ready, and `bigan export --triton-repo`
    declares them as Triton's preferred batch sizes. Here, below both, so they share one rule."""
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch} must be >= 1")
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return (*sizes, max_batch)


def _shape_matches(actual: list, expected: list) -> bool:
    """Symbolic dimensions (strings, None) match anything; fixed ones must be equal."""
    if len(actual) != len(expected):
        return False
    return all(e is None or not isinstance(a, int) or a == e for a, e in zip(actual, expected))
