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

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from bigan import models
from bigan.config import ConfigError, LossConfig, ModelConfig, OptimConfig, SpeedConfig, load_config
from bigan.train.optimizers import apply_settings, build_optimizers
from bigan.train.speed import PLAIN, FastPath
from bigan.train.step import (Batch, StepRuntime, StepState, d_update, g_update, gan_iteration,
                              mixes_samples)
from bigan.train.trainer import train
from tests.helpers import tiny_overrides

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


def _train(fast: FastPath, loss: LossConfig, steps: int = 3, model: ModelConfig = MODEL,
           wrap_D=lambda D, loss: D, optim: OptimConfig = OPTIM) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    G, D = models.build(model)
    fast.models(G, D)
    opt_G, opt_D = build_optimizers(G, D, optim, fast.optimizer)
    state = StepState()
    for step in range(steps):
        d_batches, g_batch = _batches(step)
        gan_iteration(G, wrap_D(D, loss), opt_G, opt_D, [fast.batch(b) for b in d_batches], g_batch,
                      loss, state, d_call=fast.d_call)
    return {**{f"G.{k}": v for k, v in G.state_dict().items()},
            **{f"D.{k}": v for k, v in D.state_dict().items()}}


@pytest.mark.parametrize("loss", [LossConfig(kind="hinge"),
                                  LossConfig(kind="nonsaturating", penalty="r1", penalty_weight=1.0)],
                         ids=["hinge", "r1-double-backward"])
@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_fast_path_ends_on_the_plain_paths_weights(loss, device):
    """auto's choice on `device`, run here on the CPU; D called as PLAIN calls it (tests below for
    that). On the CPU's path the baseline is PLAIN in the same layout: channels_last alone moves
    3 of G.blocks.0.conv1's 9216 weights 6.4e-5 from NCHW's after 3 iterations (hinge; 2.8x the
    tolerance, and 0.55x of it at eps 1e-3, 1.8x for R1 there): oneDNN's NHWC kernels sum in
    another order and Adam (beta1 0) turns round-off into steps where a gradient is near eps. That
    the layout changes nothing but rounding is checked on the gradients below, before any Adam step."""
    fast = replace(FastPath.resolve(SpeedConfig(), device), d_call=PLAIN.d_call)
    assert fast != PLAIN  # really another path
    base = PLAIN if device == "cuda" else replace(PLAIN, memory_format=fast.memory_format)
    assert base != fast
    plain, quick = _train(base, loss), _train(fast, loss)
    assert plain.keys() == quick.keys()
    moved = _train(base, loss, steps=0)
    assert any(not torch.equal(plain[k], moved[k]) for k in plain)  # training changed the weights
    for k in plain:
        torch.testing.assert_close(quick[k].contiguous(), plain[k], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("loss", [LossConfig(kind="hinge"),
                                  LossConfig(kind="nonsaturating", penalty="r1", penalty_weight=1.0)],
                         ids=["hinge", "r1-double-backward"])
def test_channels_last_gives_the_same_gradients(loss):
    """A D update and a G update from the same weights in NCHW and in channels_last (the CPU's
    `auto` since it measured 1.16x there) compute the same gradients up to float rounding: every
    parameter's, before Adam (an lr-0 step keeps the weights, so the G update sees the same D)."""
    grads = {}
    for fmt in ("contiguous", "channels_last"):
        fast = FastPath(fmt, "default", "auto", "auto")
        torch.manual_seed(0)
        G, D = models.build(MODEL)
        fast.models(G, D)
        opt_G, opt_D = (torch.optim.SGD(m.parameters(), lr=0.0) for m in (G, D))
        d_batches, g_batch = _batches(0)
        d_update(G, D, opt_D, fast.batch(d_batches[0]), loss, StepState(), StepRuntime())
        got = {f"D.{n}": p.grad.clone() for n, p in D.named_parameters()}
        g_update(G, D, opt_G, g_batch, loss, StepRuntime())
        got.update({f"G.{n}": p.grad.clone() for n, p in G.named_parameters()})
        grads[fmt] = got
    assert grads["contiguous"].keys() == grads["channels_last"].keys()
    # atol: 1e-5 of the net's largest gradient, for gradients that are zero but for round-off (the
    # bias of a conv followed by batch norm, module docstring)
    scale = {net: max(g.abs().max().item() for k, g in grads["contiguous"].items() if k[0] == net)
             for net in "GD"}
    for k, want in grads["contiguous"].items():
        torch.testing.assert_close(grads["channels_last"][k].contiguous(), want, rtol=1e-4,
                                   atol=1e-5 * scale[k[0]], msg=k)


@pytest.mark.parametrize("loss", [LossConfig(kind="hinge", ortho_weight=1.0),
                                  LossConfig(kind="nonsaturating", penalty="r1", penalty_weight=1.0,
                                             ortho_weight=1.0)],
                         ids=["hinge", "r1-double-backward"])
def test_closed_form_orthogonal_gradient_ends_on_autograds_weights(loss, monkeypatch):
    """G's orthogonal term with its closed-form gradient (regularizers._OffDiagonalGram) trains
    to the weights autograd of the masked formula gives, over 3 iterations on the fast path."""
    from bigan import regularizers

    fast = FastPath.resolve(SpeedConfig(), "cpu")
    closed = _train(fast, loss)
    assert any(not torch.equal(closed[k], v) for k, v in
               _train(fast, replace(loss, ortho_weight=0.0)).items())  # the term moved weights
    masked = lambda w: ((w @ w.T) * (1 - torch.eye(w.shape[0]))).pow(2).sum()  # noqa: E731
    monkeypatch.setattr(regularizers._OffDiagonalGram, "apply", masked)
    autograd = _train(fast, loss)
    for k in autograd:
        torch.testing.assert_close(closed[k], autograd[k], rtol=1e-4, atol=2e-5)


def test_fast_path_puts_models_and_reals_in_channels_last():
    fast = FastPath.resolve(SpeedConfig(memory_format="channels_last"), "cpu")
    G, D = models.build(MODEL)
    fast.models(G, D)
    convs = [p for p in D.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    d_batches, g_batch = _batches(0)
    assert fast.batch(d_batches[0]).real.is_contiguous(memory_format=torch.channels_last)
    assert fast.batch(g_batch) is g_batch  # no reals: nothing to convert


def test_auto_is_channels_last_on_cuda_and_cpu_and_keeps_torch_defaults_under_deepspeed():
    assert FastPath.resolve(SpeedConfig(), "cuda", "ddp") == FastPath("channels_last", "fused")
    assert FastPath.resolve(SpeedConfig(), "cpu", "ddp") == FastPath("channels_last", "default")
    assert FastPath.resolve(SpeedConfig(), "cuda", "zero2") == FastPath("contiguous", "default")
    explicit = SpeedConfig(memory_format="contiguous", optimizer="foreach", resample="separate")
    assert FastPath.resolve(explicit, "cuda", "zero1") == FastPath("contiguous", "foreach", "separate")
    for device, strategy in (("cpu", "ddp"), ("cuda", "ddp"), ("cpu", "zero3")):  # measured: fewer FLOPs
        assert FastPath.resolve(SpeedConfig(), device, strategy).resample == "auto"


@pytest.mark.parametrize("arch", ["biggan", "progan"])
def test_auto_resampling_folds_where_the_small_side_is_at_least_8_px(monkeypatch, arch):
    """`speed.resample: auto` folds by layers.FOLD_MIN_SIDE (measured: at 4 px the folded kernel
    ran slower), and the models it gives compute what the folded and separate ones do. ProGAN's
    blocks tested the string "auto" as a bool, so they always folded."""
    import importlib
    module = importlib.import_module(f"bigan.models.{arch}")
    m = ModelConfig(arch=arch, resolution=64, num_classes=3, dim_z=20, shared_dim=8, ch=4,
                    d_ch=4, attention=[], spectral_norm=arch != "progan")
    torch.manual_seed(0)
    G, D = (net.double().train() for net in models.build(m))
    z, y = torch.randn(2, 20, dtype=torch.float64), torch.tensor([0, 2])
    folded = {}
    for name in ("upsample_conv3x3", "conv3x3_avgpool"):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda x, conv, real=real, name=name: folded.setdefault(name, []).append(
                                x.shape[-1]) or real(x, conv))
    outs = {}
    for resample in ("separate", "auto", "folded"):
        FastPath("contiguous", "default", resample).models(G, D)
        folded.clear()
        img = G(z, y)
        outs[resample] = (img, D(img, y))
        if resample == "auto":  # G: 4 -> ... -> 64; D: 64 -> ... -> 4 (8 -> 4 not)
            assert folded == {"upsample_conv3x3": [8, 16, 32], "conv3x3_avgpool": [64, 32, 16]}
    for resample in ("auto", "folded"):
        for got, want in zip(outs[resample], outs["separate"]):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


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


# --- one D call on real and fake (speed.d_call) ---------------------------------------------------
LOSSES = [LossConfig(kind="hinge"), LossConfig(kind="nonsaturating", penalty="r1", penalty_weight=1.0)]
TWO_CALLS = FastPath("contiguous", "default", "folded", "separate")
ONE_CALL = replace(TWO_CALLS, d_call="auto")


class _FakeCallIteratesNot(nn.Module):
    """D of the two-call path whose spectral norms skip the power iteration in each D update's
    fake call (eval mode: the u, v of the real call are used), so u and v move once per D update,
    as under one joint call. The calls of a D update come in order real, fake, then the penalty's;
    a G update's (D frozen) iterates, as on both paths."""

    def __init__(self, D: nn.Module, calls_per_d_update: int):
        super().__init__()
        self.D, self.per_update, self.calls = D, calls_per_d_update, 0

    def forward(self, x, y):
        if not next(self.D.parameters()).requires_grad:
            return self.D(x, y)
        fake_call = self.calls % self.per_update == 1
        self.calls += 1
        self.D.train(not fake_call)  # this D has no batch norm: eval mode only stops the iteration
        try:
            return self.D(x, y)
        finally:
            self.D.train()


def _iterating_once(D, loss):
    return _FakeCallIteratesNot(D, 3 if loss.penalty != "none" else 2)


@pytest.mark.parametrize("loss", LOSSES, ids=["hinge", "r1-double-backward"])
def test_one_d_call_is_the_two_call_update_with_one_power_iteration(loss):
    """Weights, batch-norm statistics and spectral norm's u, v after 3 iterations equal those of
    the two-call path once its fake call stops iterating: the concatenation changes nothing else.
    Against the two-call path as it is, u and v differ by ~0.1 after 3 iterations: BigGAN's
    orthogonal init makes all singular values equal, so u is arbitrary and its path matters."""
    joint = _train(ONE_CALL, loss)
    reference = _train(TWO_CALLS, loss, wrap_D=_iterating_once)
    two_calls = _train(TWO_CALLS, loss)
    for k in joint:
        torch.testing.assert_close(joint[k], reference[k], rtol=1e-4, atol=2e-5)
    moved = [k for k in joint if k.endswith("._u") and not torch.allclose(joint[k], two_calls[k], atol=1e-3)]
    assert moved  # the real two-call path iterates twice: another trajectory of u, v


@pytest.mark.parametrize("loss", LOSSES, ids=["hinge", "r1-double-backward"])
def test_without_spectral_norm_one_d_call_ends_on_the_two_call_paths_weights(loss):
    """No power iteration, so the same math. Without spectral norm a few of G's gradients here
    are ~1e-4, and at eps 1e-4 Adam turns their round-off (one batch of 8 sums its products in
    another order than two of 4) into steps 1e-4 apart on a dozen of 9216 entries; at eps 1e-3
    the paths agree to 0.5% of the tolerance, against whole lr steps (2e-4) for a wrong pairing.
    With 2 threads (make test) one of 2048 entries of a layer ended 2.6e-5 apart: atol 5e-5 stays
    4x below a wrong pairing's step."""
    model, optim = replace(MODEL, spectral_norm=False), replace(OPTIM, eps=1e-3)
    joint = _train(ONE_CALL, loss, model=model, optim=optim)
    two_calls = _train(TWO_CALLS, loss, model=model, optim=optim)
    start = _train(ONE_CALL, loss, steps=0, model=model, optim=optim)
    assert any(not torch.equal(joint[k], start[k]) for k in joint)
    for k in joint:
        torch.testing.assert_close(joint[k], two_calls[k], rtol=1e-4, atol=5e-5)


def _d_calls_per_d_update(model: ModelConfig, d_call: str) -> int:
    torch.manual_seed(0)
    G, D = models.build(model)
    calls = []
    D.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    d_batches, _ = _batches(0)
    d_update(G, D, torch.optim.Adam(D.parameters()), d_batches[0], LossConfig(), StepState(),
             StepRuntime(), d_call=d_call)
    return calls


def test_d_is_called_once_on_real_and_fake_unless_it_mixes_samples():
    assert _d_calls_per_d_update(MODEL, "auto") == [8]  # 4 real + 4 fake in one call
    assert _d_calls_per_d_update(MODEL, "separate") == [4, 4]
    progan = ModelConfig(arch="progan", resolution=32, num_classes=3, dim_z=16, shared_dim=8,
                         fmap_base=64, fmap_max=16, mbstd_group_size=4)
    assert _d_calls_per_d_update(progan, "auto") == [4, 4]  # minibatch std-dev: groups stay apart
    assert mixes_samples(models.build(progan)[1])
    assert mixes_samples(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    assert not mixes_samples(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval())
    assert not mixes_samples(models.build(MODEL)[1])


def test_a_checkpoint_of_the_two_call_path_resumes_on_the_one_call_path(tmp_path):
    """Checkpoints written before the change (two calls) hold the same u, v buffers: a run resumes
    from one with the default and goes on from its step."""
    run = tmp_path / "run"
    first = train(load_config(None, tiny_overrides(run, **{"train.steps": 2, "speed.d_call": "separate"})))
    assert first.step == 2
    resumed = train(load_config(None, tiny_overrides(run, **{"train.steps": 4})), resume="auto")
    assert resumed.step == 4 and resumed.cur_nimg == 2 * first.cur_nimg
    written = load_file(str(first.last_checkpoint / "D.safetensors"))
    assert written.keys() == load_file(str(resumed.last_checkpoint / "D.safetensors")).keys()


def test_a_contiguous_checkpoint_resumes_in_channels_last(tmp_path):
    """Checkpoints written while `auto` was NCHW on the CPU hold the same tensors (names, shapes,
    values; only strides in memory differ): a run resumes from one with today's channels_last
    default, trains on from its step, and writes the same keys and shapes again."""
    run = tmp_path / "run"
    first = train(load_config(None, tiny_overrides(run, **{"train.steps": 2,
                                                           "speed.memory_format": "contiguous"})))
    assert FastPath.resolve(load_config(None, tiny_overrides(run)).speed).memory_format == "channels_last"
    resumed = train(load_config(None, tiny_overrides(run, **{"train.steps": 4})), resume="auto")
    assert resumed.step == 4 and resumed.cur_nimg == 2 * first.cur_nimg
    for name in ("G", "D"):
        before = load_file(str(first.last_checkpoint / f"{name}.safetensors"))
        after = load_file(str(resumed.last_checkpoint / f"{name}.safetensors"))
        assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
        assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained on


def test_d_call_is_checked_at_load_time():
    with pytest.raises(ConfigError, match="speed.d_call='joint' is invalid"):
        load_config(None, ["speed.d_call=joint"])
    assert load_config(None, ["speed.d_call=separate"]).speed.d_call == "separate"


# --- bench/train_vs_reference.py ------------------------------------------------------------------
def _reference_bench():
    import importlib

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module("train_vs_reference")


def test_reference_bench_says_how_to_get_biggan_pytorch_and_skips(tmp_path, monkeypatch, capsys):
    bench = _reference_bench()
    monkeypatch.delenv("BIGGAN_PYTORCH_DIR", raising=False)
    assert bench.main(["--out", str(tmp_path)]) is None
    (tmp_path / "empty").mkdir()
    assert bench.main(["--reference-dir", str(tmp_path / "empty"), "--out", str(tmp_path)]) is None
    out = capsys.readouterr().out
    assert out.count("git clone https://github.com/ajbrock/BigGAN-PyTorch") == 2
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.skipif(not os.environ.get("BIGGAN_PYTORCH_DIR"),
                    reason="set BIGGAN_PYTORCH_DIR to a BigGAN-PyTorch checkout (git clone "
                           "https://github.com/ajbrock/BigGAN-PyTorch)")
def test_reference_bench_runs_biggan_pytorchs_own_iteration_beside_bigans(tmp_path):
    report = _reference_bench().main(["--quick", "--cases", "biggan-32", "--batch", "2",
                                      "--out", str(tmp_path)])
    row = report["results"][0]
    assert row["params"]["reference"] == row["params"]["bigan"]  # the same nets
    assert row["gflop_per_iter"]["reference"] > row["gflop_per_iter"]["bigan"] > 0  # folding
    assert (tmp_path / "train_vs_reference.json").is_file()
    assert not any(n in sys.modules for n in ("BigGAN", "train_fns", "layers"))  # imports undone
