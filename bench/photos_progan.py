"""ProGAN on real photographs, scored phase by phase (`quality_photos.py --variant progan --score`).

For every resolution the run reached, its last kept checkpoint is scored against the real images
*at that resolution* (the data set packed again at the phase's side, as D saw it during the
phase), so an 8 px phase is judged as an 8 px model and not as a blurred 128 px one:
- domain FD, precision, recall and class accuracy in the domain classifier's features (the
  classifier and the generated and real images meet at the classifier's input side);
- recall per phase is the within-class variety check: a G whose samples of a class look alike
  covers little of the real distribution and its recall falls;
- Inception FID/KID (N images, real-vs-real beside it) at the last resolution;
- a class grid per phase, drawn side by side at one display size (nearest-neighbour upscaling, so
  a 4 px phase shows its 4 px), as one PNG.
Scores are cached in the run's `scores.json` like the other variants'.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bench.photos_scoring import _step, _write_json

PHASE_GRID_CLASSES = 10
PHASE_GRID_PER_CLASS = 6
DISPLAY_SIDE = 48  # pixels per sample in the phase-grid PNG


def phase_checkpoints(run: Path, cpu_at_step: dict) -> dict[int, Path]:
    """Resolution -> the last kept checkpoint whose G is at that resolution with the new block
    fully faded in (alpha 1), among those with a recorded CPU time."""
    from bigan.checkpoint.store import list_checkpoints
    from bigan.generation import open_sampler

    last: dict[int, Path] = {}
    for ckpt in list_checkpoints(run / "checkpoints"):
        if str(_step(ckpt)) not in cpu_at_step:
            continue
        G = open_sampler(ckpt).G
        if float(G.alpha) >= 1.0:
            last[int(G.current_resolution)] = ckpt
    return dict(sorted(last.items()))


def reference_at(name: str, src: Path, out: Path, side: int) -> Path:
    """The real images of data set `name` (folder `src`) packed at `side` px (once;
    byte-identical on a re-run)."""
    from bigan.data.shards import pack

    dest = out / "data" / f"{name}-phase-{side}"
    if not (dest / "dataset.json").is_file():
        pack(src, dest, side, min_shards=4, progress=False)
    return dest


def score_phases(run: Path, name: str, src: Path, out: Path, clf_path: Path, n_domain: int, n_inception: int) -> dict:
    """Domain scores of every phase's last checkpoint, Inception at the last one."""
    from bigan.eval.evaluate import evaluate
    from bigan.eval.features import ClassifierExtractor, InceptionExtractor, default_inception_weights
    from bigan.generation import open_sampler

    cpu = json.loads((run / "cpu_sec.json").read_text())["at_step"]
    scores_file = run / "scores.json"
    scores = json.loads(scores_file.read_text()) if scores_file.is_file() else {}
    phases = scores.setdefault("phases", {})
    clf, cache = ClassifierExtractor(clf_path), out / "feature-cache"
    ckpts = phase_checkpoints(run, cpu)
    weights = default_inception_weights()
    inception_sides = list(ckpts)[-1:] if n_inception and weights is not None else []
    for side, ckpt in ckpts.items():
        step, row = _step(ckpt), phases.get(str(side), {})
        if row.get("step") != step or row.get("n") != n_domain:
            reference = reference_at(name, src, out, side)
            m = evaluate(open_sampler(ckpt), reference, [clf], n_domain, baseline=True, cache_dir=cache,
                         log=lambda s: None)["metrics"][clf.name]
            row = {"side": side, "step": step, "cpu_sec": cpu[str(step)], "n": n_domain,
                   **{k: m[k] for k in ("fid", "kid", "precision", "recall", "class_accuracy")},
                   "real_vs_real": m["real_vs_real"]}
            phases[str(side)] = row
            _write_json(scores_file, scores)
            print(f"  {side:4d} px step {step}: domain FD {m['fid']:.3f}  recall {m['recall']:.3f}  "
                  f"acc {m['class_accuracy']:.3f}", flush=True)
        if side in inception_sides and (row.get("inception") or {}).get("n") != n_inception:
            t0 = time.perf_counter()
            inc = InceptionExtractor(weights)
            m = evaluate(open_sampler(ckpt), reference_at(name, src, out, side), [inc], n_inception, baseline=True,
                         cache_dir=cache, log=lambda s: None)["metrics"][inc.name]
            row["inception"] = {"n": n_inception, "seconds": time.perf_counter() - t0,
                                **{k: m[k] for k in ("fid", "kid", "kid_std", "precision", "recall")},
                                "real_vs_real": m["real_vs_real"]}
            _write_json(scores_file, scores)
            print(f"  {side:4d} px step {step}: Inception FID {m['fid']:.2f}", flush=True)
    scores["phase_grids_png"] = str(phase_grids_png(ckpts, run / "phase_grids.png"))
    _write_json(scores_file, scores)
    return scores


def phase_grids_png(ckpts: dict[int, Path], path: Path) -> Path:
    """One class grid per phase (rows: classes, columns: seeds), side by side, equal display size."""
    from PIL import Image, ImageDraw

    from bigan import pictures
    from bigan.generation import open_sampler

    panels = []
    for side, ckpt in ckpts.items():
        sampler = open_sampler(ckpt)
        k = min(PHASE_GRID_CLASSES, sampler.num_classes)
        labels = np.repeat(np.arange(k), PHASE_GRID_PER_CLASS)
        seeds = np.tile(np.arange(PHASE_GRID_PER_CLASS), k)
        imgs = pictures.to_uint8(sampler.images(labels, seeds, None))  # [N, side, side, 3]
        tiles = [Image.fromarray(im).resize((DISPLAY_SIDE, DISPLAY_SIDE), Image.NEAREST) for im in imgs]
        panel = Image.new("RGB", (PHASE_GRID_PER_CLASS * DISPLAY_SIDE, k * DISPLAY_SIDE + 16), "white")
        ImageDraw.Draw(panel).text((2, 2), f"{side} px (step {_step(ckpt)})", fill="black")
        for i, tile in enumerate(tiles):
            r, c = divmod(i, PHASE_GRID_PER_CLASS)
            panel.paste(tile, (c * DISPLAY_SIDE, 16 + r * DISPLAY_SIDE))
        panels.append(panel)
    return save_in_a_row(panels, path)


def save_in_a_row(panels: list, path: Path, gap: int = 8) -> Path:
    """PIL images side by side, top-aligned, `gap` white pixels apart, as one PNG at `path`."""
    from PIL import Image

    out = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1),
                            max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, format="PNG")
    return path


def print_phases(scores: dict) -> None:
    nan = float("nan")
    print(f"{'side':>5s} {'step':>6s} {'CPU h':>6s} {'dom FD':>7s} {'(r-v-r)':>7s} {'P':>5s} {'R':>5s} "
          f"{'acc':>5s} {'Inc FID':>8s} {'(r-v-r)':>7s}")
    for side in sorted(scores["phases"], key=int):
        p = scores["phases"][side]
        inc = p.get("inception") or {}
        rvr = (p["real_vs_real"] or {}).get("fid", nan)
        print(f"{int(side):5d} {p['step']:6d} {p['cpu_sec'] / 3600:6.2f} {p['fid']:7.3f} {rvr:7.3f} "
              f"{p['precision']:5.3f} {p['recall']:5.3f} {p['class_accuracy']:5.3f} "
              f"{inc.get('fid', nan):8.2f} {(inc.get('real_vs_real') or {}).get('fid', nan):7.2f}")
    print(f"phase grids {scores['phase_grids_png']}")


def last_panels_side_by_side(grids: list[tuple[str, Path]], path: Path) -> Path:
    """The last phase's panel of each run's `phase_grids.png`, labelled, side by side (docs figures
    that compare runs at one phase: train each with `--set train.steps=...` ending in it)."""
    from PIL import Image, ImageDraw

    width, label = PHASE_GRID_PER_CLASS * DISPLAY_SIDE, 16
    panels = []
    for text, png in grids:
        im = Image.open(png).convert("RGB")
        panel = Image.new("RGB", (width, im.height + label), "white")
        panel.paste(im.crop((im.width - width, 0, im.width, im.height)), (0, label))
        ImageDraw.Draw(panel).text((2, 2), text, fill="black")
        panels.append(panel)
    return save_in_a_row(panels, path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="last-phase class grids of several ProGAN runs, side by side")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("grids", nargs="+", metavar="LABEL=PHASE_GRIDS_PNG")
    args = parser.parse_args()
    print(last_panels_side_by_side([(g.split("=", 1)[0], Path(g.split("=", 1)[1])) for g in args.grids],
                                   args.out))
