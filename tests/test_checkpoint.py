"""Checkpoints: exact round trip, atomicity under crashes, checksums, pruning, safe loading."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from bigan.checkpoint import store as ckpt
from bigan.checkpoint.loading import load_checkpoint, verify_checkpoint
from bigan.checkpoint.resume import find_resume
from bigan.checkpoint.store import CheckpointError, list_checkpoints, save_checkpoint

pytestmark = pytest.mark.unit

CONFIG_TEXT = "model:\n  ch: 8\n"


def _state(seed: int) -> dict:
    """Tiny models and an Adam state after one step, all depending on `seed`."""
    torch.manual_seed(seed)
    G = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    D = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    G(torch.randn(5, 4)).pow(2).mean().backward()
    opt.step()
    ema = {k: v.clone() for k, v in G.state_dict().items()}
    ema["tied"] = ema["0.weight"]                 # shares memory with another entry
    ema["strided"] = ema["0.weight"].t()          # non-contiguous view
    return {"models": {"G": G.state_dict(), "G_ema": ema, "D": D.state_dict()},
            "objects": {"opt_G": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}}}


def _save(root: Path, step: int, **kw) -> Path:
    s = _state(step)
    return save_checkpoint(root, step, s["models"], s["objects"], CONFIG_TEXT,
                           extra={"cur_nimg": 8 * step, "world_size": 2}, **kw)


def _exact(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_round_trip_is_exact_and_manifest_lists_every_file(tmp_path):
    s = _state(1)
    path = save_checkpoint(tmp_path, 1, s["models"], s["objects"], CONFIG_TEXT,
                           extra={"cur_nimg": 8, "world_size": 2, "strategy": "ddp",
                                  "data_position": 24, "phase": None})
    assert path == tmp_path / "step-00000001"
    assert (tmp_path / "latest").read_text().strip() == "step-00000001"

    c = load_checkpoint(path)
    assert set(c.models) == {"G", "G_ema", "D"}
    for name, state in s["models"].items():
        assert c.models[name].keys() == state.keys()
        for k in state:
            _exact(c.models[name][k], state[k].contiguous())
    opt, opt_loaded = s["objects"]["opt_G"], c.objects["opt_G"]
    _exact(opt_loaded["state"], opt["state"])
    assert opt_loaded["param_groups"] == opt["param_groups"]
    _exact(c.objects["rng"]["torch"], s["objects"]["rng"]["torch"])
    assert c.config_text == CONFIG_TEXT

    m = c.manifest
    assert (m["format"], m["version"], m["step"]) == ("bigan-checkpoint", 1, 1)
    assert (m["cur_nimg"], m["world_size"], m["strategy"], m["data_position"]) == (8, 2, "ddp", 24)
    on_disk = {p.name for p in path.iterdir()} - {"manifest.json"}
    assert set(m["files"]) == on_disk == {"G.safetensors", "G_ema.safetensors", "D.safetensors",
                                          "opt_G.pt", "rng.pt", "config.yaml"}
    for name, info in m["files"].items():
        data = (path / name).read_bytes()
        assert info == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


@pytest.mark.parametrize("target", ["save_file", "os.replace"])
def test_crash_mid_save_keeps_previous_checkpoint_and_latest(tmp_path, monkeypatch, target):
    first = _save(tmp_path, 1)

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    if target == "save_file":
        calls = {"n": 0}
        real = safetensors.torch.save_file

        def crash_on_second(*args, **kwargs):  # the first model file is written, then it dies
            calls["n"] += 1
            return real(*args, **kwargs) if calls["n"] == 1 else crash()

        monkeypatch.setattr(safetensors.torch, "save_file", crash_on_second)
    else:
        monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(CheckpointError, match="step-00000002.*simulated crash"):
        _save(tmp_path, 2)
    monkeypatch.undo()

    assert not (tmp_path / "step-00000002").exists()
    assert (tmp_path / "latest").read_text().strip() == "step-00000001"
    assert list_checkpoints(tmp_path) == [first]
    assert find_resume(tmp_path, "auto") == first
    assert load_checkpoint(first).manifest["step"] == 1


def test_leftovers_of_a_killed_save_are_ignored_then_cleaned(tmp_path):
    first = _save(tmp_path, 1)
    # What a save killed mid-write leaves: a tmp dir, even one with a manifest, and a stray pointer.
    leftover = tmp_path / "step-00000002.tmp-99999"
    leftover.mkdir()
    (leftover / "G.safetensors").write_bytes(b"partial")
    (leftover / "manifest.json").write_text("{}")
    (tmp_path / "latest.tmp").write_text("step-00000002\n")
    assert list_checkpoints(tmp_path) == [first]
    assert find_resume(tmp_path, "auto") == first

    second = _save(tmp_path, 2)
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001", "step-00000002"]
    assert find_resume(tmp_path, "auto") == second


def test_rerun_of_a_step_replaces_it(tmp_path):
    _save(tmp_path, 1)
    s = _state(7)
    path = save_checkpoint(tmp_path, 1, s["models"], s["objects"], "new: 1\n")
    assert load_checkpoint(path).config_text == "new: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001"]


def test_a_checkpoint_set_aside_by_an_interrupted_rerun_is_restored(tmp_path):
    first = _save(tmp_path, 1)
    os.replace(first, tmp_path / "step-00000001.tmp-old-4242")  # killed between the two renames
    assert list_checkpoints(tmp_path) == []
    _save(tmp_path, 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000002"]
    verify_checkpoint(first)


def test_corrupt_newest_is_refused_and_skipped_by_auto(tmp_path, caplog):
    first = _save(tmp_path, 1)
    second = _save(tmp_path, 2)
    weights = second / "G.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="G.safetensors.*sha256"):
        verify_checkpoint(second)
    with pytest.raises(CheckpointError, match="G.safetensors"):
        load_checkpoint(second)
    with pytest.raises(CheckpointError, match="G.safetensors"):
        find_resume(tmp_path, str(tmp_path))  # an explicit path is never silently replaced
    with caplog.at_level(logging.WARNING, logger="bigan.checkpoint.resume"):
        with pytest.warns(ckpt.CheckpointWarning, match="step-00000002.*G.safetensors"):
            assert find_resume(tmp_path, "auto") == first
    assert any("step-00000002" in r.getMessage() and "G.safetensors" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_truncated_file_is_refused(tmp_path):
    path = _save(tmp_path, 1)
    with open(path / "opt_G.pt", "r+b") as f:
        f.truncate(10)
    with pytest.raises(CheckpointError, match="opt_G.pt.*10 bytes"):
        verify_checkpoint(path)


def test_find_resume_specs(tmp_path):
    assert find_resume(tmp_path, None) is None
    assert find_resume(tmp_path / "nothing-here", "auto") is None  # fresh start
    first = _save(tmp_path, 1)
    second = _save(tmp_path, 2)
    assert find_resume(tmp_path, "auto") == second
    assert find_resume(tmp_path, str(tmp_path)) == second  # a root: follows `latest`
    assert find_resume(tmp_path, str(first)) == first
    with pytest.raises(CheckpointError, match="does not exist"):
        find_resume(tmp_path, str(tmp_path / "step-00000009"))
    # A crash between the directory rename and the pointer update: the newer complete one wins.
    (tmp_path / "latest").write_text("step-00000001\n")
    assert find_resume(tmp_path, "auto") == second


def test_manifestless_directory_is_ignored(tmp_path):
    first = _save(tmp_path, 1)
    bare = tmp_path / "step-00000005"
    bare.mkdir()
    (bare / "G.safetensors").write_bytes(b"x")
    assert list_checkpoints(tmp_path) == [first]
    # Never resumed from, but not in silence: it may be an older checkpoint the user wants.
    with pytest.warns(ckpt.CheckpointWarning, match="step-00000005 has no manifest.json"):
        assert find_resume(tmp_path, "auto") == first
    with pytest.raises(CheckpointError, match="no manifest.json"):
        verify_checkpoint(bare)


def test_keep_prunes_oldest_but_never_the_new_one(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    # Saving an older step (e.g. after resuming from an explicit older checkpoint) keeps it anyway.
    again = _save(tmp_path, 1, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000003"]
    assert (tmp_path / "latest").read_text().strip() == again.name
    assert not any(".tmp-" in p.name for p in tmp_path.iterdir())


class _Custom:
    pass


@pytest.mark.parametrize("bad", [lambda: 0, _Custom(), {"rng": [_Custom()]}, torch.nn.Linear(1, 1)],
                         ids=["lambda", "instance", "nested", "module"])
def test_objects_that_weights_only_refuses_fail_at_save(tmp_path, bad):
    s = _state(1)
    with pytest.raises(CheckpointError, match=r"objects\['extra'\].*weights_only"):
        save_checkpoint(tmp_path, 1, s["models"], {**s["objects"], "extra": bad}, CONFIG_TEXT)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_bad_extra_and_names_fail_at_save(tmp_path):
    s = _state(1)
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, 1, s["models"], {}, CONFIG_TEXT, extra={"t": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="step"):
        save_checkpoint(tmp_path, 1, s["models"], {}, CONFIG_TEXT, extra={"step": 3})
    with pytest.raises(CheckpointError, match="file name"):
        save_checkpoint(tmp_path, 1, {"../G": {}}, {}, CONFIG_TEXT)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    path = _save(tmp_path, 1)
    marker = tmp_path / "pwned"
    torch.save({"state": _Payload(marker)}, path / "opt_G.pt")
    assert not marker.exists()
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / "opt_G.pt").read_bytes()
    manifest["files"]["opt_G.pt"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    verify_checkpoint(path)  # the checksums match: only the weights_only load stands in the way

    with pytest.raises(CheckpointError, match="opt_G.pt.*refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_every_allowed_object_type_loads_back(tmp_path):
    """The save-time check must accept only what the weights_only loader really rebuilds."""
    from collections import Counter, OrderedDict
    value = {"none": None, "flags": (True, False), "n": 3, "x": 0.5, "z": 1 + 2j, "s": "a",
             "b": b"\x00\xff", "ba": bytearray(b"ab"), "set": {1, 2}, "size": torch.Size([2, 3]),
             "dev": torch.device("cpu"), "dtype": torch.bfloat16, "od": OrderedDict(a=1),
             "count": Counter("aab"), "param": torch.nn.Parameter(torch.ones(2)),
             "half": torch.arange(4, dtype=torch.float16)[::2], 7: [torch.zeros(0)]}
    path = save_checkpoint(tmp_path, 0, {}, {"misc": value}, CONFIG_TEXT)
    loaded = load_checkpoint(path).objects["misc"]
    assert loaded.keys() == value.keys()
    for k, v in value.items():
        if isinstance(v, torch.Tensor) or k == 7:
            _exact(loaded[k], v)
        else:
            assert loaded[k] == v and type(loaded[k]) is type(v), k


# --- parts written by several writers (checkpoint/sharded.py runs this across ranks) -------------

def _parts(state: dict, world: int) -> list[tuple[dict, dict]]:
    """Split `_state`'s G, G_ema and opt_G the way the trainer's ranks do."""
    from bigan.train.parallel_state import part_of

    out = []
    for r in range(world):
        models = {name: part_of(state["models"][name], (r, world)) for name in ("G", "G_ema")}
        opt = state["objects"]["opt_G"]
        objects = {"opt_G": {"state": {i: v for i, v in opt["state"].items() if i % world == r},
                             "param_groups": opt["param_groups"]}}
        out.append((models, objects))
    return out


def _write_parts(root: Path, step: int, parts: list[tuple[dict, dict]], world: int) -> Path:
    tmp = ckpt.begin_checkpoint(root, step, "test")
    files = {}
    for r, (models, objects) in enumerate(parts):
        files.update(ckpt.write_part(tmp, models, objects, shard=(r, world)))
    files.update(ckpt.write_part(tmp, {}, {"rng": {"seed": 1}}))
    return ckpt.commit_checkpoint(root, tmp, step, files, CONFIG_TEXT, {"shards": world})


def test_parts_of_several_writers_merge_back_on_load(tmp_path):
    state = _state(3)
    path = _write_parts(tmp_path, 3, _parts(state, 3), 3)
    names = sorted(verify_checkpoint(path)["files"])
    assert "G-00000-of-00003.safetensors" in names and "opt_G-00002-of-00003.pt" in names
    c = load_checkpoint(path)
    for name in ("G", "G_ema"):
        assert c.models[name].keys() == state["models"][name].keys()
        for k, v in state["models"][name].items():
            assert torch.equal(c.models[name][k], v)
    torch.testing.assert_close(c.objects["opt_G"], state["objects"]["opt_G"], rtol=0, atol=0)
    assert c.objects["rng"] == {"seed": 1}


def test_a_checkpoint_missing_a_writers_part_or_with_overlapping_parts_is_refused(tmp_path):
    state = _state(4)
    parts = _parts(state, 2)
    tmp = ckpt.begin_checkpoint(tmp_path, 1, "test")  # rank 1's seals never reached the commit
    files = ckpt.write_part(tmp, *parts[0], shard=(0, 2))
    path = ckpt.commit_checkpoint(tmp_path, tmp, 1, files, CONFIG_TEXT)
    with pytest.raises(CheckpointError, match=r"lacks the part\(s\) \[1\] of 2 of G.safetensors"):
        load_checkpoint(path)
    overlapping = [parts[0], ({"G": state["models"]["G"]}, {})]  # rank 1 also wrote rank 0's keys
    with pytest.raises(CheckpointError, match="G-00001-of-00002.safetensors disagrees"):
        load_checkpoint(_write_parts(tmp_path, 2, overlapping, 2))


def test_whole_state_names_must_not_look_like_parts(tmp_path):
    with pytest.raises(CheckpointError, match="mark of a shard"):
        save_checkpoint(tmp_path, 1, {"G-00000-of-00002": {}}, {}, CONFIG_TEXT)
    assert list_checkpoints(tmp_path) == []


def test_owners_split_bytes_evenly_and_deterministically():
    from bigan.train.parallel_state import owners

    sizes = {f"w{i}": s for i, s in enumerate([400, 300, 300, 200, 100, 100, 50, 50])}
    own = owners(sizes, 2)
    assert own == owners(dict(sizes), 2)
    load = [sum(s for k, s in sizes.items() if own[k] == r) for r in (0, 1)]
    assert load == [750, 750]
    assert set(owners(sizes, 1).values()) == {0}
    assert set(owners(sizes, 8).values()) == set(range(8))  # one entry each


# --- trust: what --resume auto skips -------------------------------------------------------------

def _reseal(path: Path, fname: str) -> None:
    """Rewrite the manifest entry of `fname` so its checksum matches the file as it is now."""
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / fname).read_bytes()
    manifest["files"][fname] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / "manifest.json").write_text(json.dumps(manifest))


class _NotPlain:
    """A harmless class: torch.load(weights_only=True) still refuses it (not allow-listed)."""


def test_auto_skips_a_pt_that_weights_only_refuses_without_unsafe_advice(tmp_path, caplog):
    first = _save(tmp_path, 1)
    second = _save(tmp_path, 2)
    torch.save({"state": _NotPlain()}, second / "opt_G.pt")
    _reseal(second, "opt_G.pt")
    verify_checkpoint(second)  # its checksum passes: only the load can tell
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(second)
    message = str(info.value)
    assert "opt_G.pt was refused by torch.load(weights_only=True)" in message
    assert "_NotPlain" in message and "\n" not in message
    for unsafe in ("weights_only=False", "weights_only` set to `False`", "add_safe_globals",
                   "allowlist"):
        assert unsafe not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with caplog.at_level(logging.WARNING, logger="bigan.checkpoint.resume"):
        with pytest.warns(ckpt.CheckpointWarning, match="skipping checkpoint .*step-00000002.*"
                                                        "opt_G.pt was refused"):
            assert find_resume(tmp_path, "auto") == first
    # The choice is worded for what happened: step-2, named in latest, was passed over.
    assert "resuming from step-00000001, older than step-00000002 named in" in caplog.text
    assert "newer than" not in caplog.text


def test_auto_skips_a_non_finite_checkpoint_and_an_explicit_one_is_refused(tmp_path):
    from bigan.checkpoint.resume import load_resume

    first = _save(tmp_path, 1)
    s = _state(2)
    s["models"]["G"]["0.weight"][0, 0] = float("nan")
    s["objects"]["opt_G"]["state"][0]["exp_avg_sq"][0, 1] = float("inf")
    second = save_checkpoint(tmp_path, 2, s["models"], s["objects"], CONFIG_TEXT)
    with pytest.warns(ckpt.CheckpointWarning, match="step-00000002 holds NaN or infinite values "
                                                    r"\(G/0.weight, .*opt_G/state/0/exp_avg_sq"):
        c = load_resume(tmp_path, "auto")
    assert c.path == first
    with pytest.raises(CheckpointError, match="NaN or infinite.*earlier checkpoint"):
        load_resume(tmp_path, str(second))


def test_latest_that_is_not_utf8_is_ignored_with_a_warning(tmp_path, caplog):
    _save(tmp_path, 1)
    second = _save(tmp_path, 2)
    (tmp_path / "latest").write_bytes(b"step-\xff\xfe\x00")
    with caplog.at_level(logging.WARNING, logger="bigan.checkpoint.resume"):
        assert find_resume(tmp_path, "auto") == second
        assert find_resume(tmp_path, str(tmp_path)) == second
    assert "latest is not UTF-8 text" in caplog.text


def test_newer_than_latest_is_worded_as_newer(tmp_path, caplog):
    _save(tmp_path, 1)
    second = _save(tmp_path, 2)
    (tmp_path / "latest").write_text("step-00000001\n")
    with caplog.at_level(logging.INFO, logger="bigan.checkpoint.resume"):
        assert find_resume(tmp_path, "auto") == second
    assert "resuming from step-00000002, newer than step-00000001 named in" in caplog.text


# --- a full disk ----------------------------------------------------------------------------------

class _FullDisk:
    """A file object that fails like a full disk after `room` bytes."""

    def __init__(self, room: int):
        self.room = room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.room -= len(data)
        return len(data)

    def flush(self) -> None:
        pass


def test_a_full_disk_is_named_not_torchs_unexpected_pos(tmp_path):
    try:  # torch's zip writer turns the OSError into 'unexpected pos', the OSError as context
        torch.save({"w": torch.zeros(10_000)}, _FullDisk(600))
    except Exception as e:
        raised = e
    assert ckpt.no_space(raised)
    message = str(ckpt.write_error(tmp_path, 3, raised))
    assert "could not write checkpoint" in message and "step-00000003: no space left on device" in message
    assert "unexpected pos" not in message and "MiB free there" in message
    assert not ckpt.no_space(RuntimeError("permission denied"))
    # Other ranks report their failure as text (checkpoint/sharded.py).
    assert ckpt.failure_text(RuntimeError("rank 1: no space left on device")) == \
        "no space left on device"


def test_a_real_full_disk(tmp_path):
    """A 256 KiB tmpfs: the save fails naming the full disk, and the previous checkpoint and
    `latest` stay intact. Needs permission to mount (root in a container); skipped otherwise."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        small = {"G": {"w": torch.zeros(1000)}}
        first = save_checkpoint(disk, 1, small, {"opt": {"m": torch.zeros(1000)}}, CONFIG_TEXT)
        for models, objects in (({"G": {"w": torch.zeros(10)}}, {"opt": {"m": torch.zeros(200_000)}}),
                                ({"G": {"w": torch.zeros(200_000)}}, {})):  # torch, safetensors
            with pytest.raises(CheckpointError) as info:
                save_checkpoint(disk, 2, models, objects, CONFIG_TEXT)
            assert "step-00000002: no space left on device" in str(info.value)
            assert "unexpected pos" not in str(info.value)
            assert find_resume(disk, "auto") == first
            assert (disk / "latest").read_text().strip() == "step-00000001"
    finally:
        subprocess.run(["umount", str(disk)], check=True)
