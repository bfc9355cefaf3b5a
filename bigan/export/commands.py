"""The `bigan export` subcommand: argument parsing and printing around `bigan.export.onnx`.

`add_export_command(subparsers)` registers the subcommand on `bigan.cli`'s parser. Importing this
module loads neither torch nor onnx, so `bigan --help` stays fast; the exporter is imported when
the command runs. Failures the user can act on raise `ConfigError` (bad option values),
`FileNotFoundError` / `CheckpointError` (checkpoint) or `ExportError` (export or parity check).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    p.add_argument("--truncation", default=None, metavar="PSI",
                   help="the recommended truncation psi written into the metadata: the default "
                        "of the server, `bigan sample` and `bigan eval` for this file, in "
                        "[0.01, 4], or none (default: none, no truncation; `bigan "
                        "truncation-sweep --write` measures one)")
    p.add_argument("--parity-batch", type=int, default=4,
                   help="second batch size of the parity check, besides 1 (default 4)")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON instead of a table")
    t = p.add_argument_group("Triton model repository (docs/serving.md)")
    t.add_argument("--triton-repo", metavar="DIR", default=None,
                   help="also write a Triton model repository for the exported file: "
                        "DIR/NAME/config.pbtxt (onnxruntime backend, dynamic batching over the "
                        "server's batch buckets, warm-up) and DIR/NAME/1/model.onnx")
    t.add_argument("--triton-name", metavar="NAME", default=None,
                   help="the model's name in the Triton repository (default: --out's stem)")
    t.add_argument("--triton-max-batch", type=int, default=32, metavar="N",
                   help="max_batch_size; the preferred batch sizes are 1, 2, 4, ... N, as "
                        "`bigan serve --max-batch N` runs them (default 32, the server's)")
    t.add_argument("--triton-queue-delay-us", type=int, default=5000, metavar="US",
                   help="max_queue_delay_microseconds of the dynamic batcher (default 5000: the "
                        "server's wait for company on a GPU)")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    if args.parity_batch < 1:
        raise ConfigError(f"--parity-batch={args.parity_batch} must be >= 1")
    if args.opset is not None and args.opset < 1:
        raise ConfigError(f"--opset={args.opset} must be a positive ONNX opset version")
    from bigan.onnx_metadata import DEFAULT_TRUNCATION, parse_truncation

    truncation = (DEFAULT_TRUNCATION if args.truncation is None
                  else parse_truncation(args.truncation, "--truncation"))
    triton_name = args.triton_name or Path(args.out).stem
    if args.triton_repo is not None:
        from bigan.export.triton_repo import check_options

        check_options(triton_name, args.triton_max_batch, args.triton_queue_delay_us)
    from bigan.export.onnx import export_onnx

    checkpoint = args.checkpoint
    if args.best:
        checkpoint = _best(checkpoint)
        print(f"best checkpoint: {checkpoint}")
    report = export_onnx(checkpoint, args.out, fp16=args.fp16, opset=args.opset,
                         parity_batch=args.parity_batch, truncation=truncation)
    triton = None
    if args.triton_repo is not None:
        from bigan.export.triton_repo import write_triton_repo

        triton = write_triton_repo(report.path, args.triton_repo, triton_name,
                                   args.triton_max_batch, args.triton_queue_delay_us)
    if args.json:
        print(json.dumps({**report.to_dict(),
                          **({"triton_model": str(triton)} if triton else {})}, indent=2))
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
    psi = meta.recommended_truncation
    print(f"  truncation  {'none' if psi is None else psi} (recommended psi: the default of "
          "every request and command)")
    if triton is not None:
        print(f"  triton      {triton}/config.pbtxt, {triton}/1/model.onnx")
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
