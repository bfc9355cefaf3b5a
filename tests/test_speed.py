"""The fast path of the training iteration (bigan/train/speed.py) computes what the plain path
computes: channels_last models and batches with fused Adam end N iterations on the same weights
as eager NCHW with for-loop Adam, up to float rounding.

Tolerance: both paths run the same float32 ops in another order (oneDNN's NHWC kernels sum a
convolution's products differently; fused Adam rounds its update once), so weights differ by a
few ulps per op. Adam divides each gradient by its own RMS, so a gradient that is mathematically
zero but ~1e-6 of round-off (the bias of a conv followed by batch norm: BN removes any per-channel
constant) becomes a step of +-lr whose sign is the round-off's: with BigGAN's eps 1e-6 such
biases differ by 1.5e-4 after one iteration on either path change alone. The test's eps 1e-4
keeps those steps at round-off size, so it compares the math: after 3 iterations the paths agree
to 3.3e-5 (a running mean of magnitude 1.2), against 2e-4..4e-4 for one lr step, which a wrong
loss, a skipped update or another lr would show.
"""

from __future__ import annotations

import pytest
import torch

from bigan import models
from bigan.config import ConfigError, LossConfig, ModelConfig, OptimConfig, SpeedConfig, load_config
from bigan.train.optimizers import apply_settings, build_optimizers
from bigan.train.speed import PLAIN, FastPath
from bigan.train.step import Batch, StepState, gan_iteration

pytestmark = pytest.mark.unit

MODEL = ModelConfig(arch="biggan", resolution=32, num_classes=3, dim_z=16, shared_dim=8, ch=8,
                    d_ch=8, attention=[16])
OPTIM = OptimConfig(g_lr=2e-4, d_lr=4e-4, d_steps=2, eps=1e-4)  # eps: see the module docstring


def _batches(step: int, n: int = 4) -> tuple[list[Batch], Batch]:
    g = torch.Generator().manual_seed(100 + step)

    def one(real: bool) -> Batch:
        return Batch(z=torch.randn(n, MODEL.dim_z, generator=g),
                     fake_y=torch.randint(0, 3, (n,), generator=g), generator=g,
                     real=torch.rand(n, 3, 32, 32, generator=g) * 2 - 1 if real else None,
                     real_y=torch.randint(0, 3, (n,), generator=g) if real else None)
    return [one(True) for _ in range(OPTIM.d_steps)], one(False)


def _train(fast: FastPath, loss: LossConfig, steps: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    G, D = models.build(MODEL)
    fast.models(G, D)
    opt_G, opt_D = build_optimizers(G, D, OPTIM, fast.optimizer)
    state = StepState()
    for step in range(steps):
        d_batches, g_batch = _batches(step)
        gan_iteration(G, D, opt_G, opt_D, [fast.batch(b) for b in d_batches], g_batch, loss, state)
    return {**{f"G.{k}": v for k, v in G.state_dict().items()},
            **{f"D.{k}": v for k, v in D.state_dict().items()}}


@pytest.mark.parametrize("loss", [LossConfig(kind="hinge"),
                                  LossConfig(kind="nonsaturating", penalty="r1", penalty_weight=1.0)],
                         ids=["hinge", "r1-double-backward"])
def test_fast_path_ends_on_the_plain_paths_weights(loss):
    fast = FastPath.resolve(SpeedConfig(), "cuda")  # auto's choice on CUDA, run here on the CPU
    assert fast != PLAIN  # really another path
    plain, quick = _train(PLAIN, loss), _train(fast, loss)
    assert plain.keys() == quick.keys()
    moved = _train(PLAIN, loss, steps=0)
    assert any(not torch.equal(plain[k], moved[k]) for k in plain)  # training changed the weights
    for k in plain:
        torch.testing.assert_close(quick[k].contiguous(), plain[k], rtol=1e-4, atol=2e-5)


def test_fast_path_puts_models_and_reals_in_channels_last():
    fast = FastPath.resolve(SpeedConfig(memory_format="channels_last"), "cpu")
    G, D = models.build(MODEL)
    fast.models(G, D)
    convs = [p for p in D.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    d_batches, g_batch = _batches(0)
    assert fast.batch(d_batches[0]).real.is_contiguous(memory_format=torch.channels_last)
    assert fast.batch(g_batch) is g_batch  # no reals: nothing to convert


def test_auto_is_fast_on_cuda_and_keeps_torch_defaults_on_cpu_and_under_deepspeed():
    assert FastPath.resolve(SpeedConfig(), "cuda", "ddp") == FastPath("channels_last", "fused")
    assert FastPath.resolve(SpeedConfig(), "cpu", "ddp") == FastPath("contiguous", "default")
    assert FastPath.resolve(SpeedConfig(), "cuda", "zero2") == FastPath("contiguous", "default")
    explicit = SpeedConfig(memory_format="contiguous", optimizer="foreach", resample="separate")
    assert FastPath.resolve(explicit, "cuda", "zero1") == FastPath("contiguous", "foreach", "separate")
    for device, strategy in (("cpu", "ddp"), ("cuda", "ddp"), ("cpu", "zero3")):  # measured: fewer FLOPs
        assert FastPath.resolve(SpeedConfig(), device, strategy).resample == "folded"


@pytest.mark.parametrize("arch", ["biggan", "biggan-deep", "progan"])
def test_folded_resampling_computes_the_same_models(arch):
    """Every block with a `fold_resample` switch gives the same G and D outputs either way (the
    per-layer identity is tests/test_layers.py's; this checks each block folds the right conv)."""
    m = ModelConfig(arch=arch, resolution=32, num_classes=3, dim_z=16, shared_dim=8, ch=8, d_ch=8,
                    attention=[])
    torch.manual_seed(0)
    G, D = (net.double().eval() for net in models.build(m))
    z, y = torch.randn(4, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    switched = [b for net in (G, D) for b in net.modules() if hasattr(b, "fold_resample")]
    assert len(switched) >= 4 and all(b.fold_resample for b in switched)  # folded by default
    folded_img = G(z, y)
    folded_logits = D(folded_img, y)
    PLAIN.models(G, D)
    assert not any(b.fold_resample for b in switched)
    torch.testing.assert_close(G(z, y), folded_img, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(D(folded_img, y), folded_logits, rtol=1e-10, atol=1e-10)


def test_speed_settings_are_checked_at_load_time():
    with pytest.raises(ConfigError, match="speed.memory_format='nhwc' is invalid"):
        load_config(None, ["speed.memory_format=nhwc"])
    with pytest.raises(ConfigError, match="speed.optimizer='apex' is invalid"):
        load_config(None, ["speed.optimizer=apex"])
    with pytest.raises(ConfigError, match="speed.resample='fused' is invalid"):
        load_config(None, ["speed.resample=fused"])
    assert load_config(None, ["speed.optimizer=foreach"]).speed.optimizer == "foreach"


def test_a_restored_optimizer_keeps_the_implementation_it_was_built_with():
    G, D = models.build(MODEL)
    loop_G, loop_D = build_optimizers(G, D, OPTIM, "for-loop")
    for p in G.parameters():
        p.grad = torch.ones_like(p)
    loop_G.step()
    fused_G, fused_D = build_optimizers(G, D, OPTIM, "fused")
    fused_G.load_state_dict(loop_G.state_dict())  # a checkpoint written by the for-loop run
    assert not fused_G.param_groups[0]["fused"]  # what load_state_dict alone leaves
    apply_settings(fused_G, fused_D, OPTIM)
    assert fused_G.param_groups[0]["fused"] is True
    fused_G.step()  # the fused kernel accepts the restored step counts
    assert next(iter(fused_G.state.values()))["step"].item() == 2
