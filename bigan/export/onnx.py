"""Export a checkpoint's EMA generator to one self-contained ONNX file, checked against PyTorch.

`export_onnx` loads the EMA generator of a checkpoint or consolidated weights file
(`bigan.checkpoint.weights.read_weights`; a ProGAN one must
be at its final phase, full resolution with alpha 1), folds spectral norm into plain weights
(`fold_spectral_norm`), wraps it in `ServingGenerator` (uint8 NHWC images
plus the float output), exports it with the torch.export-based ("dynamo") exporter with a dynamic
batch axis, writes the `bigan.onnx_metadata` contract into the file's `metadata_props`, runs
`onnx.checker`, and finally runs the same inputs through onnxruntime and through the original,
unfolded PyTorch generator at batch 1 and `parity_batch`. Everything is written under a temporary
name next to the target and moved into place only once every check has passed, so a failed export
leaves no file behind (and an earlier export at the same path intact).

Why the dynamo exporter: it is torch's default and maintained path (the TorchScript exporter is
deprecated and slated for removal, fails on spectral-norm parametrizations with `aten::vdot`, and
traces Python-level shape checks into constants); with `dynamic_shapes` it keeps N symbolic, which
the parity check verifies by running two batch sizes through one file.

Size: weights up to `INLINE_LIMIT_BYTES` (1.5 GiB, torch's own threshold, safely below protobuf's
2 GiB message limit) are stored inside the .onnx file. Larger models cannot be one protobuf, so
their weights go to `<name>.onnx.data` next to it; `ExportReport.files` then lists both, and both
must be shipped together (the .onnx file names the data file relative to itself).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from bigan import ort_session, sampling
from bigan.config import ModelConfig
from bigan.export.metadata import stamp
from bigan.onnx_metadata import (DEFAULT_TRUNCATION, FAMILIES, INPUT_NAMES, OUTPUT_NAMES,
                                 PSI_INPUT, ModelMetadata, check_truncation)
from bigan.ort_session import ModelFileError

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4  # max |onnxruntime - torch| on `images_float` for an fp32 export
# fp16 weights and activations carry ~3 significant digits. Measured on the [-1, 1] output (CPU
# provider): 1.5e-3 for the 32 px ch=8 test BigGAN, 4.1e-3 for a 64 px ch=16 one with attention,
# 2.4e-5 for the test DCGAN. 1e-2 is about one uint8 level (1/127.5 = 7.8e-3).
FP16_TOLERANCE = 1e-2
INLINE_LIMIT_BYTES = 1536 * 2**20
# torch.export specialises dimensions of size 0 and 1, so trace with 2 to keep N symbolic.
_TRACE_BATCH = 2
# Per-sample psi of the parity check for graphs with a psi input: between grid points of a
# 51-set table (where the lookup is continuous) and at 1 (the end set).
PARITY_PSI = (0.37, 0.61, 0.83, 1.0, 0.13)


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file does not match PyTorch."""


@dataclass
class ExportReport:
    path: Path                          # the .onnx file
    files: list[Path]                   # every file written: [path] or [path, path.data] (> 1.5 GiB)
    bytes: int                          # total size of `files` on disk
    opset: int                          # ONNX opset of the default domain
    precision: str                      # fp32 | fp16 (weights and compute inside the graph)
    provider: str                       # onnxruntime execution provider used for the parity check
    max_abs_error: dict[int, float]     # batch size -> max |onnx - torch| on images_float
    max_uint8_diff: dict[int, int]      # batch size -> max |onnx - torch| on images (levels)
    tolerance: float                    # the bound max_abs_error was held to
    seconds: float                      # wall time of the whole export
    metadata: ModelMetadata             # what was written into metadata_props

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings, batch sizes as string keys)."""
        return {"path": str(self.path), "files": [str(f) for f in self.files],
                "bytes": self.bytes, "opset": self.opset, "precision": self.precision,
                "provider": self.provider, "tolerance": self.tolerance, "seconds": self.seconds,
                "max_abs_error": {str(k): v for k, v in self.max_abs_error.items()},
                "max_uint8_diff": {str(k): v for k, v in self.max_uint8_diff.items()},
                "metadata": dataclasses.asdict(self.metadata)}


class ServingGenerator(nn.Module):
    """What the ONNX graph computes: forward(z: float32 [N, dim_z], y: int64 [N], psi: float32 [N]
    only for generators with truncation-dependent statistics (`G.psi_stats`)) ->
    (images: uint8 [N, res, res, C] NHWC in 0..255, images_float: float32 [N, C, res, res] NCHW
    in [-1, 1]).

    images = clamp(floor((x + 1) * 127.5 + 0.5), 0, 255) with x = G(z, y): rounding half up, the
    same as `bigan.pictures.to_uint8`, so the server's PNGs equal `bigan sample`'s. z is cast to
    G's parameter dtype (fp16 exports) and x back to float32, so the interface does not depend on
    the precision. G must be in eval mode; the wrapper holds a reference and never changes it.
    """

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G
        self.compute_dtype = next(G.parameters()).dtype

    def forward(self, z: Tensor, y: Tensor, psi: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if psi is None:
            x = self.G(z.to(self.compute_dtype), y).float()
        else:
            x = self.G(z.to(self.compute_dtype), y, psi).float()  # G picks its set in float32
        images = ((x + 1.0) * 127.5 + 0.5).clamp(0.0, 255.0).floor().to(torch.uint8)
        return images.permute(0, 2, 3, 1), x


@torch.no_grad()
def fold_spectral_norm(G: nn.Module, model_cfg: ModelConfig) -> nn.Module:
    """A new generator without parametrizations whose weights are G's eval-mode weights.

    Each spectral-norm weight becomes W / sigma with sigma = u^T W v from the stored u, v, exactly
    what G computes in eval mode (no power iteration: in train mode the getter would run one and
    update u, v, shifting outputs by ~2e-3). The copy is a fresh model built from `model_cfg` with
    `spectral_norm=False` and loaded strictly, so every weight has a home; G itself is only read
    (its training flag is restored, the global RNG used by the fresh model's init is forked).
    `deepcopy` + `remove_parametrizations` is avoided on purpose: it has broken the original.
    """
    from bigan import models

    was_training = G.training
    G.eval()
    try:
        state = {k: v for k, v in G.state_dict().items() if ".parametrizations." not in k}
        for name, module in G.named_modules():
            if parametrize.is_parametrized(module):
                for pname in module.parametrizations:
                    state[f"{name}.{pname}" if name else pname] = getattr(module, pname).detach().clone()
    finally:
        G.train(was_training)
    with torch.random.fork_rng(devices=[]):
        plain = models.build_generator(dataclasses.replace(model_cfg, spectral_norm=False))
    plain.load_state_dict(state, strict=True)
    device = next(G.parameters()).device
    return plain.to(device).eval().requires_grad_(False)


def export_onnx(checkpoint_path: str | Path, out_path: str | Path, fp16: bool = False,
                opset: int | None = None, parity_batch: int = 4,
                truncation: float | None = DEFAULT_TRUNCATION) -> ExportReport:
    """Export the EMA generator of a checkpoint (or of the newest one under a run/checkpoints
    directory) to `out_path` and check it; see the module docstring. opset None: the exporter's
    default. truncation: the recommended psi written into the metadata, every path's default
    (None: no truncation; `bigan truncation-sweep --write` measures one). Raises ExportError when the export or a check fails (no file is left at out_path),
    FileNotFoundError / CheckpointError for a missing or damaged checkpoint."""
    onnx, _ = _import_export_deps()
    if parity_batch < 1:
        raise ValueError(f"parity_batch={parity_batch} must be >= 1")
    start = time.perf_counter()
    from bigan.checkpoint.weights import read_weights
    from bigan.config import config_from_dict
    from bigan.generation import ema_generator, manifest_z_sampling

    w = read_weights(checkpoint_path)  # a checkpoint or a consolidated weights file
    G, class_names = ema_generator(w)
    found, manifest = w.path, w.manifest
    model_cfg = config_from_dict(manifest["config"]).model
    if model_cfg.arch not in FAMILIES:
        raise ExportError(f"{found} holds a {model_cfg.arch!r} generator; only image generators "
                          f"({', '.join(FAMILIES)}) can be exported")
    if model_cfg.arch == "progan":
        _require_final_phase(G, model_cfg, found)
    precision = "fp16" if fp16 else "fp32"
    meta = ModelMetadata(
        family=model_cfg.arch, class_names=list(class_names), num_classes=model_cfg.num_classes,
        dim_z=model_cfg.dim_z, resolution=model_cfg.resolution, channels=model_cfg.img_channels,
        training_step=int(manifest["step"]),
        source_checkpoint_sha256=w.source_sha256, precision=precision,
        psi_input=has_psi_input(G), z_sampling=manifest_z_sampling(manifest, found),
        recommended_truncation=check_truncation(truncation, "truncation"))

    plain = fold_spectral_norm(G, model_cfg)
    if fp16:
        plain = plain.half()
    log.info("exporting %s (%s, step %d) to ONNX", found, precision, meta.training_step)
    program = _to_onnx(ServingGenerator(plain), model_cfg.dim_z, opset, meta.psi_input)
    stamp(program.model.metadata_props, meta)
    onnx_opset = program.model.opset_imports[""]

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        tmp = tmp_dir / out.name  # same file name, so an external data reference stays valid
        weight_bytes = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                           if v.const_value is not None)
        program.save(str(tmp), external_data=weight_bytes > INLINE_LIMIT_BYTES)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:
            raise ExportError(f"the exported graph fails onnx.checker ({e}); nothing was written "
                              f"to {out}") from e
        tol = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
        log.info("checking onnxruntime against PyTorch at batch 1 and %d", parity_batch)
        provider, errors, u8_diffs = check_parity(tmp, G, model_cfg.num_classes,
                                                  sorted({1, parity_batch}), tol)
        # The side file (if any) first: the new .onnx must never name an old one's weights.
        written = sorted(tmp_dir.iterdir(), key=lambda f: f.name == out.name)
        for f in written:
            os.replace(f, out.parent / f.name)
        files = [out] + [out.parent / f.name for f in written if f.name != out.name]
        if len(files) == 1:  # a stale side file from an earlier, larger export would mislead
            (out.parent / f"{out.name}.data").unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return ExportReport(
        path=out, files=files, bytes=sum(f.stat().st_size for f in files), opset=onnx_opset,
        precision=precision, provider=provider, max_abs_error=errors, max_uint8_diff=u8_diffs,
        tolerance=tol, seconds=time.perf_counter() - start, metadata=meta)


def has_psi_input(G: nn.Module) -> bool:
    """Whether G's batch-norm statistics depend on psi, so its graph takes a psi input."""
    return getattr(G, "psi_stats", 0) > 0


def _require_final_phase(G: nn.Module, model_cfg: ModelConfig, found: Path) -> None:
    """A ProGAN generator is exported at its final phase only (model.resolution, alpha 1): the
    phase travels in its state dict, and an earlier one would leave the higher blocks untrained."""
    phase = (G.current_resolution, G.alpha)
    if phase != (model_cfg.resolution, 1.0):
        raise ExportError(f"{found} holds a ProGAN generator at the {phase[0]}px phase with alpha "
                          f"{phase[1]:.3f}, not at the final {model_cfg.resolution}px phase with "
                          "alpha 1; its higher blocks are not trained yet. Export a checkpoint "
                          "written after the last fade-in (see progressive.* in the config)")


def check_parity(onnx_path: str | Path, G: nn.Module, num_classes: int, batches: list[int],
                 tol: float) -> tuple[str, dict[int, float], dict[int, int]]:
    """Run seeded inputs through onnxruntime and `ServingGenerator(G)` (G: the original float32
    model in eval mode) at each batch size; return (provider, max float error per batch, max uint8
    difference per batch). Raises ExportError when the float error exceeds `tol` or the uint8
    images differ by more than the levels that error allows (floor(tol * 127.5) + 1)."""
    session = make_session(onnx_path)
    provider = session.get_providers()[0]
    reference = ServingGenerator(G).eval()
    with_psi = has_psi_input(G)
    max_levels = int(tol * 127.5) + 1
    errors, diffs = {}, {}
    for n in batches:
        # Seeds and classes as the server draws them; untruncated z exercises the widest range.
        z = sampling.latents(range(n), G.dim_z)
        y = (np.arange(n) % num_classes).astype(np.int64)
        feed = {"z": z, "y": y}
        if with_psi:
            feed[PSI_INPUT] = np.resize(np.asarray(PARITY_PSI, np.float32), n)
        with torch.no_grad():
            ref_images, ref_float = (t.numpy() for t in reference(
                *(torch.from_numpy(feed[k]) for k in feed)))
        images, images_float = session.run(list(OUTPUT_NAMES), feed)
        if images.shape != ref_images.shape or images_float.shape != ref_float.shape:
            raise ExportError(f"onnxruntime returned shapes {images.shape}, {images_float.shape} "
                              f"at batch {n}, PyTorch {ref_images.shape}, {ref_float.shape}: the "
                              "batch axis is not dynamic; report this as a bug")
        errors[n] = float(np.abs(images_float.astype(np.float64) - ref_float).max())
        diffs[n] = int(np.abs(images.astype(np.int16) - ref_images.astype(np.int16)).max())
        log.info("batch %d: max |onnx - torch| = %.3g (float), %d (uint8 levels)", n, errors[n], diffs[n])
        if not errors[n] <= tol or diffs[n] > max_levels:  # `not <=` also catches NaN
            raise ExportError(f"parity check failed at batch {n}: onnxruntime ({provider}) differs "
                              f"from PyTorch by {errors[n]:.3g} on images_float (allowed {tol:g}) "
                              f"and {diffs[n]} uint8 levels (allowed {max_levels}); the file was "
                              "not written. Report this with the checkpoint and `--opset` used")
    return provider, errors, diffs


def make_session(onnx_path: str | Path):
    """An onnxruntime session of the exported file on CUDA when torch and onnxruntime both have a
    usable GPU (TF32 off, so fp32 results stay within 1e-4 of PyTorch's), else on the CPU, using
    as many threads as torch. The file's metadata is checked against its graph on the way
    (`bigan.ort_session`, as the server does), so an export the server would refuse fails here."""
    _import_export_deps()
    try:
        session, _, _ = ort_session.open_model(
            onnx_path, "auto" if torch.cuda.is_available() else "cpu", torch.get_num_threads(),
            cuda_options={"use_tf32": "0"})
    except ModelFileError as e:
        raise ExportError(f"the exported file breaks the serving contract ({e}); report this as "
                          "a bug") from e
    return session


def _to_onnx(model: nn.Module, dim_z: int, opset: int | None, psi_input: bool = False):
    """The torch.onnx.ONNXProgram of `model` with named inputs/outputs and a dynamic batch axis;
    with `psi_input` the graph also takes psi float32 [N]."""
    z = torch.zeros(_TRACE_BATCH, dim_z)
    y = torch.zeros(_TRACE_BATCH, dtype=torch.long)
    batch = torch.export.Dim("batch", min=1)
    args, names, dynamic = (z, y), list(INPUT_NAMES), {"z": {0: batch}, "y": {0: batch}}
    if psi_input:
        args += (torch.full((_TRACE_BATCH,), 0.5),)
        names.append(PSI_INPUT)
        dynamic["psi"] = {0: batch}
    try:
        with _quiet_exporter():
            return torch.onnx.export(
                model.eval(), args, None, dynamo=True, external_data=False, verbose=False,
                input_names=names, output_names=list(OUTPUT_NAMES),
                opset_version=opset, dynamic_shapes=dynamic)
    except Exception as e:
        hint = f" Try another --opset (got {opset})." if opset is not None else ""
        raise ExportError(f"torch.onnx could not export the generator: {type(e).__name__}: "
                          f"{e}.{hint}") from e


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's chatter (per-pass INFO logs from onnxscript / onnx_ir, notes about
    torchvision ops we do not use, torch-internal deprecations) so `bigan export` shows our progress."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # z and y share the batch dimension by construction; torch notes it merges the names.
            warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used")
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _import_export_deps():
    """(onnx, onnxruntime), or an ExportError that says how to install them."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter needs it; fail here, not mid-export)
    except ImportError as e:
        raise ExportError(f"exporting needs onnx, onnxscript and onnxruntime ({e}); install them "
                          "with: pip install 'bigan[export]' -c constraints.txt") from e
    return onnx, onnxruntime
