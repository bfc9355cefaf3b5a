"""The `bigan` command: data, train, launch, checkpoint, import, sample, export, serve, eval, truncation-sweep.

`data` (pack, make-digits, make-synthetic, inspect) makes and checks shards; `train` runs one
process (or each process of `accelerate launch`), `launch` the same run on a Ray cluster;
`checkpoint` (list, verify, consolidate) works on a run's checkpoints; `import` turns released
weights (BigGAN-PyTorch, huggingface BigGAN-deep) into one; `sample` draws a grid from
a checkpoint, `export` writes the ONNX file that `serve` serves; `eval` (and `eval
train-classifier`) and `truncation-sweep` score a generator. Only this module composes every
package (docs/design.md).

Errors the user can fix (bad config, missing checkpoint, divergence) become one readable line
on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from bigan.config import ConfigError, dump_config, load_config


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        print(dump_config(cfg), end="")
        return 0
    from bigan.eval.errors import EvalError
    from bigan.eval.run_evaluator import make_evaluator
    from bigan.train.trainer import train

    try:  # checked before training starts: a missing extractor file fails now, not at kimg 500
        evaluator = make_evaluator(cfg)
    except EvalError as e:
        raise ConfigError(str(e)) from e
    result = train(cfg, resume=args.resume, evaluator=evaluator)
    run = result.run_dir
    print(f"trained {result.step} steps ({result.cur_nimg / 1000:.1f} kimg)")
    print(f"  checkpoint   {result.last_checkpoint}")
    print(f"  grid         {run / 'grids' / 'latest.png'}")
    print(f"  tensorboard  tensorboard --logdir {run / 'tb'}")
    print(f"  metrics      {run / 'metrics.jsonl'}")
    if evaluator is not None:
        from bigan.checkpoint.best import read_best

        print(f"  evaluation   {run / 'eval' / 'history.jsonl'}, {run / 'eval' / 'metrics.png'}")
        best = read_best(run / "checkpoints")
        if best:
            print(f"  best         {run / 'checkpoints' / best['checkpoint']} "
                  f"({best['metric']} = {best['value']:.4g})")
    return 0


def _parse_classes(text: str, names: list[str]) -> list[int]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item.isdigit():
            k = int(item)
        elif item in names:
            k = names.index(item)
        else:
            raise ConfigError(f"--classes: {item!r} is neither a class id nor one of {names}")
        if not 0 <= k < len(names):
            raise ConfigError(f"--classes: class id {k} is outside 0..{len(names) - 1}")
        out.append(k)
    return out


def _sample(args: argparse.Namespace) -> int:
    from bigan.generation import load_ema_generator, save_samples_png

    if args.truncation is not None and args.truncation <= 0:
        raise ConfigError(f"--truncation={args.truncation} must be > 0 (omit it for no truncation)")
    if args.n < 1:
        raise ConfigError(f"--n={args.n} must be >= 1")
    G, class_names, path = load_ema_generator(args.checkpoint)
    classes = _parse_classes(args.classes, class_names) if args.classes else list(range(min(10, len(class_names))))
    out = save_samples_png(G, args.out, classes, args.n, args.seed, args.truncation)
    print(f"{len(classes)} classes x {args.n} samples from {path} -> {out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    """`bigan import FORMAT SRC --out DIR`: released weights as a checkpoint (bigan/imports/)."""
    if args.format == "hf-biggan":
        if args.bn_eps is not None or args.class_names:
            raise ConfigError("--bn-eps and --class-names apply to format biggan-pytorch only; "
                              "a hf-biggan directory's config.json carries its settings")
        from bigan.imports import hf_biggan

        result = hf_biggan.convert(args.src, args.out)
        print(f"imported hf-biggan {args.src} -> {args.out}")
        if result is not None:
            print(f"  {result}")
    else:
        from pathlib import Path

        from bigan.imports import biggan_pytorch

        if args.bn_eps is not None and not args.bn_eps > 0:
            raise ConfigError(f"--bn-eps={args.bn_eps} must be > 0")

        names = None
        if args.class_names:
            path = Path(args.class_names)
            if not path.is_file():
                raise FileNotFoundError(f"--class-names {str(path)!r} does not exist")
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        report = biggan_pytorch.convert(args.src, args.out, bn_eps=1e-5 if args.bn_eps is None else args.bn_eps,
                                        class_names=names)
        m = report.model
        print(f"imported biggan-pytorch {report.source} -> {report.checkpoint}")
        print(f"  model       biggan {m.resolution}px, ch {m.ch}, {m.num_classes} classes, "
              f"dim_z {m.dim_z}, shared_dim {m.shared_dim}, attention {m.attention}, "
              f"{report.parameters:,} parameters")
    print(f"  next        bigan export {args.out} --out model.onnx && bigan serve model.onnx")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """`bigan serve`: the torch-free HTTP server of `serving/` (needs the `serve` extra)."""
    from bigan.ort_session import ModelFileError
    from serving.config import serve_config_from_args

    try:
        cfg = serve_config_from_args(args)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if args.ray and args.grpc_port is not None:
        raise ConfigError("--grpc-port is served by `bigan serve` itself, not by Ray Serve "
                          "replicas; drop --ray or --grpc-port")
    try:
        if args.ray:
            from serving.ray_serve import serve_forever as run
        else:
            from serving.server import serve as run
    except ImportError as e:
        raise ConfigError(f"bigan serve needs the serve extra ({e}): "
                          "pip install 'bigan[serve]' -c constraints.txt") from e
    try:
        run(cfg)
    except ModelFileError as e:
        raise ConfigError(str(e)) from e
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input", imported lazily so `--help` needs no torch."""
    from bigan.data.sources import DataError
    from bigan.ort_session import ModelFileError

    errors: list[type[BaseException]] = [ConfigError, FileNotFoundError, DataError]
    try:
        from bigan.checkpoint.store import CheckpointError
        from bigan.export.onnx import ExportError
        from bigan.imports.common import ImportFileError
        from bigan.train.trainer import TrainingDiverged
    except ImportError:
        return tuple(errors)
    return (*errors, ModelFileError, CheckpointError, TrainingDiverged, ExportError,
            ImportFileError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigan", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a GAN from a YAML config",
                       description="Train a GAN. Re-running the same command with --resume auto "
                                   "continues from the newest valid checkpoint.")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.ch=64 train.steps=500")
    p.add_argument("--out", help="run directory (overrides train.out_dir)")
    p.add_argument("--resume", help="'auto' (newest valid checkpoint in the run directory, "
                                    "else start fresh), a checkpoint directory, or a checkpoint "
                                    "URL (s3://..., fetched first)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="draw a per-class grid PNG from a checkpoint's EMA generator",
                       description="Row per class, column j uses seed SEED+j; the same inputs "
                                   "always give the same images (and the server gives them too).")
    p.add_argument("checkpoint", help="checkpoint directory, a run/checkpoints directory (uses latest), "
                                      "or a consolidated .safetensors weights file")
    p.add_argument("--classes", default="", help="comma-separated class ids or names (default: first 10)")
    p.add_argument("--n", type=int, default=8, help="samples per class (default 8)")
    p.add_argument("--truncation", type=float, default=None,
                   help="truncation psi > 0: latents resampled into [-psi, psi] (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first column (default 0)")
    p.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    p.set_defaults(func=_sample)

    from bigan.imports import FORMATS

    p = sub.add_parser("import", help="turn released generator weights into a bigan checkpoint",
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
    p.add_argument("--class-names", default=None,
                   help="biggan-pytorch: text file with one class name per line (default: ids)")
    p.set_defaults(func=_import)

    p = sub.add_parser("serve", help="serve an exported ONNX generator over HTTP (no torch needed)",
                       description="Serve MODEL (.onnx, or a repository of models) with onnxruntime: "
                                   "POST /v1/generate, the KServe v2 protocol under /v2, /metrics, "
                                   "/healthz, /readyz and a web page at /. Concurrent requests are "
                                   "merged into batches of up to --max-batch images.")
    from serving.config import add_serve_arguments  # stdlib only: --help needs no serve extra

    add_serve_arguments(p)  # MODEL and one flag per ServeConfig / EngineConfig field
    p.add_argument("--ray", action="store_true",
                   help="run as Ray Serve replicas (needs ray[serve])")
    p.set_defaults(func=_serve)

    from bigan.data.commands import add_data_commands
    from bigan.eval.commands import add_eval_commands
    from bigan.export.commands import add_export_command
    from bigan.checkpoint.commands import add_checkpoint_commands
    from launch.commands import add_launch_command  # launch/ ships beside bigan/

    add_data_commands(sub)
    add_export_command(sub)
    add_eval_commands(sub)
    add_launch_command(sub)
    add_checkpoint_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # parse_known_args lets overrides come after options too (`train C --out D model.ch=8`).
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or args.command not in ("train", "launch")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"bigan {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
