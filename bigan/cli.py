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
    if args.finetune_from:  # the source's model settings, the config's classes (bigan/train/finetune.py)
        from bigan.checkpoint.store import CheckpointError
        from bigan.train.finetune import for_source

        try:  # the flag the user typed, not finetune.source, in the one line
            cfg = for_source(cfg, args.finetune_from)
        except (FileNotFoundError, CheckpointError, ConfigError) as e:
            raise ConfigError(f"--finetune-from {args.finetune_from}: {e}") from e
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
    from bigan.generation import open_sampler, save_samples_png
    from bigan.onnx_metadata import parse_truncation

    psi = None if args.truncation is None else parse_truncation(args.truncation, "--truncation")
    if args.n < 1:
        raise ConfigError(f"--n={args.n} must be >= 1")
    sampler = open_sampler(args.checkpoint, points=True)
    if args.truncation is None:  # the model's own default, as the server's
        psi = sampler.default_truncation
    class_names = sampler.class_names
    classes = _parse_classes(args.classes, class_names) if args.classes else list(range(min(10, len(class_names))))
    out = save_samples_png(sampler, args.out, classes, args.n, args.seed, psi)
    print(f"{len(classes)} classes x {args.n} samples from {sampler.path} "
          f"(truncation {'none' if psi is None else psi}) -> {out}")
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
    if not args.ray and (args.min_replicas is not None or args.max_replicas is not None):
        raise ConfigError("--min-replicas and --max-replicas autoscale Ray Serve replicas; add "
                          "--ray (or use --workers for a fixed number of processes)")
    try:
        from serving.server import BindError
        if args.ray:
            from serving.ray_serve import serve_forever as run
        else:
            from serving.server import serve as run
    except ImportError as e:
        raise ConfigError(f"bigan serve needs the serve extra ({e}): "
                          "pip install 'bigan[serve]' -c constraints.txt") from e
    try:
        run(cfg)
    except (ModelFileError, BindError) as e:
        raise ConfigError(str(e)) from e
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input", imported lazily so `--help` needs no torch."""
    from bigan.data.sources import DataError
    from bigan.onnx_metadata import TruncationError
    from bigan.ort_session import ModelFileError

    errors: list[type[BaseException]] = [ConfigError, FileNotFoundError, DataError,
                                         TruncationError]
    try:
        from bigan.checkpoint.store import CheckpointError
        from bigan.export.onnx import ExportError
        from bigan.imports.common import ImportFileError
        from bigan.train.run_lock import RunLockError
        from bigan.train.trainer import TrainingDiverged
    except ImportError:
        return tuple(errors)
    return (*errors, ModelFileError, CheckpointError, TrainingDiverged, ExportError,
            ImportFileError, RunLockError)


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
    p.add_argument("--resume", help="'auto' (newest valid checkpoint in the run directory; "
                                    "step 0 when it has none; refused when it has some but all "
                                    "are damaged), 'auto-or-fresh' (the same, but then start from "
                                    "step 0, overwriting them), a checkpoint directory, or a "
                                    "checkpoint URL (s3://..., fetched first)")
    p.add_argument("--finetune-from", metavar="SOURCE",
                   help="start a fresh run from SOURCE's weights (checkpoint or run directory, "
                        "or a .safetensors from `bigan checkpoint consolidate`; an imported "
                        "generator's run directory), with its model settings and this config's "
                        "classes: classes of the same name keep their rows (finetune.* options)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="draw a per-class grid PNG from a checkpoint's EMA generator "
                                      "or an exported .onnx file",
                       description="Row per class, column j uses seed SEED+j; the same inputs "
                                   "always give the same images (and the server gives them too: "
                                   "byte for byte from the same .onnx file).")
    p.add_argument("checkpoint", help="checkpoint directory, a run/checkpoints directory (uses latest), "
                                      "a consolidated .safetensors weights file or an exported .onnx")
    p.add_argument("--classes", default="", help="comma-separated class ids or names (default: first 10)")
    p.add_argument("--n", type=int, default=8, help="samples per class (default 8)")
    p.add_argument("--truncation", default=None, metavar="PSI",
                   help="truncation psi in [0.01, 4] (latents drawn by the model's z sampling: "
                        "resampled into [-psi, psi], or psi * truncnorm(-2, 2) for imported "
                        "TF-Hub weights), or none (default: the model's recommended psi, per "
                        "class where it has one, as the server's; none for a checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first column (default 0)")
    p.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    p.set_defaults(func=_sample)

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
    from bigan.imports.commands import add_import_command
    from bigan.checkpoint.commands import add_checkpoint_commands
    from bigan.train.plan import add_plan_command
    from launch.commands import add_launch_command  # launch/ ships beside bigan/

    add_data_commands(sub)
    add_export_command(sub)
    add_eval_commands(sub)
    add_launch_command(sub)
    add_checkpoint_commands(sub)
    add_import_command(sub)
    add_plan_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # parse_known_args lets overrides come after options too (`train C --out D model.ch=8`).
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or args.command not in ("train", "launch", "plan")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except _user_errors() as exc:
        _close_progress_bars()
        print(f"bigan {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _close_progress_bars() -> None:
    """End any progress bar a failing command left open, so that its error starts a line of its
    own instead of trailing the bar's last redraw (tqdm draws with carriage returns)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
