"""What `bench/quality_lowdata.py` compares, and on what: its variants (overrides of
configs/demo.yaml), the digits split into a stratified training share and the held-out rest, and
the reference row of the training images themselves (`CopyingSampler`: what perfect
memorisation scores). The run driver is `quality_lowdata.py`; the table and pictures
`lowdata_table.py`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

VARIANTS = {  # name -> (trained on the subset, not all the digits; overrides)
    "baseline": (True, []),
    "diffaugment": (True, ["augment.kind=diffaugment"]),
    "diffaugment+lecam": (True, ["augment.kind=diffaugment", "augment.lecam_weight=0.3"]),
    # Cutout erases up to half of a thin-stroke digit, which can leave a real image that no
    # longer shows its class; DiffAugment's paper also ran translation alone on small data.
    "diffaugment-translation": (True, ["augment.kind=diffaugment", "augment.policy=translation"]),
    "ada": (True, ["augment.kind=ada"]),
    # ADA without the transforms that turn one digit into another (flips, 90-degree and free
    # rotations, which make a 6 a 9) or invert the ink (luma flip): StyleGAN2-ADA's --augpipe.
    "ada-digits": (True, ["augment.kind=ada",
                          "augment.ada_pipeline=xint,scale,aniso,xfrac,brightness,contrast"]),
    # LeCam at a third of the paper's lambda: 0.3 collapsed the classes with DiffAugment on 10%.
    "diffaugment-translation+lecam": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                             "augment.lecam_weight=0.1"]),
    # R3GAN's objective (relativistic pairing + R1 + R2) on top: gamma 1, not R3GAN's 0.05,
    # because this D is spectrally normalised: its squared input-gradient norm on real digits
    # measured 0.57-0.66 after 1,000 steps, so gamma 0.05 would add ~0.02 to a loss of ~1.
    "diffaugment-translation+r3gan": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                             "loss.kind=rpgan", "loss.penalty=r1+r2",
                                             "loss.penalty_weight=1.0"]),
    # Its two halves apart: the pairing loss alone, and lazy R1 + R2 with the hinge loss.
    "diffaugment-translation+rpgan": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                             "loss.kind=rpgan"]),
    "diffaugment-translation+r1r2-lazy": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                                 "loss.penalty=r1+r2", "loss.penalty_weight=1.0",
                                                 "loss.penalty_interval=4"]),
    # The same with lazy R1 + R2 (StyleGAN2): every 4th D step, weighted by 4, which cuts most
    # of the double backward's cost.
    "diffaugment-translation+r3gan-lazy": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                                  "loss.kind=rpgan", "loss.penalty=r1+r2",
                                                  "loss.penalty_weight=1.0", "loss.penalty_interval=4"]),
    # R3GAN's own schedule: one D step per G step (its configs), not BigGAN's two. That halves
    # the double backwards per G step, which is what made R3GAN's step 2.0x the baseline's.
    "diffaugment-translation+r3gan-1d": (True, ["augment.kind=diffaugment", "augment.policy=translation",
                                                "loss.kind=rpgan", "loss.penalty=r1+r2",
                                                "loss.penalty_weight=1.0", "optim.d_steps=1"]),
    "baseline-all": (False, []),
}
COPIES = "train-copies"  # a reference row: the training images themselves, scored as a generator
SCORES = ("fid", "kid", "precision", "recall", "class_accuracy")


def pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


class CopyingSampler:
    """The training images as a "generator": (class c, seed s) gives the (s mod n_c)-th training
    image of class c. Scored like a trained G, it is what perfect memorisation reaches."""

    kind, path, dim_z = "copies", None, 0

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str]):
        self.by_class = [images[labels == k] for k in range(len(class_names))]
        self.class_names, self.resolution = class_names, images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        return {"path": None, "kind": self.kind, "classes": self.num_classes, "dim_z": 0,
                "resolution": self.resolution}

    def images(self, classes, seeds, psi=None, batch_size=64, progress=None) -> np.ndarray:
        picks = np.stack([self.by_class[c][s % len(self.by_class[c])] for c, s in zip(classes, seeds)])
        return picks.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0  # uint8 NHWC -> [-1, 1] NCHW


def subset_mask(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Stratified: the same share of every class, drawn with seed 0."""
    rng = np.random.default_rng(0)
    train = np.zeros(len(labels), bool)
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        train[idx[:max(1, round(fraction * len(idx)))]] = True
    return train


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits at 32 px, RGB (uint8 NHWC) and their labels."""
    from bigan.data import synthetic

    return synthetic.digits(32, channels=3)


def splits(out: Path, fraction: float) -> tuple[Path, Path, Path]:
    """(train shards: `fraction` of every class, held-out shards: the rest, all-digits shards)
    under out/data, made once."""
    from bigan.data import synthetic
    from bigan.data.shards import pack
    from bigan.data.sources import ImageSource

    images, labels = digits()
    train = subset_mask(labels, fraction)
    tag = f"digits{100 * fraction:g}"
    dirs = {}
    for name, mask in ((f"{tag}-train", train), (f"{tag}-heldout", ~train),
                       ("digits-all", np.ones_like(train))):
        d = out / "data" / name
        if not (d / "dataset.json").is_file():
            src = ImageSource("digits", f"sklearn.datasets.load_digits ({name}, seed 0)",
                              list(synthetic.DIGIT_CLASS_NAMES), labels[mask], images=images[mask])
            pack(src, d, 32, fmt="png", min_shards=4, progress=False)
        dirs[name] = d
    return dirs[f"{tag}-train"], dirs[f"{tag}-heldout"], dirs["digits-all"]


def copies_row(heldout: Path, clf, n_eval: int, fraction: float, out: Path) -> dict:
    """The reference row of the training images themselves (see CopyingSampler)."""
    from bigan.data import synthetic
    from bigan.eval.evaluate import evaluate

    images, labels = digits()
    train = subset_mask(labels, fraction)
    sampler = CopyingSampler(images[train], labels[train], list(synthetic.DIGIT_CLASS_NAMES))
    m = evaluate(sampler, heldout, [clf], n_eval, cache_dir=out / "feature-cache",
                 log=lambda s: None)["metrics"][clf.name]
    return {"variant": f"{COPIES}-{pct(fraction)}", "seed": None, "fraction": fraction,
            "images": int(train.sum()),
            **{k: m[k] for k in SCORES}}
