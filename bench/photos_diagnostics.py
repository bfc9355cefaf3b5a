"""Two measurements of a GAN's collapse, per checkpoint of runs of `bench/quality_photos.py`:

    python bench/photos_diagnostics.py bench/results/photos/data/imagenette-64 RUN_DIR [RUN_DIR ...]
        [--panel OUT.png]   # also: each checkpoint's class grid, labelled with its step and spread

- **spread**: within a class, the mean pairwise L2 distance of 16 generated images (seeds 0-15,
  EMA G, 32 px, values in [0, 1]) over the same for 16 real images of that class, averaged over
  the classes. 1 is real images' variety; a G that ignores z tends to 0. Cheap enough for every
  checkpoint of a short run, and needs no classifier (recall needs one and N in the thousands).
- **low-pass share**: of D's gradient wrt 40 fakes (of -D(G(z), y), what G's hinge update
  follows; G and D in training mode as in that update), the share of its energy that survives
  8x8 average pooling, and the mean cosine between the pooled gradients of two fakes. It showed
  that the projected D pushes G almost only with pixel-level detail (1-2% of the energy at 8x8
  against BigGAN's D's 36-64%; docs/benchmarks.md). For an ensemble D, of the members'
  gradients weighted as G's loss weighs them, and each member's gradient norm beside it (it
  showed the projected member's ~10x the native one's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bigan import models  # noqa: E402
from bigan.checkpoint.store import list_checkpoints  # noqa: E402
from bigan.config import Config, load_config  # noqa: E402
from bigan.eval.real_data import read_shard_images  # noqa: E402
from bigan.generation import open_sampler  # noqa: E402
from bigan.regularizers import logit_total  # noqa: E402

PER_CLASS = 16  # images per class for the spread
GRAD_BATCH = 40  # fakes whose D gradients are compared
POOL = 8  # the low-pass: average over POOL x POOL pixels


def _small(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC or float NCHW in [-1, 1] -> [N, 3 * 32 * 32] in [0, 1]."""
    t = torch.as_tensor(images).float()
    t = t.permute(0, 3, 1, 2) / 255.0 if t.shape[-1] in (1, 3) else (t + 1) / 2
    return F.adaptive_avg_pool2d(t, 32).flatten(1)


def mean_pairwise_distance(v: torch.Tensor) -> float:
    n = len(v)
    return float(torch.cdist(v, v).sum() / (n * (n - 1)))


def spread(sampler, real_per_class: float, num_classes: int) -> float:
    within = [mean_pairwise_distance(_small(sampler.images([c] * PER_CLASS, range(PER_CLASS))))
              for c in range(num_classes)]
    return float(np.mean(within)) / real_per_class


def low_pass_share(ckpt: Path, cfg: Config) -> tuple[float, float, list[float]]:
    """(share of the input-gradient energy G follows left after POOL x POOL pooling, mean pairwise
    cosine of the pooled gradients, the mean gradient norm per image of each of D's members) for
    GRAD_BATCH fakes of the checkpoint's own G (`cfg`: its config). For an ensemble D
    (`bigan/models/ensemble.py`) G follows the members' gradients weighted as
    `loss.member_weights` weighs their losses."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    G, D = models.build(cfg.model)
    G.load_state_dict(load_file(str(ckpt / "G.safetensors")))
    D.load_state_dict(load_file(str(ckpt / "D.safetensors")))
    G.train(), D.train()
    z = torch.randn(GRAD_BATCH, cfg.model.dim_z)
    y = torch.arange(GRAD_BATCH) % cfg.model.num_classes
    with torch.no_grad():
        x = G(z, y)
    members = list(getattr(D, "members", [D]))
    weights = cfg.loss.member_weights or [1.0] * len(members)
    grads = []
    for member in members:
        xk = x.clone().requires_grad_(True)
        logit_total(member(xk, y)).backward()  # a per-patch member: its patches' mean per image
        grads.append(xk.grad)
    followed = sum(w * g for w, g in zip(weights, grads)) / sum(weights)
    low = F.avg_pool2d(followed, POOL)
    share = float(F.interpolate(low, scale_factor=POOL).pow(2).sum() / followed.pow(2).sum())
    g = F.normalize(low.flatten(1), dim=1)
    cos = (g @ g.T)[~torch.eye(GRAD_BATCH, dtype=torch.bool)]
    return share, float(cos.mean()), [float(gk.flatten(1).norm(dim=1).mean()) for gk in grads]


def grids_side_by_side(panels: list[tuple[str, Path]], path: Path, per_class: int = 6) -> Path:
    """A class grid (a row per class, `per_class` seeds) of each checkpoint, labelled, in a row."""
    import tempfile

    from PIL import Image, ImageDraw

    from bench.photos_progan import save_in_a_row
    from bigan.eval.evaluate import class_grid_png

    label, images = 16, []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (text, ckpt) in enumerate(panels):
            im = Image.open(class_grid_png(open_sampler(ckpt), Path(tmp) / f"{i}.png",
                                           per_class=per_class)).convert("RGB")
            panel = Image.new("RGB", (im.width, im.height + label), "white")
            panel.paste(im, (0, label))
            ImageDraw.Draw(panel).text((2, 2), text, fill="black")
            images.append(panel)
    return save_in_a_row(images, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path, help="the training shards (real images per class)")
    parser.add_argument("runs", type=Path, nargs="+", help="run directories of quality_photos.py")
    parser.add_argument("--panel", type=Path, help="also write every checkpoint's class grid here")
    args = parser.parse_args()
    from bench.photos_scoring import read_resolution

    real, labels, names = read_shard_images(args.shards, 10**6, read_resolution(args.shards))
    real_per_class = float(np.mean([mean_pairwise_distance(_small(real[labels == c][:PER_CLASS]))
                                    for c in range(len(names))]))
    print(f"{'run':34s} {'step':>6s} {'spread':>7s} {'low-pass':>9s} {'cos':>6s}  |grad| per member")
    panels = []
    for run in args.runs:
        for ckpt in list_checkpoints(run / "checkpoints"):
            # an unconditional G (model.num_classes 1 on labelled data): over all its images
            cfg = load_config(ckpt / "config.yaml")
            s = spread(open_sampler(ckpt), real_per_class, cfg.model.num_classes)
            share, cos, norms = low_pass_share(ckpt, cfg)
            step = int(ckpt.name.split('-')[1])
            print(f"{run.name:34s} {step:6d} {s:7.3f} {share:9.3f} {cos:6.3f}  "
                  + " / ".join(f"{n:.4f}" for n in norms), flush=True)
            panels.append((f"step {step}: spread {s:.2f}", ckpt))
    if args.panel:
        print(grids_side_by_side(panels, args.panel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
