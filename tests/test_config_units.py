"""One unit of training time (bigan/config/units.py, bigan/config/migration.py): every cadence and
start in kimg, held as exact image counts, refused at load time unless it is a whole number of
steps, and the step-, D-update- and image-counted fields of older configs migrated with a warning
into kimg fields that train the same run.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bigan.config import ConfigError, config_from_dict, dump_config, load_config, nimg
from bigan.config.loading import read_tree
from bigan.train.evaluation import TrainEvaluation
from tests.helpers import tiny_overrides

pytestmark = pytest.mark.unit


# --- exact image counts and the step an event fires at -------------------------------------------

@pytest.mark.parametrize("kimg, images", [(2.01, 2010), (4.03, 4030), (0.032, 32), (10240, 10_240_000)])
def test_kimg_becomes_an_exact_image_count(kimg, images):
    assert nimg(kimg) == images and isinstance(nimg(kimg), int)
    assert (2.01 * 1000, 4.03 * 1000) != (2010, 4030)  # why: floating point alone is off by an ulp


def test_every_nimg_property_is_its_kimg_field_as_exact_images():
    c = config_from_dict({})
    sections = {"train": c.train, "ema": c.ema, "eval": c.eval, "optim": c.optim,
                "augment": c.augment, "progressive": c.progressive}
    kimg_fields = {"train.log_every": 2.01, "train.sample_every": 4.03, "train.ckpt_every": 8.06,
                   "ema.start": 0.05, "eval.every": 1.23, "optim.lr_decay_start": 3.07,
                   "augment.lecam_start": 0.064, "progressive.fade": 5.11, "progressive.stab": 6.13}
    for dotted, kimg in kimg_fields.items():
        section, stem = dotted.split(".")
        setattr(sections[section], f"{stem}_kimg", kimg)
    got = {dotted: getattr(sections[dotted.split(".")[0]], dotted.split(".")[1] + "_nimg")
           for dotted in kimg_fields}
    assert got == {"train.log_every": 2010, "train.sample_every": 4030, "train.ckpt_every": 8060,
                   "ema.start": 50, "eval.every": 1230, "optim.lr_decay_start": 3070,
                   "augment.lecam_start": 64, "progressive.fade": 5110, "progressive.stab": 6130}
    assert all(type(v) is int for v in got.values())
    c.optim.lr_decay_start_kimg = None  # null: from half of train.steps
    assert c.optim.lr_decay_start_nimg is None


def test_a_fraction_of_an_image_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"^train\.log_every_kimg=0\.0005 is invalid: must be a whole "
                                          r"number of images"):
        load_config(None, ["train.log_every_kimg=0.0005"])


@pytest.mark.parametrize("every_kimg, step", [(2.01, 201), (4.03, 403)])
def test_an_evaluation_cadence_fires_at_the_step_its_kimg_names(tmp_path, every_kimg, step):
    """10 images per step: 2.01 kimg is step 201, 4.03 kimg step 403. With `every_kimg * 1000`
    kept as a float (4030.0000000000005), step 403's 4030 images fell short and the evaluation
    came one step late, at 404."""
    cfg = load_config(None, ["train.batch_size=10", "optim.d_steps=1", "train.log_every_kimg=0.01",
                             "train.sample_every_kimg=0.01", "train.ckpt_every_kimg=0.01",
                             f"eval.every_kimg={every_kimg}", "eval.data=shards"])
    evaluation = TrainEvaluation(cfg, None, tmp_path / "checkpoints", lambda *a: None, main=False)
    fired = [s for s in range(1, 3 * step) if evaluation.due((s - 1) * 10, s * 10, last=False)]
    assert fired[:2] == [step, 2 * step]


# --- the refusal at load time --------------------------------------------------------------------

@pytest.mark.parametrize("overrides, field, words", [
    # the default batch: 64 x 2 D steps = 128 images a step
    (["train.log_every_kimg=1.3"], "train.log_every_kimg", "nearest: 1.28 or 1.408"),
    (["train.sample_every_kimg=2"], "train.sample_every_kimg", "whole number of steps"),
    (["train.ckpt_every_kimg=0.1"], "train.ckpt_every_kimg", "multiple of 0.128 kimg"),
    (["eval.every_kimg=1", "eval.data=shards"], "eval.every_kimg", "train.batch_size 64 x optim.d_steps 2"),
    (["ema.start_kimg=0.064"], "ema.start_kimg", "whole number of steps"),
    (["optim.lr_decay=linear", "optim.lr_decay_start_kimg=1"], "optim.lr_decay_start_kimg", "steps"),
    # LeCam's start counts D updates: 64 images each
    (["augment.lecam_weight=0.3", "augment.lecam_start_kimg=0.1"], "augment.lecam_start_kimg",
     "whole number of D updates, a multiple of 0.064 kimg"),
])
def test_a_cadence_that_is_not_whole_steps_is_refused_naming_the_field(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert message.startswith(f"{field}=") and words in message and "\n" not in message


def test_a_changed_batch_is_checked_too_and_whole_steps_pass():
    load_config(None, ["train.log_every_kimg=1.408"])  # 11 steps of 128
    # the default 1.28 kimg is not 96-image steps: fitted to 13 of them; a written 1.3 is refused
    assert load_config(None, ["train.batch_size=48"]).train.log_every_kimg == 1.248
    with pytest.raises(ConfigError, match="train.log_every_kimg.*train.batch_size 48"):
        load_config(None, ["train.batch_size=48", "train.log_every_kimg=1.3"])
    load_config(None, ["augment.lecam_start_kimg=0.1"])  # LeCam off: its start acts at no step


def test_progan_cadences_are_whole_steps_of_every_phase():
    """ProGAN's steps change size by phase (progan_1024: 16, 14, 6, 3 images): a cadence must be
    a multiple of all of them."""
    with pytest.raises(ConfigError, match=r"train.log_every_kimg=1.6 .*batches 3, 6, 14, 16"):
        load_config("configs/progan_1024.yaml", ["train.log_every_kimg=1.6"])
    assert load_config("configs/progan_1024.yaml").train.log_every_nimg == 1680


# --- migration of older configs ------------------------------------------------------------------

OLD = """\
model: {arch: biggan, resolution: 32, num_classes: 4, ch: 8, d_ch: 8, dim_z: 16, shared_dim: 8, attention: [16]}
data: {source: synthetic, num_samples: 64}
optim: {d_steps: 2, lr_decay: linear, lr_decay_start: 0.5}
ema: {decay: 0.9, start_step: 2}
augment: {kind: diffaugment, lecam_weight: 0.3, lecam_start: 3, lecam_decay: 0.9}
train: {batch_size: 8, steps: 6, log_every: 2, sample_every: 3, ckpt_every: 3, grid_per_class: 2,
        deterministic: true, keep_ckpts: 0}
"""
# The same run in kimg: a step shows 8 x 2 = 16 images, a D update 8.
NEW = {"optim.lr_decay_start_kimg": 0.048, "ema.start_kimg": 0.032, "augment.lecam_start_kimg": 0.024,
       "train.log_every_kimg": 0.032, "train.sample_every_kimg": 0.048, "train.ckpt_every_kimg": 0.048}
RENAMES = {"optim.lr_decay_start": "optim.lr_decay_start_kimg", "ema.start_step": "ema.start_kimg",
           "augment.lecam_start": "augment.lecam_start_kimg", "train.log_every": "train.log_every_kimg",
           "train.sample_every": "train.sample_every_kimg", "train.ckpt_every": "train.ckpt_every_kimg"}


def _old_config(tmp_path, out):
    path = tmp_path / "old.yaml"
    path.write_text(OLD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(path, [f"train.out_dir={out}"])
    return cfg, [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


def test_an_old_config_is_rewritten_to_kimg_with_a_warning_per_field(tmp_path):
    cfg, said = _old_config(tmp_path, tmp_path / "run")
    assert len(said) == len(RENAMES)
    for old, new in RENAMES.items():
        (line,) = [s for s in said if s.startswith(f"{old} is deprecated")]
        assert f"it became {new}: " in line and f"write {new} instead" in line
    for dotted, kimg in NEW.items():
        section, name = dotted.split(".")
        assert getattr(getattr(cfg, section), name) == pytest.approx(kimg)
    dumped = yaml.safe_load(dump_config(cfg))  # what a run writes: the new names only
    assert dumped["train"]["ckpt_every_kimg"] == pytest.approx(0.048) and "ckpt_every" not in dumped["train"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the dumped config loads without a warning
        assert config_from_dict(dumped) == cfg


def _preset_without(path: str, section: str, *names: str) -> dict:
    """A shipped config's mapping with `names` (its kimg fields) taken out of `section`."""
    tree = read_tree(path)
    tree[section] = {k: v for k, v in tree[section].items() if k not in names}
    return tree


def test_progressive_image_counts_become_kimg():
    tree = _preset_without("configs/progan_demo.yaml", "progressive", "fade_kimg", "stab_kimg")
    tree["progressive"].update(fade_nimg=3200, stab_nimg=6400)
    with pytest.warns(FutureWarning) as said:
        cfg = config_from_dict(tree)
    assert sorted(str(w.message).split(" (")[0] for w in said) == [
        "progressive.fade_nimg is deprecated: it became progressive.fade_kimg: 3.2",
        "progressive.stab_nimg is deprecated: it became progressive.stab_kimg: 6.4"]
    assert (cfg.progressive.fade_nimg, cfg.progressive.stab_nimg) == (3200, 6400)


@pytest.mark.parametrize("overrides, words", [
    (["train.log_every=10", "train.log_every_kimg=1.28"], "train.log_every and train.log_every_kimg are both set"),
    (["train.ckpt_every=ten"], "train.ckpt_every='ten' is invalid: must be an integer"),
])
def test_a_migration_that_cannot_be_made_is_refused_in_one_line(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_an_old_override_over_a_migrated_preset_wins_with_a_warning():
    """bench scripts and users pass `train.ckpt_every=250` over presets that now say ckpt_every_kimg."""
    with pytest.warns(FutureWarning, match="train.ckpt_every is deprecated: it became train.ckpt_every_kimg: 6.4"):
        cfg = load_config("configs/demo.yaml", ["train.ckpt_every=100"])  # 100 steps of 32 x 2
    assert cfg.train.ckpt_every_nimg == 6400
    assert load_config("configs/demo.yaml", ["train.ckpt_every_kimg=6.4"]) == cfg


def test_a_progan_fraction_of_the_steps_is_refused_with_what_to_write():
    with pytest.raises(ConfigError, match="write optim.lr_decay_start_kimg: the kimg where the decay begins"):
        load_config("configs/progan_demo.yaml", ["optim.lr_decay=linear", "optim.lr_decay_start=0.5"])


def test_a_progan_step_cadence_is_rounded_up_to_whole_steps_of_every_phase():
    tree = _preset_without("configs/progan_1024.yaml", "train", "log_every_kimg")
    tree["train"]["log_every"] = 100  # 1600 images at train.batch_size 16; 336 divides every phase's
    with pytest.warns(FutureWarning, match=r"train.log_every_kimg: 1.68 \(100 G steps, rounded up to 336 images"):
        cfg = config_from_dict(tree)
    assert cfg.train.log_every_nimg == 1680


def _events(run):
    logged = [json.loads(s)["step"] for s in (run / "metrics.jsonl").read_text().splitlines()]
    return (logged, sorted(p.name for p in (run / "checkpoints").glob("step-*")),
            sorted(p.name for p in (run / "grids").glob("*.png")))


@pytest.mark.slow
def test_an_old_config_and_its_migrated_form_train_the_same_run(tmp_path):
    """Same weights (bit for bit: deterministic CPU) and the same events, at the steps the old
    step counts named: logs every 2, grids and checkpoints every 3; EMA from step 2, LeCam from
    D update 3, lr decay from step 3 (half of 6)."""
    from bigan.train.trainer import train

    old_cfg, _ = _old_config(tmp_path, tmp_path / "old")
    tree = yaml.safe_load(OLD)
    for old, new in RENAMES.items():
        section, name = old.split(".")
        del tree[section][name]
        tree[section][new.split(".")[1]] = NEW[new]
    tree["train"]["out_dir"] = str(tmp_path / "new")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new_cfg = config_from_dict(tree)
    a, b = train(old_cfg), train(new_cfg)
    assert _events(tmp_path / "old") == _events(tmp_path / "new") == (
        [2, 4, 6], ["step-00000003", "step-00000006"], ["latest.png", "step-00000003.png", "step-00000006.png"])
    for name in ("G", "G_ema", "D"):
        wa = load_file(str(a.last_checkpoint / f"{name}.safetensors"))
        wb = load_file(str(b.last_checkpoint / f"{name}.safetensors"))
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}.{key}"


def test_tiny_overrides_still_name_whole_steps():
    """tests/helpers.py turns its step cadences into kimg at whatever batch a test sets."""
    cfg = load_config(None, tiny_overrides("unused", **{"train.batch_size": 6}))
    assert (cfg.train.log_every_nimg, cfg.train.ckpt_every_nimg, cfg.ema.start_nimg) == (24, 24, 12)


@pytest.mark.slow
def test_a_checkpoint_from_before_d_nimg_resumes_lecam_at_the_same_update(tmp_path):
    """LeCam's start is compared with the images of D's updates (StepState.d_nimg); a checkpoint
    written before that count existed resumes with it equal to its cur_nimg. The start lies after
    the resume point (D update 5 of 8 images, in step 3), so a count restarted at 0 would start
    LeCam 32 images late and the weights would differ."""
    from bigan.train.hooks import TrainHooks
    from bigan.train.trainer import train

    extra = {"train.steps": 4, "train.deterministic": "true", "augment.lecam_weight": 0.3,
             "augment.lecam_start_kimg": 0.04, "augment.lecam_decay": 0.5}
    straight = train(load_config(None, tiny_overrides(tmp_path / "a", **extra)))

    class StopAt2(TrainHooks):
        def should_stop(self, step):
            return step == 2

    cfg = load_config(None, tiny_overrides(tmp_path / "b", **extra))
    assert train(cfg, StopAt2()).step == 2
    manifest_path = tmp_path / "b" / "checkpoints" / "step-00000002" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["step_state"].pop("d_nimg") == manifest["cur_nimg"] == 32
    manifest_path.write_text(json.dumps(manifest))  # as written before d_nimg was kept
    resumed = train(cfg, resume="auto")
    for name in ("G", "D"):
        wa = load_file(str(straight.last_checkpoint / f"{name}.safetensors"))
        wb = load_file(str(resumed.last_checkpoint / f"{name}.safetensors"))
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}.{key}"



def test_defaults_fit_any_batch_while_written_values_are_checked():
    # The default cadences are whole steps at batch 64 x 2 D steps only; a run at batch 50 x 4
    # (BigGAN-PyTorch's CIFAR recipe) that leaves them unwritten must load, each rounded to whole
    # steps, while a value written off its default is refused naming the field.
    from bigan.config import Config

    cfg = Config()
    cfg.train.batch_size, cfg.optim.d_steps = 50, 4
    cfg.validate()
    assert (cfg.train.log_every_kimg, cfg.train.sample_every_kimg, cfg.train.ckpt_every_kimg) == \
        (1.2, 25.6, 64.0)  # 6.4 steps rounded to 6; 128 and 320 steps already whole
    cfg.train.log_every_kimg = 1.3
    with pytest.raises(ConfigError, match=r"train.log_every_kimg=1.3 is invalid.*nearest: 1.2 or 1.4"):
        cfg.validate()
