"""`bigan checkpoint {list,verify,consolidate}`: what an operator runs against a run's checkpoints.

Importing this module loads no torch (`bigan --help` stays fast); the work is imported when a
command runs. Failures the user can act on raise `CheckpointError` / `FileNotFoundError`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_checkpoint_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("checkpoint", help="list, verify or consolidate training checkpoints")
    sub = p.add_subparsers(dest="action", required=True)

    q = sub.add_parser("list", help="the complete checkpoints of a run, oldest first",
                       description="One line per complete step-* directory: step, images seen, "
                                   "the world size and strategy that wrote it, ProGAN phase, and "
                                   "which ones `latest` and `best` (the best evaluated) name.")
    q.add_argument("root", help="run directory or its checkpoints/ directory")
    q.set_defaults(func=_list)

    q = sub.add_parser("verify", help="check a checkpoint's files and load them",
                       description="Exit 0 when every file listed in the manifest is present, of "
                                   "the recorded size and sha256, loads (weights as safetensors, "
                                   "other state with torch.load(weights_only=True)) and holds "
                                   "only finite numbers; else exit 2 naming the file.")
    q.add_argument("checkpoint", help="a step-* directory, or a root (its latest checkpoint)")
    q.set_defaults(func=_verify)

    q = sub.add_parser("consolidate", help="write G, EMA G and D as one safetensors file",
                       description="Write the weights of G, the EMA generator and D of a "
                                   "checkpoint (whatever world size and strategy wrote it) into "
                                   "one .safetensors file, with the checkpoint's manifest (config, "
                                   "class names, step) in its metadata. `bigan export`, `bigan "
                                   "sample` and `bigan eval` accept the file in place of the "
                                   "checkpoint. Optimizer states are left out: resume from the "
                                   "checkpoint directory itself.")
    q.add_argument("checkpoint", help="a step-* directory, a checkpoints root or a run directory "
                                      "(its newest checkpoint)")
    q.add_argument("out", help="output file, ending in .safetensors")
    q.set_defaults(func=_consolidate)


def _root(path: str) -> Path:
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{path!r} does not exist")
    return root / "checkpoints" if (root / "checkpoints").is_dir() else root


def _list(args: argparse.Namespace) -> int:
    from bigan.checkpoint import store as ckpt
    from bigan.checkpoint.best import read_best
    from bigan.checkpoint.resume import read_latest

    root = _root(args.root)
    found = ckpt.list_checkpoints(root)
    for path in ckpt.incomplete_step_dirs(root):
        print(f"warning: {path} has no {ckpt.MANIFEST} (an interrupted save, or written by a "
              "version without manifests); it is not listed and never resumed from",
              file=sys.stderr)
    if not found:
        raise ckpt.CheckpointError(f"{args.root} holds no complete checkpoint")
    best = read_best(root)
    latest = read_latest(root)  # None, with a logged warning, when unreadable or not a step name
    print(f"{'checkpoint':<16} {'step':>8} {'images':>10} {'world':>5} {'strategy':<8} "
          f"{'phase':<18} pointers")
    for path in found:
        marks = [name for name, hit in (("latest", path.name == latest),
                                        ("best", best and path.name == best["checkpoint"])) if hit]
        print(f"{path.name:<16} {_summary(path / ckpt.MANIFEST)} {','.join(marks) or '-'}")
    if best:
        print(f"best: {best['checkpoint']} by {best['metric']} = {best['value']:.6g} "
              f"({best.get('direction', '?')}imum, at {best.get('kimg', 0):g} kimg)")
    return 0


def _summary(mpath: Path) -> str:
    """step, images, world, strategy and phase columns from a manifest; for one that cannot be
    read, a placeholder row and a warning line (the other checkpoints are still listed)."""
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
        ph = m.get("phase")
        phase = f"{ph['resolution']}px alpha {ph['alpha']:.3f}" if ph else "-"
        return (f"{m['step']:>8} {m.get('cur_nimg', 0):>10} {m.get('world_size', 1):>5} "
                f"{m.get('strategy', '-'):<8} {phase:<18}")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        # ValueError: cut JSON or bytes that are not UTF-8; the rest: JSON of the wrong shape.
        print(f"warning: {mpath} cannot be read ({type(e).__name__}: {e}); the checkpoint is "
              "damaged (`bigan checkpoint verify` says more; `--resume auto` skips it)",
              file=sys.stderr)
        return f"{'?':>8} {'?':>10} {'?':>5} {'damaged':<8} {'-':<18}"


def _verify(args: argparse.Namespace) -> int:
    from bigan.checkpoint.resume import find_resume, load_trusted

    path = Path(args.checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{args.checkpoint!r} does not exist")
    # A step-* directory is checked as given (one without a manifest is reported as such); a
    # run directory or checkpoints root stands for its latest checkpoint.
    if not (path / "manifest.json").is_file() and not path.name.startswith("step-"):
        path = find_resume(_root(args.checkpoint), str(_root(args.checkpoint)))
    c = load_trusted(path)  # sha256 of every file, weights_only loads, finite values
    tensors = sum(len(sd) for sd in c.models.values())
    print(f"{path}: ok ({len(c.manifest['files'])} files, step {c.manifest['step']}; loaded "
          f"{', '.join(c.models)} ({tensors} tensors) and {', '.join(c.objects)}, all finite)")
    return 0


def _consolidate(args: argparse.Namespace) -> int:
    from bigan.checkpoint.weights import consolidate, read_weights

    if not args.out.endswith(".safetensors"):
        from bigan.config import ConfigError

        raise ConfigError(f"output {args.out!r} must end in .safetensors")
    out = consolidate(args.checkpoint, args.out)
    w = read_weights(out)
    m = w.manifest
    sizes = ", ".join(f"{name} {sum(t.numel() for t in sd.values()):,}" for name, sd in w.models.items())
    print(f"{out}: step {m['step']} (written by {m.get('world_size', 1)} {m.get('strategy', 'ddp')} "
          f"worker(s)); parameters+buffers: {sizes}; {out.stat().st_size / 2**20:.2f} MiB")
    return 0
