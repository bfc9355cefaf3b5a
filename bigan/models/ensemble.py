"""Several discriminators judged side by side: `model.d_arch: native+projected`, the arch's own D
beside the projected D, as Vision-aided GAN adds a D on a pretrained network's features to the
original one (Kumari et al. 2022, "Ensembling Off-the-shelf Models for GAN Training", CVPR).

Why: the projected D alone let G lose z and class on Imagenette (docs/training.md). G's update
follows D's gradient with respect to the fakes, and of the projected D's only 1-2% of the energy
survives 8x8 pooling (26-64% for BigGAN's own D): the frozen network hands G pixel-level detail,
which it cannot follow per latent. The native D beside it gives G the coarse, per-sample gradient
the pretrained features lack, while the projected D brings ImageNet's shapes.

`forward` returns logits [N, K], column k being member k's. Every loss of `bigan.losses` is an
elementwise mean, so each member is judged by the loss on its own logits and the D loss is the
mean of the members' losses (Vision-aided GAN sums them; the factor 1/K is Adam's to absorb).
Members are not summed into one logit: with a shared hinge margin, once one member separates real
from fake the other stops receiving gradient. Gradient penalties differentiate the sum of all
logits (`bigan.regularizers`), so R1 constrains the gradient of the members' sum.
`loss.member_weights` weighs the members' losses: with equal weights the projected member's
gradient with respect to the fakes was ~10x the native one's on Imagenette, so G followed it
almost alone. Measured there (docs/benchmarks.md): variety by z kept, the classes not learnt.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Ensemble(nn.Module):
    """forward(x, y) -> [N, K]: member k's logit for each sample in column k; [N, K, P] when a
    member judges P patches (`model.projected_per_patch`), a one-logit member's logit repeated
    over them (the same loss and gradient as alone: a mean of P equal terms). Members'
    parameters are `members.<k>.*` in the state dict."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        logits = [member(x, y) for member in self.members]
        if all(t.dim() == 1 for t in logits):
            return torch.stack(logits, dim=1)
        patches = max(t.shape[-1] for t in logits if t.dim() == 3)
        return torch.cat([t[:, None, None].expand(-1, 1, patches) if t.dim() == 1 else t
                          for t in logits], dim=1)
