"""Real photographs at a stated CPU budget: the BigGAN recipe against bigan's recipes.

    python bench/quality_photos.py --dataset cifar10 --variant projected --seed 0 --budget-core-h 1.5
    python bench/quality_photos.py --dataset cifar10 --score            # after the runs: metrics, PNGs

Each run trains one variant for one seed until its process has used `--budget-core-h` of CPU
time (`time.process_time()`, summed over resumes; data loading happens in the same process,
`data.num_workers=0`, so the figure is the whole cost). Run each under `taskset -c K` with
OMP_NUM_THREADS=1: one core per run. A run killed or stopped resumes where it was (`--resume
auto`) and keeps its CPU count. Every `--ckpt-every` G steps a checkpoint is kept, with the CPU
seconds it had cost (`cpu_sec.json`), so `--score` draws FID over CPU time. The recipes' cadences
and EMA start are G steps too (`*_CADENCE_STEPS`: a kimg field -> the G steps it fires at),
written into the config as the kimg those steps show at the variant's own batch and D steps
(`cadences`).

Data: CIFAR-10 (JPEG q75 copy, `../shared/data/cifar10-jpg`; FID against the test set) and
Imagenette at 64 px (all 3,925 images, FID against themselves, as small-data papers do).

Variants (the G is the same BigGAN for all; widths cut to fit a CPU, the same in every variant):
- `biggan`: BigGAN-PyTorch's CIFAR recipe (launch_cifar_ema.sh): hinge, spectral norm in G and
  D, 4 D steps per G step, batch 50, both lrs 2e-4, Adam betas (0, 0.999), EMA of G.
- `r3gan`: bigan's best recipe without projection (the low-data bench): DiffAugment
  (translation) with R3GAN's objective (relativistic pairing, R1 + R2 at gamma 1), 1 D step.
- `projected`: the projected discriminator (bigan/models/projected.py) at 64 px input, with
  Projected GAN's own settings: hinge, DiffAugment (color, translation, cutout), 1 D step, batch
  norm in the heads (without it G lost z and class within 100 steps on Imagenette; with it
  within about 600).
- `ensemble`: the projected D above beside BigGAN's own D (`model.d_arch=native+projected`, as
  Vision-aided GAN adds a pretrained-feature D to the original one), each judged by the hinge
  loss on its own logits, one D step for both, the projected one weighing a tenth in the losses:
  the native D gives G the coarse, per-sample gradient the projected D's features lack
  (docs/benchmarks.md).
- `progan`: Progressive GAN 4 -> 128 px (`--dataset imagenette128`), the paper's recipe at CPU
  widths (PROGAN below); a grid every 250 G steps and a checkpoint per phase.

Scoring (`--score`): per kept checkpoint, FD / precision / recall / class accuracy in the feature
space of a domain classifier trained on the data (`bigan eval train-classifier`; it shares
nothing with the projected D's ImageNet network), and for the last checkpoint Inception FID and
KID with the real-vs-real figure at the same N; class grids, FID-over-CPU curves and a
nearest-neighbour panel as PNGs; rows in `photos-<dataset>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bigan.config import Config, load_config  # noqa: E402
from bigan.config.migration import count_images  # noqa: E402
from bigan.checkpoint.durable import write_atomically  # noqa: E402
from bigan.train.hooks import TrainHooks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {  # name -> (source folder, test folder or None, resolution)
    "cifar10": (SHARED / "cifar10-jpg" / "train", SHARED / "cifar10-jpg" / "test", 32),
    "imagenette": (SHARED / "imagenette-224" / "val", None, 64),
    "imagenette128": (SHARED / "imagenette-224" / "val", None, 128),  # the ProGAN run
}
# The same G everywhere: BigGAN at the data's resolution, ch 16 (64 channels per block, a quarter
# of BigGAN-PyTorch's CIFAR width, for one CPU core), no shared embedding and no hierarchical z
# (BigGAN-PyTorch's CIFAR script sets neither), batch 50. EMA: BigGAN-PyTorch's 0.9999 from
# iteration 1,000 spans 2% of its 500k iterations; a run here is ~3,000 G steps, so the EMA keeps
# a similar share of the run (decay 0.995: a 200-step horizon, from step 500).
COMMON = ["model.arch=biggan", "model.ch=16", "model.d_ch=16", "model.dim_z=128", "model.shared_dim=0",
          "model.hier=false", "model.attention=[]", "train.batch_size=50", "optim.g_lr=2e-4",
          "optim.d_lr=2e-4", "optim.betas=[0.0,0.999]", "ema.decay=0.995", "data.flip=true",
          "data.num_workers=0", "train.steps=1000000", "train.keep_ckpts=0"]
COMMON_CADENCE_STEPS = {"train.log_every_kimg": 50, "train.sample_every_kimg": 500, "ema.start_kimg": 500}
VARIANTS = {
    "biggan": ["loss.kind=hinge", "optim.d_steps=4"],
    "r3gan": ["loss.kind=rpgan", "loss.penalty=r1+r2", "loss.penalty_weight=1.0", "optim.d_steps=1",
              "augment.kind=diffaugment", "augment.policy=translation"],
    "projected": ["model.d_arch=projected", "model.projected_res=64", "model.projected_batch_norm=true",
                  "loss.kind=hinge", "optim.d_steps=1",
                  "augment.kind=diffaugment", "augment.policy=color,translation,cutout"],
}
# The projected D beside BigGAN's own (Vision-aided GAN, Kumari et al. 2022): each judged by the
# hinge loss on its own logits, one D step for both. The projected member's weight is a tenth:
# its gradient with respect to the fakes was ~10x the native one's (0.35-0.60 against 0.04-0.05
# per image), so with equal weights G followed it almost alone (docs/benchmarks.md).
VARIANTS["ensemble"] = [*VARIANTS["projected"], "model.d_arch=native+projected", "loss.member_weights=[1,0.1]"]
# ProGAN 4 -> 128 px (its own G and D, not the BigGAN above): the paper's loss (WGAN-GP + drift),
# Adam (0, 0.99) at 1e-3, equalized lr, pixel norm, minibatch std-dev; widths nf = min(64,
# 512 / 2^stage): 64 up to 16 px, then 32, 16, 8 at 128 px (every resolution then costs about the
# same per image; the paper's widths cut by 8 at the top, 64 at the bottom, for one core: at 128
# wide a first attempt reached 32 px only at 16 img/s). Phases of PROGAN_PHASE_KIMG thousand
# real images each (fade and stabilisation); the 128 px phase runs until the budget ends. Batch
# 32 below 64 px, 16 from there (the paper lowers it with resolution too). The EMA ramps up per
# phase (ema.rampup 0.2): with phases of a few hundred G steps, a plain decay of 0.998 averaged
# mostly the new block's initial weights (washed-out grids in the first attempt). The class
# embedding has 16 values beside z's 128 (11% of the pixel-normalised latent): with 128 (half, as
# StyleGAN2-ADA's mapping weighs z and the class) G ignored z instead, every column of a class
# alike (recall 0.001 at 32 px against 0.037; class accuracy 0.29 against 0.20; docs/benchmarks.md).
PROGAN_PHASE_KIMG = float(os.environ.get("PROGAN_PHASE_KIMG", 12))
PROGAN = ["model.arch=progan", "model.start_resolution=4", "model.dim_z=128", "model.shared_dim=16",
          "model.fmap_base=512", "model.fmap_max=64", "model.mbstd_group_size=4",
          "model.spectral_norm=false", "model.attention=[]", "loss.kind=wasserstein", "loss.penalty=wgan-gp",
          "loss.penalty_weight=10.0", "loss.drift_weight=0.001", "optim.g_lr=1e-3", "optim.d_lr=1e-3",
          "optim.betas=[0.0,0.99]", "optim.eps=1e-8", "optim.d_steps=1", "ema.decay=0.999", "ema.rampup=0.2",
          "ema.start_kimg=0", f"progressive.fade_kimg={PROGAN_PHASE_KIMG}",
          f"progressive.stab_kimg={PROGAN_PHASE_KIMG}",
          "progressive.batch_size={4: 32, 8: 32, 16: 32, 32: 32, 64: 16, 128: 16}",
          "progressive.reset_optimizer=true", "train.batch_size=16", "data.flip=true", "data.num_workers=0",
          "train.steps=1000000", "train.keep_ckpts=0"]
PROGAN_CADENCE_STEPS = {"train.log_every_kimg": 50, "train.sample_every_kimg": 250}
VARIANTS["progan"] = PROGAN


def cadences(cfg: Config, steps: dict[str, int]) -> list[str]:
    """Overrides setting each kimg field of `steps` (field -> G steps) to the images those steps
    show at `cfg`'s batch sizes, as bigan/config/migration.py converts the step counts of older
    configs (ProGAN's rounded up to whole steps of every phase), so the same steps fire."""
    return [f"{field}={count_images(n, 'steps', cfg)[0] / 1000!r}" for field, n in steps.items()]


class CpuBudget(TrainHooks):
    """Stops once the run's process CPU time (this process plus what earlier sessions of the run
    spent, read from `cpu_sec.json`) reaches `budget_sec`; records the CPU seconds at every
    checkpoint in that file, atomically."""

    def __init__(self, run_dir: Path, budget_sec: float):
        self.file, self.budget_sec = run_dir / "cpu_sec.json", budget_sec
        self.record = json.loads(self.file.read_text()) if self.file.is_file() else {"at_step": {}}
        self.base = self.record.get("total", 0.0)
        self.t0 = time.process_time()

    def spent(self) -> float:
        return self.base + time.process_time() - self.t0

    def on_checkpoint(self, path: Path, step: int) -> None:
        self.record["at_step"][str(step)] = self.record["total"] = self.spent()
        write_atomically(self.file, json.dumps(self.record, indent=1).encode())

    def should_stop(self, step: int) -> bool:
        return self.spent() >= self.budget_sec


def shards_for(dataset: str, out: Path) -> tuple[Path, Path | None]:
    """Pack the data set once (byte-identical on a re-run); returns (train, test or None)."""
    from bigan.data.shards import pack

    src, test_src, res = DATASETS[dataset]
    train = out / "data" / f"{dataset}-{res}"
    test = out / "data" / f"{dataset}-{res}-test" if test_src else None
    for s, d in ((src, train), (test_src, test)):
        if s is not None and not (d / "dataset.json").is_file():
            pack(s, d, res, min_shards=16, progress=False)
    return train, test


def run_dir(out: Path, dataset: str, variant: str, seed: int) -> Path:
    return out / "runs" / f"{dataset}-{variant}-seed{seed}"


def train_run(out: Path, dataset: str, variant: str, seed: int, budget_sec: float, ckpt_every: int,
              extra: list[str] = ()) -> dict:
    from bigan.train.trainer import train

    shards, _ = shards_for(dataset, out)
    rd = run_dir(out, dataset, variant, seed)
    res = DATASETS[dataset][2]
    classes = len(json.loads((shards / "dataset.json").read_text())["class_names"])
    base, steps = ([], PROGAN_CADENCE_STEPS) if variant == "progan" else (COMMON, COMMON_CADENCE_STEPS)
    recipe = [*base, *VARIANTS[variant], f"model.resolution={res}", f"model.num_classes={classes}",
              f"data.path={shards}", f"train.seed={seed}", f"train.out_dir={rd}"]
    own = load_config(ROOT / "configs" / "demo.yaml", [*recipe, *extra])  # the batch the steps are of
    cfg = load_config(ROOT / "configs" / "demo.yaml",
                      [*recipe, *cadences(own, {**steps, "train.ckpt_every_kimg": ckpt_every}), *extra])
    hooks = CpuBudget(rd, budget_sec)
    result = train(cfg, hooks, resume="auto")
    return {"run": str(rd), "steps": result.step, "kimg": result.cur_nimg / 1000,
            "cpu_sec": hooks.spent(), "budget_sec": budget_sec}


def score_progan(out: Path, seed: int, n_domain: int, n_inception: int) -> dict:
    """The ProGAN run phase by phase (bench/photos_progan.py). Imagenette has 3,925 images, so N
    is at most 1,900: the real-vs-real figure needs 2N of them. The domain classifier is the
    64 px Imagenette one (128 px samples are downsampled to it; lower phases upsampled)."""
    from bench.photos_progan import print_phases, score_phases
    from bench.photos_scoring import classifier_for

    shards, _ = shards_for("imagenette", out)
    clf_path, clf_report = classifier_for("imagenette", shards, None, out)
    print(f"domain classifier: {clf_report['val_accuracy']:.3f} on held-out real images")
    scores = score_phases(run_dir(out, "imagenette128", "progan", seed), "imagenette128",
                          DATASETS["imagenette128"][0], out,
                          clf_path, n_domain, n_inception)
    print_phases(scores)
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/photos")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10")
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-core-h", type=float, default=1.5, help="process CPU hours per run")
    parser.add_argument("--ckpt-every", type=int, default=250, help="G steps between kept checkpoints")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override after the variant's (repeatable; kept in the run's config.yaml)")
    parser.add_argument("--score", action="store_true", help="score every run in --out (after training)")
    parser.add_argument("--n-domain", type=int, default=2000, help="--score: images per domain-feature score")
    parser.add_argument("--n-inception", type=int, default=2000,
                        help="--score: images per Inception score of each run's last checkpoint (0 = skip)")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    out = Path(args.out)
    if args.score and args.dataset == "imagenette128":
        score_progan(out, args.seed, min(args.n_domain, 1900), min(args.n_inception, 1900))
        return 0
    if args.score:
        from bench.photos_scoring import score_all

        score_all(out, args.dataset, args.n_domain, args.n_inception)
        return 0
    if args.variant is None:
        parser.error("--variant is needed to train (or --score)")
    row = train_run(out, args.dataset, args.variant, args.seed, args.budget_core_h * 3600, args.ckpt_every,
                    args.set)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
