"""How the training iteration is executed, apart from what it computes: the memory layout of the
models and the batch, how Adam's step runs over the parameters, and whether 2x resampling is
folded into the adjacent 3x3 convolution (`cfg.speed`).

`FastPath.resolve(cfg.speed, device, strategy)` turns the config's `auto` into a concrete choice;
`PLAIN` is the eager NCHW, for-loop-Adam, upsample-then-convolve iteration that the reference
implementations (BigGAN-PyTorch, StudioGAN) run, which `bench/train_step.py` times against the
default. No switch changes the math: weights after N steps equal the plain path's within float
tolerance (tests/test_speed.py); only the order of float operations differs.

Why these (measured with `torch.profiler` on `step.gan_iteration`, BigGAN-32, 1 thread):
convolutions and their backward are >80% of the iteration's time and Adam ~1%, so the win is in
doing fewer convolution FLOPs, not in running them differently. Nearest upsampling before a 3x3
conv (every G block) and average pooling after one (every D block) waste 2.25x the products on
duplicated or averaged pixels; `resample: folded` computes each pair as one 4x4 stride-2
(transposed) conv (`layers.upsample_conv3x3`, `layers.conv3x3_avgpool`), which made BigGAN-32 ch 64
batch 32 fp32's iteration 1.50x faster on the 2-core AVX2 CPU (docs/benchmarks.md). oneDNN runs
the folded kernels slowly on 4x4 maps with wide channels (BigGAN-128's first G and last D blocks,
1.4-1.8x slower than separate there), so `auto` folds where the small side is >= 8 px
(`layers.fold_pays`, measured per shape; ProGAN's blocks ask it too: they tested "auto" as a bool and
so folded everywhere until the third round).
channels_last: on an earlier machine and torch it ran at 0.99-1.06x the NCHW CPU time, but with
torch 2.13 on an AMD EPYC (AVX2) NCHW convolutions pay a reorder of their output (the folded
transposed conv's forward, the stride-2 conv's input gradient: a strided copy of a whole
activation) and oneDNN's NHWC kernels ran 3x3, folded and 1x1 convs 8-20% faster, so the
BigGAN-32 iteration took 1.16x less CPU time in channels_last (docs/benchmarks.md). `auto` is
channels_last on the CPU as on CUDA, where cuDNN's tensor cores use it natively (bf16; `make
gpu-check`), with fused Adam on CUDA and torch's Adam on the CPU. Under DeepSpeed, `auto` keeps
torch's layout and Adam: ZeRO flattens parameters and gradients into its own contiguous buffers.
`torch.compile` is not used: the D step's gradient penalties need double backward, which
compiled graphs do not support reliably (pytorch #91469), and compiling the other passes of
BigGAN takes minutes of C++ compilation on a small CPU machine before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from bigan.config import STRATEGIES, SpeedConfig
from bigan.train.step import Batch

DEEPSPEED = tuple(s for s in STRATEGIES if s != "ddp")  # the ZeRO stages, run by DeepSpeed


@dataclass(frozen=True)
class FastPath:
    """A resolved `SpeedConfig`: what the trainer (and the bench) apply to models and batches."""

    memory_format: str  # channels_last | contiguous
    optimizer: str  # for-loop | foreach | fused | default (torch chooses); optimizers.IMPLEMENTATIONS
    resample: str = "auto"  # auto (by shape) | folded | separate: the blocks' `fold_resample` (layers.fold_pays)
    d_call: str = "auto"  # auto | separate: real and fake in one D call where D allows (step.d_update)

    @classmethod
    def resolve(cls, cfg: SpeedConfig, device: torch.device | str = "cpu",
                strategy: str = "ddp") -> "FastPath":
        """`auto` -> channels_last on CUDA and on the CPU, fused Adam on CUDA and torch's Adam on
        the CPU (Adam is ~1% of a CPU iteration); torch's layout and Adam under DeepSpeed ZeRO
        (`strategy` zero1-3); resampling folded by shape (`layers.fold_pays`, decided per call);
        explicit choices are kept."""
        zero = strategy in DEEPSPEED
        plain = zero or torch.device(device).type != "cuda"
        fmt = cfg.memory_format
        if fmt == "auto":
            fmt = "contiguous" if zero else "channels_last"
        opt = cfg.optimizer
        if opt == "auto":
            opt = "default" if plain else "fused"
        return cls(fmt, opt, cfg.resample, cfg.d_call)  # d_call's auto is resolved per D (step.py)

    @property
    def torch_format(self) -> torch.memory_format:
        return torch.channels_last if self.memory_format == "channels_last" else torch.contiguous_format

    def models(self, *modules: nn.Module) -> None:
        """Put every 4-D parameter and buffer of `modules` in this layout and set their blocks'
        resampling (in place)."""
        for m in modules:
            m.to(memory_format=self.torch_format)
            for block in m.modules():
                if hasattr(block, "fold_resample"):
                    block.fold_resample = {"folded": True, "separate": False}.get(self.resample, "auto")

    def batch(self, batch: Batch) -> Batch:
        """`batch` with its real images in this layout (latents and labels are 2-D/1-D)."""
        if batch.real is None or batch.real.dim() != 4:
            return batch
        return replace(batch, real=batch.real.contiguous(memory_format=self.torch_format))


PLAIN = FastPath("contiguous", "for-loop", "separate", "separate")  # two D calls, as StudioGAN
