"""The `bigan import` subcommand: argument parsing and the summary around the format modules.

`add_import_command(subparsers)` registers it on `bigan.cli`'s parser. Importing this module
loads no torch, so `bigan --help` stays fast; the format's converter is imported when the
command runs.
"""

from __future__ import annotations

import argparse

from bigan.config import ConfigError
from bigan.imports import FORMATS


def add_import_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("import", help="turn released generator weights into a bigan checkpoint",
                              description="Read released weights without running any code from them "
                                          "(weights_only / safetensors) and write OUT/checkpoints/"
                                          "step-00000000 with the generator as the EMA weights and its "
                                          "config, for `bigan sample/export/eval OUT`. biggan-pytorch: "
                                          "BigGAN-PyTorch's G_ema.pth (or G.pth, or their weights "
                                          "directory), as model.arch=biggan; hf-biggan: a huggingface "
                                          "pytorch-pretrained-BigGAN directory (pytorch_model.bin + "
                                          "config.json), as model.arch=biggan-deep.")
    p.add_argument("format", choices=FORMATS, help="the layout of SRC")
    p.add_argument("src", help="weights file or directory")
    p.add_argument("--out", required=True, help="new run directory to write (must not exist or "
                                                "be empty)")
    p.add_argument("--bn-eps", type=float, default=None,
                   help="biggan-pytorch: the BN_eps it was trained with (not stored in the "
                        "weights; default 1e-5, as in all its launch scripts)")
    p.add_argument("--class-names", default=None, metavar="FILE",
                   help="text file with one class name per line, class 0 first (default: the "
                        "ImageNet-1k names for a 1,000-class model, else the class ids)")
    p.add_argument("--z-sampling", choices=("resample", "tfhub-scaled"), default=None,
                   help="hf-biggan: how the model draws z from a seed and psi (default "
                        "tfhub-scaled: psi * truncnorm(-2, 2) as TF-Hub and the package do, so "
                        "a seed gives the package's image; resample: bigan's own)")
    p.set_defaults(func=run_import)
    return p


def run_import(args: argparse.Namespace) -> int:
    """`bigan import FORMAT SRC --out DIR`: released weights as a checkpoint (bigan/imports/)."""
    from bigan.imports.class_names import read_class_names

    names = read_class_names(args.class_names) if args.class_names else None
    if args.format == "hf-biggan":
        if args.bn_eps is not None:
            raise ConfigError("--bn-eps applies to format biggan-pytorch only; a hf-biggan "
                              "directory's config.json carries its settings")
        from bigan.imports import hf_biggan

        z_sampling = args.z_sampling or hf_biggan.Z_SAMPLING
        report = hf_biggan.convert(args.src, args.out, z_sampling, class_names=names)
    else:
        from bigan.imports import biggan_pytorch

        if args.z_sampling is not None:
            raise ConfigError("--z-sampling applies to format hf-biggan only")
        if args.bn_eps is not None and not args.bn_eps > 0:
            raise ConfigError(f"--bn-eps={args.bn_eps} must be > 0")
        z_sampling = "resample"
        report = biggan_pytorch.convert(args.src, args.out,
                                        bn_eps=1e-5 if args.bn_eps is None else args.bn_eps,
                                        class_names=names)
    print_import_summary(args, report, z_sampling)
    return 0


def print_import_summary(args: argparse.Namespace, report, z_sampling: str) -> None:
    """What docs/import.md says `bigan import` prints: what was found, then the next command."""
    from bigan.imports.class_names import IMAGENET_CLASSES, imagenet_class_names

    m = report.model
    names = report.class_names
    origin = (f"from {args.class_names}" if args.class_names
              else f"ImageNet-1k names ({IMAGENET_CLASSES})" if names == imagenet_class_names()
              else "ids (name them with --class-names FILE)")
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    print(f"imported {args.format} {report.source} -> {report.checkpoint}")
    print(f"  model      {m.arch} {m.resolution}px, ch {m.ch}, {m.num_classes} classes, "
          f"dim_z {m.dim_z}, shared_dim {m.shared_dim}, attention {m.attention}, "
          f"{report.parameters:,} parameters")
    print(f"  classes    {origin}: {shown}")
    print(f"  z sampling {z_sampling}")
    print(f"  next       bigan export {args.out} --out model.onnx && bigan serve model.onnx")
