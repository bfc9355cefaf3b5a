"""Training with evaluation on vs off: wall time and training images/s of the same short demo run.

Runs `bigan train configs/demo.yaml` (digits at 32 px) three times as a user would, each in a
fresh run directory: evaluation off, evaluation in its own process (eval.mode=process) and
inside the loop (eval.mode=blocking), at the same cadence and N, with the domain classifier as
extractor (Inception runs at 1-3 images/s on a CPU; `--extractor inception` to use it anyway).
Training throughput is the mean of the trainer's own `speed/img_per_sec` over its log steps;
wall time is the whole command (including the wait for the last evaluation). The real features
are cached by a warm-up evaluation first, so no run pays for them.

    python bench/train_eval.py [--steps 200] [--every-kimg 2.56] [--n 500] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def train_speed(run_dir: Path) -> float:
    """Mean training images/s over the log steps (the first is left out: it includes setup)."""
    rows = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["speed/img_per_sec"] for r in rows if "speed/img_per_sec" in r][1:]
    return sum(speeds) / len(speeds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every-kimg", type=float, default=2.56, help="64 images/step: 40 steps")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--data", default="runs/data/digits-32")
    ap.add_argument("--extractor", default="runs/data/digits-32-classifier.safetensors")
    ap.add_argument("--work", default="runs/bench-train-eval")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()

    py = [sys.executable, "-m", "bigan.cli"]
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    env.setdefault("OMP_NUM_THREADS", "1")
    if not (ROOT / args.data / "dataset.json").is_file():
        run([*py, "data", "make-digits", args.data, "--resolution", "32"], env)
    if args.extractor != "inception" and not (ROOT / args.extractor).is_file():
        run([*py, "eval", "train-classifier", args.data, "--out", args.extractor, "--epochs", "5"], env)
    work = ROOT / args.work
    cache = work / "cache"
    base = [*py, "train", "configs/demo.yaml", f"data.path={args.data}", f"train.steps={args.steps}",
            "train.sample_every_kimg=6400", "train.ckpt_every_kimg=6400"]  # 100000 steps: never
    evals = [f"eval.every_kimg={args.every_kimg}", f"eval.n={args.n}",
             f"eval.extractor={args.extractor}", f"eval.cache_dir={cache}",
             "eval.metrics=[fid,kid,precision,recall,class_accuracy,intra_fid]"
             if args.extractor != "inception" else "eval.metrics=[fid,kid,precision,recall]"]
    # Warm the real-feature cache with a 1-step run, so every timed run finds it.
    run([*base, "--out", str(work / "warmup"), "train.steps=1", *evals], env)
    rows = []
    for mode in ("off", "process", "blocking"):
        out = work / mode
        extra = [] if mode == "off" else [*evals, f"eval.mode={mode}"]
        seconds = run([*base, "--out", str(out), *extra], env)
        history = out / "eval" / "history.jsonl"
        n_evals = len(history.read_text().splitlines()) if history.is_file() else 0
        eval_s = (sum(json.loads(s)["seconds"] for s in history.read_text().splitlines())
                  if n_evals else 0.0)
        rows.append({"mode": mode, "wall_s": round(seconds, 1), "train_img_per_s": round(train_speed(out), 1),
                     "evaluations": n_evals, "eval_seconds_total": round(eval_s, 1)})
    off = rows[0]
    print(f"{args.steps} steps of configs/demo.yaml, eval every {args.every_kimg} kimg at N={args.n} "
          f"({args.extractor}); {os.cpu_count()} CPUs, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}")
    print(f"{'mode':<10} {'wall s':>8} {'vs off':>7} {'train img/s':>12} {'vs off':>7} {'evals':>6} {'eval s':>7}")
    for r in rows:
        print(f"{r['mode']:<10} {r['wall_s']:>8.1f} {r['wall_s'] / off['wall_s']:>7.2f} "
              f"{r['train_img_per_s']:>12.1f} {r['train_img_per_s'] / off['train_img_per_s']:>7.2f} "
              f"{r['evaluations']:>6} {r['eval_seconds_total']:>7.1f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    result = {"steps": args.steps, "every_kimg": args.every_kimg, "n": args.n,
              "extractor": args.extractor, "cpus": os.cpu_count(), "platform": platform.platform(),
              "omp_num_threads": env["OMP_NUM_THREADS"], "rows": rows}
    (Path(args.out) / "train_eval.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
