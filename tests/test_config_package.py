"""bigan/config/ as a package: its modules stack without a cycle and without torch, the generic
loader knows no GAN, every name importers use is still there, the BigGAN block count comes from
the width tables, and the augmentation op lists are parsed once, when the config is built.

(tests/test_config.py checks loading itself: YAML, overrides, the errors that name the field.)
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

import bigan.config
from bigan.config import (
    BIGGAN_G_WIDTHS,
    AugmentConfig,
    ConfigError,
    ScheduleConfig,
    biggan_g_blocks,
    config_from_dict,
    dump_config,
    load_config,
    with_scheduled,
)
from bigan.config.loading import deep_merge, from_dict, read_tree
from tests.helpers import ROOT

pytestmark = pytest.mark.unit

PACKAGE = ROOT / "bigan" / "config"
# Bottom up: a module may import (of bigan) only the modules before it in this list.
ORDER = ["vocabulary", "units", "loading", "schedules", "training", "model", "data_eval", "migration",
         "__init__"]
# Beyond the package, only leaves that import nothing of bigan, so no cycle can form through them:
# the ONNX contract owns the truncation psi range that eval.psi is checked against.
LEAVES = {"data_eval": {"bigan.onnx_metadata"}}


def _bigan_imports(path) -> set[str]:
    """The bigan modules a file imports, lazy ones and those under TYPE_CHECKING included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] == "bigan"}


def test_the_modules_stack_bottom_up():
    """Every module of the package is in ORDER and imports only the modules before it (schedules
    and units name Config, in __init__, under TYPE_CHECKING only): no cycle can form."""
    assert sorted(p.stem for p in PACKAGE.glob("*.py")) == sorted(ORDER)
    for i, name in enumerate(ORDER):
        allowed = {f"bigan.config.{m}" for m in ORDER[:i] if m != "__init__"} | LEAVES.get(name, set())
        imported = _bigan_imports(PACKAGE / f"{name}.py")
        if name in ("schedules", "units"):
            imported.discard("bigan.config")  # `Config` in a type annotation (TYPE_CHECKING)
        assert imported <= allowed, f"{name}.py imports {sorted(imported - allowed)}"


@dataclass
class Inner:  # a schema that is no GAN's, for the generic loader
    rate: float = 0.5
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    table: dict[int, int] = field(default_factory=dict)
    on: bool = False


def test_the_generic_loader_knows_no_gan():
    """loading.py takes only ConfigError from the package, and loads any dataclass tree."""
    tree = ast.parse((PACKAGE / "loading.py").read_text())
    taken = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
             and n.module and n.module.startswith("bigan") for a in n.names}
    assert taken == {("bigan.config.vocabulary", "ConfigError")}

    got = from_dict(Outer, {"inner": {"rate": 2, "names": ["a"]}, "table": {"64": 3}, "on": True})
    assert got == Outer(Inner(2.0, ["a"]), {64: 3}, True) and isinstance(got.inner.rate, float)
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.rat' \(did you mean 'rate'\?\)"):
        from_dict(Outer, {"inner": {"rat": 1.0}})
    with pytest.raises(ConfigError, match=r"inner.rate=1e\+39 is invalid: must be a finite number"):
        from_dict(Outer, {"inner": {"rate": 1e39}})


def test_read_tree_merges_overrides_into_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a:\n  b: 1\n  c: [1, 2]\nd: x\n")
    assert read_tree(path, ["a.b=3", "e.f=1e-3"]) == {"a": {"b": 3, "c": [1, 2]}, "d": "x",
                                                      "e": {"f": "1e-3"}}
    assert read_tree(None, []) == {}
    with pytest.raises(ConfigError, match="not found"):
        read_tree(tmp_path / "missing.yaml")


def test_deep_merge_merges_mappings_key_by_key_and_changes_neither_argument():
    base = {"zero_optimization": {"stage": 2, "offload": {"device": "cpu"}}, "fp16": {"enabled": False},
            "list": [1, 2]}
    extra = {"zero_optimization": {"reduce_bucket_size": 5e7, "offload": {"pin": True}},
             "fp16": 3, "new": {"x": [1]}}
    before = copy.deepcopy((base, extra))
    out = deep_merge(base, extra)
    assert out == {"zero_optimization": {"stage": 2, "offload": {"device": "cpu", "pin": True},
                                         "reduce_bucket_size": 5e7},
                   "fp16": 3, "list": [1, 2], "new": {"x": [1]}}
    assert (base, extra) == before
    out["list"].append(3)
    out["new"]["x"].append(2)
    out["zero_optimization"]["offload"]["device"] = "nvme"
    assert (base, extra) == before  # the result shares nothing with either argument


def test_deepspeed_overrides_go_through_the_same_merge():
    pytest.importorskip("torch")
    from bigan.train.parallel import deepspeed_config

    cfg = deepspeed_config(2, 1.0, overrides={"zero_optimization": {"reduce_bucket_size": 5e7}})
    assert cfg["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 5e7}
    assert cfg == deep_merge(deepspeed_config(2, 1.0), {"zero_optimization": {"reduce_bucket_size": 5e7}})


def test_importing_the_config_pulls_in_nothing_heavy():
    code = ("import sys, bigan.config; bigan.config.load_config(None); "
            "heavy = [m for m in ('torch', 'numpy', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _names_importers_take() -> set[str]:
    """Every X of `from bigan.config import X` and of `config.X` after `from bigan import config`
    across the code, the benchmarks and the tests, read from the files as they are now."""
    names = set()
    for top in ("bigan", "serving", "launch", "bench", "tests"):
        for path in (ROOT / top).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            aliases = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == "bigan.config":
                    names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module == "bigan":
                    aliases.update(a.asname or a.name for a in node.names if a.name == "config")
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                        and node.value.id in aliases:
                    names.add(node.attr)
    return names


def test_every_name_importers_use_is_exported():
    names = _names_importers_take()
    assert {"Config", "ConfigError", "load_config", "BIGGAN_G_WIDTHS", "PENALTIES"} <= names
    missing = sorted(n for n in names if not hasattr(bigan.config, n))
    assert not missing, f"bigan.config no longer has {missing}"
    assert set(bigan.config.__all__) <= set(dir(bigan.config))


@pytest.mark.parametrize("resolution", sorted(BIGGAN_G_WIDTHS))
def test_the_hierarchical_z_check_counts_the_blocks_the_generator_builds(resolution):
    """The config refuses dim_z = blocks and accepts blocks + 1, and the Generator built from the
    same width table agrees: it takes blocks + 1 and refuses fewer."""
    torch = pytest.importorskip("torch")
    from bigan.models.biggan import Generator

    blocks = biggan_g_blocks(resolution)
    model = {"arch": "biggan", "resolution": resolution, "ch": 1, "d_ch": 1, "attention": [],
             "shared_dim": 4, "num_classes": 2}
    data = {"source": "synthetic"}
    with pytest.raises(ConfigError, match=f"hierarchical z at {resolution}px needs dim_z >= {blocks + 1}"):
        config_from_dict({"model": {**model, "dim_z": blocks}, "data": data})
    cfg = config_from_dict({"model": {**model, "dim_z": blocks + 1}, "data": data})
    torch.manual_seed(0)
    G = Generator(cfg.model)
    assert len(G.chunks) == blocks + 1
    with pytest.raises(ValueError, match="hierarchical z"):
        Generator(dataclasses.replace(cfg.model, dim_z=blocks))


def test_augment_op_lists_are_parsed_when_set_and_never_dumped():
    cfg = AugmentConfig(kind="diffaugment", policy="cutout, color", ada_pipeline="xint,scale")
    assert cfg.policy_ops == ("cutout", "color")
    assert cfg.pipeline_ops == frozenset({"xint", "scale"})
    assert AugmentConfig().pipeline_ops == frozenset(bigan.config.ADA_PIPELINES["bgc"])
    cfg.policy, cfg.ada_pipeline = "translation", "geom"  # set later: parsed again
    assert cfg.policy_ops == ("translation",)
    assert cfg.pipeline_ops == frozenset(bigan.config.ADA_PIPELINES["geom"])
    assert "policy_ops" not in dataclasses.asdict(cfg) and "pipeline_ops" not in dataclasses.asdict(cfg)
    loaded = load_config(None, ["augment.kind=ada", "augment.ada_pipeline=blit",
                                "augment.policy=translation"])
    assert loaded.augment.pipeline_ops == frozenset({"xflip", "rotate90", "xint"})
    assert "_ops" not in dump_config(loaded)
    assert config_from_dict(loaded.to_dict()) == loaded


def test_scheduled_copies_keep_the_parsed_lists():
    cfg = load_config(None, ["augment.kind=diffaugment", "augment.policy=color,cutout",
                             "schedules={augment.lecam_weight: {start: 0.0, end: 0.3}}"])
    now = with_scheduled(cfg, 0.5)
    assert now.augment is not cfg.augment and now.augment.lecam_weight == pytest.approx(0.15)
    assert now.augment.policy_ops == ("color", "cutout")
    assert now.augment.pipeline_ops == cfg.augment.pipeline_ops
    assert ScheduleConfig(start=0.0, end=0.3).value(0.5) == pytest.approx(0.15)


@pytest.mark.parametrize("overrides", [
    ["augment.kind=diffaugment", "augment.policy=cutout,translation"],
    ["augment.kind=ada", "augment.ada_pipeline=xint,scale,brightness"],
    ["augment.kind=ada"],
])
def test_the_training_step_augments_without_parsing(overrides, monkeypatch):
    """`augment.augment`, called for every batch D sees, gives what the string API gives, with
    the string parsers made to fail: it reads only the lists the config parsed at load time."""
    torch = pytest.importorskip("torch")
    from bigan import augment

    cfg = load_config(None, overrides).augment
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    if cfg.kind == "diffaugment":
        expected = augment.diffaugment(x, cfg.policy, torch.Generator().manual_seed(2), (2, 16))
    else:
        expected = augment.ada_augment(x, 0.7, torch.Generator().manual_seed(2), (2, 16),
                                       cfg.ada_pipeline)

    def parsed_again(*args):
        raise AssertionError("an op list was parsed during the step")

    monkeypatch.setattr(augment, "comma_list", parsed_again)
    monkeypatch.setattr(augment, "ada_ops", parsed_again)
    got = augment.augment(x, cfg, 0.7, torch.Generator().manual_seed(2), (2, 16))
    assert torch.equal(got, expected) and not torch.equal(got, x)
