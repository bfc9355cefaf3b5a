"""The `bigan export` subcommand: argument parsing and printing around `bigan.export.onnx`.

`add_export_command(subparsers)` registers the subcommand on `bigan.cli`'s parser. Importing this
module loads neither torch nor onnx, so `bigan --help` stays fast; the exporter is imported when
the command runs. Failures the user can act on raise `ConfigError` (bad option values),
`FileNotFoundError` / `CheckpointError` (checkpoint) or `ExportError` (export or parity check).
"""

from __future__ import annotations

import argparse
import json

from bigan.config import ConfigError


def add_export_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export a checkpoint's EMA generator to one ONNX file for serving",
        description="Export the EMA generator (spectral norm folded into the weights) to a single "
                    "ONNX file with a dynamic batch axis and the serving metadata, then check "
                    "onnxruntime against PyTorch at batch 1 and --parity-batch. Inputs: z float32 "
                    "[N, dim_z], y int64 [N]; outputs: images uint8 [N, H, W, C], images_float "
                    "float32 [N, C, H, W] in [-1, 1]. A failed check leaves no file behind.")
    p.add_argument("checkpoint", help="checkpoint directory, a run/checkpoints directory "
                                      "(uses its latest checkpoint), or a consolidated .safetensors "
                                      "file (`bigan checkpoint consolidate`)")
    p.add_argument("--best", action="store_true",
                   help="export the checkpoint that `checkpoints/best` names (the best by the "
                        "evaluation during training); CHECKPOINT is then the run or checkpoints "
                        "directory")
    p.add_argument("--out", default="model.onnx", help="output .onnx file (default model.onnx)")
    p.add_argument("--fp16", action="store_true",
                   help="store weights and compute in float16 (inputs and outputs keep their "
                        "types); parity is then held to 1e-2 instead of 1e-4")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset of the default domain (default: the exporter's, 20 with torch 2.13)")
    p.add_argument("--parity-batch", type=int, default=4,
                   help="second batch size of the parity check, besides 1 (default 4)")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON instead of a table")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    if args.parity_batch < 1:
        raise ConfigError(f"--parity-batch={args.parity_batch} must be >= 1")
    if args.opset is not None and args.opset < 1:
        raise ConfigError(f"--opset={args.opset} must be a positive ONNX opset version")
    from bigan.export.onnx import export_onnx

    checkpoint = args.checkpoint
    if args.best:
        checkpoint = _best(checkpoint)
        print(f"best checkpoint: {checkpoint}")
    report = export_onnx(checkpoint, args.out, fp16=args.fp16, opset=args.opset,
                         parity_batch=args.parity_batch)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    meta = report.metadata
    print(f"exported {meta.family} step {meta.training_step} ({meta.precision}) -> {report.path}")
    for f in report.files:
        print(f"  file        {f}")
    print(f"  size        {report.bytes / 2**20:.2f} MiB")
    print(f"  opset       {report.opset}")
    print(f"  model       {meta.num_classes} classes, dim_z {meta.dim_z}, "
          f"{meta.resolution}x{meta.resolution}x{meta.channels}")
    for n, err in report.max_abs_error.items():
        print(f"  parity N={n:<3} max |onnx - torch| {err:.2e} float, "
              f"{report.max_uint8_diff[n]} uint8 levels (bound {report.tolerance:g}, "
              f"{report.provider})")
    print(f"  time        {report.seconds:.1f} s")
    return 0


def _best(path: str) -> str:
    """The checkpoint `best` names under a run or checkpoints directory (ConfigError if none)."""
    from pathlib import Path

    from bigan.checkpoint.best import BestPointerError, best_checkpoint

    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"--best needs a run or checkpoints directory; {path!r} is not one")
    root = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    try:
        return str(best_checkpoint(root))
    except BestPointerError as e:
        raise ConfigError(str(e)) from e
