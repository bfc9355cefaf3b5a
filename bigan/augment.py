"""Augmentations of the images D sees, for training on little data: DiffAugment (Zhao et al. 2020)
and ADA's adaptive pipeline (Karras et al. 2020), plus ADA's rule for adjusting its probability p.

Every function is pure: images [N, C, H, W] in [-1, 1] in, augmented images out, differentiable
with respect to the images (G's gradient flows through the augmentation of its fakes). Random
parameters come from the caller's `torch.Generator` and, with `rows = (first, total)`, are drawn
for the whole global batch of `total` samples and sliced, so a sample's augmentation depends on
its place in the global batch only: 2 workers augment exactly as 1 does, and a resumed run draws
the same numbers (the trainer keys the generator by step, `train/batches.py`). The number of draws
never depends on p, so changing p does not shift any later draw.

Why ADA's transforms are written here rather than taken from kornia's `RandomAffine` and friends:
those draw their parameters from torch's global RNG, per call, for the local batch only, which
breaks both properties above; their pipeline (flip, RandomAffine, ColorJiggle) also measured
slower: 35 ms per 64 images at 32 px against 13 ms for `ada_augment` (1 thread, shared machine).
The parameter sampling is ours; the warp is one `grid_sample` (2.7 ms here against 5.1 ms for
kornia's `warp_affine`, which wraps the same call).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from bigan.config import ADA_COLOR, ADA_GEOMETRY, AugmentConfig, ada_ops, comma_list


def keyed_draw(kind: str, shape: tuple[int, ...], generator: torch.Generator | None,
               rows: tuple[int, int] | None, device: torch.device) -> Tensor:
    """U[0, 1) ("uniform") or N(0, 1) ("normal") numbers of `shape` [N, ...]: drawn for the global
    batch (rows = (first, total)) on the generator's device and rows first..first+N kept."""
    draw = torch.rand if kind == "uniform" else torch.randn
    gen_device = generator.device if generator is not None else device
    total = rows[1] if rows is not None else shape[0]
    first = rows[0] if rows is not None else 0
    full = draw((total,) + tuple(shape[1:]), generator=generator, device=gen_device)
    return full[first:first + shape[0]].to(device)


# --- DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training") --

def diff_color(x: Tensor, generator: torch.Generator | None = None,
               rows: tuple[int, int] | None = None) -> Tensor:
    """DiffAugment's colour op (the authors' `rand_brightness`, `rand_saturation`, `rand_contrast`):

        x += b - 1/2;  x = (x - mean_c x) * 2s + mean_c x;  x = (x - mean_chw x) * (c + 1/2) + mean_chw x

    with b, s, c ~ U[0, 1) per sample (mean_c: over channels, mean_chw: over the whole image)."""
    n = x.shape[0]
    b, s, c = (keyed_draw("uniform", (n, 1, 1, 1), generator, rows, x.device) for _ in range(3))
    x = x + (b - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (s * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (c + 0.5) + mean


def diff_translation(x: Tensor, generator: torch.Generator | None = None,
                     rows: tuple[int, int] | None = None, ratio: float = 0.125) -> Tensor:
    """DiffAugment's `rand_translation`: shift each image by whole pixels (tx, ty), each uniform in
    [-r, r], r = int(side * ratio + 0.5), filling with zeros."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = (keyed_draw("uniform", (n, 1, 1), generator, rows, x.device) * (2 * sh + 1)).floor().long() - sh
    tx = (keyed_draw("uniform", (n, 1, 1), generator, rows, x.device) * (2 * sw + 1)).floor().long() - sw
    iy = torch.arange(h, device=x.device).view(1, h, 1)
    ix = torch.arange(w, device=x.device).view(1, 1, w)
    gy = torch.clamp(iy + ty + 1, 0, h + 1)  # +1: the one-pixel zero border of `padded`
    gx = torch.clamp(ix + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    idx = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[idx, gy, gx].permute(0, 3, 1, 2)


def diff_cutout(x: Tensor, generator: torch.Generator | None = None,
                rows: tuple[int, int] | None = None, ratio: float = 0.5) -> Tensor:
    """DiffAugment's `rand_cutout`: zero one square of side int(side * ratio + 0.5) per image, its
    centre uniform over the image (the square is clipped at the borders)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = (keyed_draw("uniform", (n, 1, 1), generator, rows, x.device) * (h + 1 - ch % 2)).floor()
    ox = (keyed_draw("uniform", (n, 1, 1), generator, rows, x.device) * (w + 1 - cw % 2)).floor()
    iy = torch.arange(h, device=x.device).view(1, h, 1)
    ix = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((iy >= oy - ch // 2) & (iy < oy - ch // 2 + ch)
              & (ix >= ox - cw // 2) & (ix < ox - cw // 2 + cw))
    return x * (~inside).unsqueeze(1).to(x.dtype)


DIFFAUGMENT = {"color": diff_color, "translation": diff_translation, "cutout": diff_cutout}


def diffaugment(x: Tensor, policy: str | tuple[str, ...], generator: torch.Generator | None = None,
                rows: tuple[int, int] | None = None) -> Tensor:
    """The ops of `policy` ("color,translation,cutout", or the names already parsed, as
    `AugmentConfig.policy_ops` holds them) in that order, as the authors apply them."""
    for op in (comma_list(policy) if isinstance(policy, str) else policy):
        x = DIFFAUGMENT[op](x, generator, rows)
    return x


# --- ADA (Karras et al. 2020, "Training GANs with Limited Data", App. B.1) --------------------------

def _eye(n: int, k: int, device: torch.device) -> Tensor:
    return torch.eye(k, device=device).expand(n, k, k).clone()


def _gated(matrix: Tensor, gate: Tensor) -> Tensor:
    """`matrix` [N, k, k] where gate [N] is True, the identity elsewhere."""
    eye = _eye(matrix.shape[0], matrix.shape[1], matrix.device)
    return torch.where(gate.view(-1, 1, 1), matrix, eye)


def _rotation(theta: Tensor) -> Tensor:
    m = _eye(theta.shape[0], 3, theta.device)
    c, s = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def _scaling(sx: Tensor, sy: Tensor) -> Tensor:
    m = _eye(sx.shape[0], 3, sx.device)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _translation(tx: Tensor, ty: Tensor) -> Tensor:
    m = _eye(tx.shape[0], 3, tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def ada_geometry(n: int, p: float | Tensor, generator: torch.Generator | None,
                 rows: tuple[int, int] | None, device: torch.device,
                 ops: frozenset[str] = frozenset(ADA_GEOMETRY)) -> tuple[Tensor, Tensor]:
    """ADA's 'bgc' geometric transforms as one 3x3 matrix per sample, in normalised image
    coordinates ([-1, 1], y down), mapping output pixels to the input pixels they read (the
    inverse warp), and a [N] bool: any transform applied. Each applies with probability p
    (rotations with 1 - sqrt(1 - p), so that one of the two fires with p):
    x-flip; rotation by k * 90 deg, k ~ U{0..3}; translation ~ U[-0.125, 0.125] of the side
    (the paper rounds this one to whole pixels); isotropic scale 2^N(0, 0.2); rotation ~ U[-pi, pi]; anisotropic scale 2^N(0, 0.2) along
    x, its inverse along y; fractional translation ~ N(0, 0.125) of the side. Transforms not in
    `ops` (config.ADA_GEOMETRY's names) never fire; their numbers are drawn all the same, so the
    pipeline does not shift any draw."""
    def u(*shape):
        return keyed_draw("uniform", (n, *shape), generator, rows, device)

    def g(*shape):
        return keyed_draw("normal", (n, *shape), generator, rows, device)

    p = torch.as_tensor(p, device=device, dtype=torch.float32)
    p_rot = 1 - torch.sqrt(1 - p)
    # Forward transforms in the order the paper applies them; the warp needs the inverse of
    # their product, which is the product of the inverses in reverse order.
    steps = [
        ("xflip", u() < p, _scaling(1 - 2 * (u() < 0.5).float(), torch.ones(n, device=device))),
        ("rotate90", u() < p, _rotation((u() * 4).floor() * (math.pi / 2))),
        ("xint", u() < p, _translation(*((u(2) * 2 - 1) * 0.125 * 2).unbind(1))),
        ("scale", u() < p, _scaling(iso := torch.exp2(0.2 * g()), iso)),
        ("rotate", u() < p_rot, _rotation((u() * 2 - 1) * math.pi)),  # pre-rotation
        ("aniso", u() < p, _scaling(*torch.stack([s := torch.exp2(0.2 * g()), 1 / s], 1).unbind(1))),
        ("rotate", u() < p_rot, _rotation((u() * 2 - 1) * math.pi)),  # post-rotation
        ("xfrac", u() < p, _translation(*(g(2) * 0.125 * 2).unbind(1))),
    ]
    inverse = _eye(n, 3, device)
    applied = torch.zeros(n, dtype=torch.bool, device=device)
    for name, gate, forward in steps:
        gate = gate & (name in ops)
        inverse = inverse @ _gated(torch.linalg.inv(forward), gate)
        applied |= gate
    return inverse, applied


def ada_color(n: int, p: float | Tensor, generator: torch.Generator | None,
              rows: tuple[int, int] | None, device: torch.device,
              ops: frozenset[str] = frozenset(ADA_COLOR)) -> tuple[Tensor, Tensor]:
    """ADA's colour transforms as one 4x4 matrix per sample on homogeneous RGB, and a [N] bool:
    any applied. Each with probability p: brightness + N(0, 0.2); contrast x 2^N(0, 0.5); luma
    flip (I - 2 v v^T, v = (1, 1, 1) / sqrt 3); hue rotation ~ U[-pi, pi] about v; saturation
    x 2^N(0, 1) off the luma axis. Transforms not in `ops` never fire (their numbers are drawn)."""
    def u():
        return keyed_draw("uniform", (n,), generator, rows, device)

    def g():
        return keyed_draw("normal", (n,), generator, rows, device)

    p = torch.as_tensor(p, device=device, dtype=torch.float32)
    v = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device) / math.sqrt(3)
    vv = torch.outer(v, v).expand(n, 4, 4)
    eye = _eye(n, 4, device)
    brightness = eye.clone()
    brightness[:, :3, 3] = (0.2 * g()).unsqueeze(1)
    contrast = eye.clone()
    contrast[:, :3, :3] *= torch.exp2(0.5 * g()).view(n, 1, 1)
    flip = eye - 2 * vv * (u() < 0.5).float().view(n, 1, 1)
    theta = (u() * 2 - 1) * math.pi
    # Rodrigues' rotation about the unit axis v (3x3 block): cos I + sin [v]x + (1 - cos) v v^T.
    k = torch.zeros(3, 3, device=device)
    a = v[:3]
    k[0, 1], k[0, 2], k[1, 0], k[1, 2], k[2, 0], k[2, 1] = -a[2], a[1], a[2], -a[0], -a[1], a[0]
    c, s = torch.cos(theta).view(n, 1, 1), torch.sin(theta).view(n, 1, 1)
    hue = eye.clone()
    hue[:, :3, :3] = c * torch.eye(3, device=device) + s * k + (1 - c) * torch.outer(a, a)
    saturation = vv + (eye - vv) * torch.exp2(g()).view(n, 1, 1)
    saturation[:, 3, 3] = 1.0
    matrix = eye
    applied = torch.zeros(n, dtype=torch.bool, device=device)
    for name, m in zip(ADA_COLOR, (brightness, contrast, flip, hue, saturation)):
        gate = (u() < p) & (name in ops)
        matrix = _gated(m, gate) @ matrix
        applied |= gate
    return matrix, applied


def ada_augment(x: Tensor, p: float | Tensor, generator: torch.Generator | None = None,
                rows: tuple[int, int] | None = None,
                pipeline: str | frozenset[str] = "bgc") -> Tensor:
    """ADA's geometric then colour transforms on x [N, C, H, W], each with probability p; the
    `pipeline` (`augment.ada_pipeline`: a named one or a comma list, or the transform names
    already parsed, as `AugmentConfig.pipeline_ops` holds them) says which may fire.

    The warp samples bilinearly with reflection padding (`grid_sample`); the paper pads by
    reflection too but resamples with a wide low-pass filter at 2x, which costs several times
    more on a CPU. Colour transforms act on RGB images only (C = 3); other images get brightness
    and contrast through the same matrix applied to every channel. Samples no transform touched
    are returned unchanged, bit for bit (so p = 0 is the identity)."""
    n, c = x.shape[:2]
    ops = ada_ops(pipeline) if isinstance(pipeline, str) else pipeline
    inverse, moved = ada_geometry(n, p, generator, rows, x.device, ops)
    colour, tinted = ada_color(n, p, generator, rows, x.device, ops)
    out = x
    if bool(moved.any()):
        grid = F.affine_grid(inverse[:, :2, :].to(x.dtype), list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                               align_corners=False)
        out = torch.where(moved.view(n, 1, 1, 1), warped, out)
    if bool(tinted.any()):
        if c == 3:
            flat = out.flatten(2)  # [N, 3, HW]
            tinted_x = (colour[:, :3, :3].to(x.dtype) @ flat + colour[:, :3, 3:].to(x.dtype))
            tinted_x = tinted_x.view_as(out)
        else:  # brightness and contrast only: the mean of the RGB rows acts on every channel
            gain = colour[:, :3, :3].sum(2).mean(1).view(n, 1, 1, 1).to(x.dtype)
            tinted_x = out * gain + colour[:, :3, 3].mean(1).view(n, 1, 1, 1).to(x.dtype)
        out = torch.where(tinted.view(n, 1, 1, 1), tinted_x, out)
    return out


def ada_adjust(p: Tensor, r_t: Tensor, target: float, nimg: int, kimg: float,
               p_max: float) -> Tensor:
    """ADA's update of p (Karras et al. 2020, Sec. 3; stylegan2-ada-pytorch `training_loop.py`):

        p <- clamp(p + sign(r_t - target) * nimg / (kimg * 1000), 0, p_max)

    r_t = E[sign(D(real))] over the last interval, `nimg` the real images D saw in it, so p can
    move from 0 to 1 in `kimg` thousand images; `p_max` < 1 caps it."""
    return (p + torch.sign(r_t - target) * (nimg / (kimg * 1000))).clamp(0.0, p_max)


def augment(x: Tensor, cfg: AugmentConfig, p: float | Tensor, generator: torch.Generator | None,
            rows: tuple[int, int] | None = None) -> Tensor:
    """x augmented as `cfg.kind` says (none: x itself); p is ADA's current probability. Called
    for every batch D sees, so it takes the op lists `cfg` parsed when it was loaded."""
    if cfg.kind == "diffaugment":
        return diffaugment(x, cfg.policy_ops, generator, rows)
    if cfg.kind == "ada":
        return ada_augment(x, p, generator, rows, cfg.pipeline_ops)
    return x
