"""FID feature extraction speed: the Inception network on TorchScript vs onnxruntime, same features.

Both runtimes extract the same images in alternating rounds (this machine's speed drifts 20-30%
within minutes, so each round pairs them), reporting images/s per round and the median ratio.
Then FID between two image sets (sklearn digits vs procedural shapes, --n each) is computed from
each runtime's features: the relative difference must stay below 0.5% (issue 14); the features
themselves agree to ~1e-6 relative.

    python bench/inception.py [--n 200] [--rounds 3] [--batch 32] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bigan.data import synthetic  # noqa: E402
from bigan.eval import features, metrics  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per set for the FID check")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--batch", type=int, default=32, help="images per timed batch")
    parser.add_argument("--out", default="bench/results", help="directory for inception.json")
    args = parser.parse_args(argv)

    weights = features.default_inception_weights()
    if weights is None:
        print(f"no Inception weights: {features.INCEPTION_HELP}")
        return 1
    runtimes = {r: features.InceptionExtractor(weights, batch_size=args.batch, runtime=r)
                for r in ("torch", "onnxruntime")}
    batch = synthetic.synthetic(args.batch, 10, 64, seed=1)[0]
    for e in runtimes.values():  # warm-up: first runs allocate and pick kernels
        e.extract(batch[:2])
    rates: dict[str, list[float]] = {r: [] for r in runtimes}
    for k in range(args.rounds):
        order = list(runtimes) if k % 2 == 0 else list(runtimes)[::-1]
        for r in order:
            t0 = time.perf_counter()
            runtimes[r].extract(batch)
            rates[r].append(args.batch / (time.perf_counter() - t0))
        print(f"round {k + 1}: torch {rates['torch'][-1]:.2f} img/s, onnxruntime "
              f"{rates['onnxruntime'][-1]:.2f} img/s", flush=True)
    ratios = [o / t for o, t in zip(rates["onnxruntime"], rates["torch"])]

    a = synthetic.digits(64)[0][:args.n]
    b = synthetic.synthetic(args.n, 10, 64, seed=2)[0]
    fids = {r: metrics.fid_from_features(e.extract(a)[0], e.extract(b)[0])
            for r, e in runtimes.items()}
    rel = abs(fids["onnxruntime"] - fids["torch"]) / fids["torch"]

    result = {"threads": torch.get_num_threads(), "batch": args.batch, "rounds": args.rounds,
              "img_per_sec": rates, "ratio_per_round": ratios, "ratio_median": statistics.median(ratios),
              "fid": fids, "fid_rel_diff": rel, "n": args.n, "weights_sha256": runtimes["torch"].sha256,
              "machine": platform.machine(), "cpu": platform.processor()}
    print("\n| runtime | img/s (median of rounds) | FID digits vs shapes |\n| --- | --- | --- |")
    for r in runtimes:
        print(f"| {r} | {statistics.median(rates[r]):.2f} | {fids[r]:.4f} |")
    print(f"\nonnxruntime / torch: {statistics.median(ratios):.2f}x (rounds "
          f"{', '.join(f'{x:.2f}' for x in ratios)}); FID relative difference {100 * rel:.4f}% "
          f"at N={args.n}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inception.json").write_text(json.dumps(result, indent=2))
    return 0 if rel < 0.005 else 1


if __name__ == "__main__":
    raise SystemExit(main())
