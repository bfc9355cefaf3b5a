"""Evaluation beside training (bigan/train/evaluation.py, bigan/eval/run_evaluator.py) and the
`best` pointer (bigan/checkpoint/best.py), on the tiny BigGAN with the tiny domain classifier as
extractor so a run with evaluation takes seconds.

What must hold: the pointer survives a crash between its write and its rename; pruning keeps the
best and held checkpoints; an evaluator that raises never stops training; a resume continues the
history (and scores what a crash left unscored); the process and blocking evaluators give the
same numbers, because both run `RunScorer.record` on the same checkpoint files.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math

import pytest
import torch

from bigan.checkpoint import best as best_pointer
from bigan.checkpoint import durable, store
from bigan.cli import main
from bigan.config import ConfigError, load_config
from bigan.eval.run_evaluator import (BlockingEvaluator, ProcessEvaluator, make_evaluator,
                                      read_history)
from bigan.train.evaluation import HOLDER
from bigan.train.trainer import train
from tests.helpers import eval_run_config as _cfg
from tests.helpers import tiny_overrides

pytestmark = pytest.mark.unit



def _eval_lines(run):
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "eval/fid" in r]


@pytest.mark.parametrize("override, field", [
    ("eval.metrics=[fid,nope]", "eval.metrics"), ("eval.n=3", "eval.n"),
    ("eval.best_metric=kid", "eval.best_metric"), ("eval.best_direction=max", "eval.best_direction"),
    ("eval.psi=[0]", "eval.psi"), ("eval.mode=ray", "eval.mode"),
    ("eval.extractor=model.bin", "eval.extractor"), ("eval.every_kimg=1", "eval.data"),
    ("eval.metrics=[fid,is]", "eval.metrics"),
])
def test_eval_config_is_checked_at_load_time(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_eval_off_by_default():
    assert load_config(None, []).eval.every_kimg == 0


def _save(root, step, keep=0):
    return store.save_checkpoint(root, step, {"G": {"w": torch.full((2,), float(step))}}, {},
                                 "x: 1\n", keep=keep)


def test_best_pointer_survives_a_crash_between_write_and_rename(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    _save(root, 1), _save(root, 2)
    best_pointer.write_best(root, {"checkpoint": "step-00000001", "metric": "eval/fid", "value": 5.0})

    def crash(*args):
        raise OSError("power cut")

    with monkeypatch.context() as m:
        m.setattr(durable.os, "replace", crash)
        with pytest.raises(OSError, match="power cut"):
            best_pointer.offer_best(root, {"checkpoint": "step-00000002", "metric": "eval/fid",
                                           "value": 1.0}, "min")
    assert (root / "best.tmp").exists()  # the new record was written, the rename never happened
    assert best_pointer.read_best(root)["checkpoint"] == "step-00000001"
    assert best_pointer.best_checkpoint(root) == root / "step-00000001"
    # the next update replaces both the pointer and the leftover
    assert best_pointer.offer_best(root, {"checkpoint": "step-00000002", "metric": "eval/fid",
                                          "value": 1.0}, "min")
    assert best_pointer.read_best(root)["value"] == 1.0 and not (root / "best.tmp").exists()
    assert not best_pointer.offer_best(root, {"checkpoint": "step-00000001", "metric": "eval/fid",
                                              "value": 3.0}, "min")


def test_pruning_keeps_the_best_and_held_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 1)
    best_pointer.write_best(root, {"checkpoint": "step-00000001", "metric": "eval/fid", "value": 1.0})
    _save(root, 2)
    best_pointer.hold(root, root / "step-00000002", HOLDER)
    for step in (3, 4):
        _save(root, step, keep=1)
    assert [p.name for p in store.list_checkpoints(root)] == [
        "step-00000001", "step-00000002", "step-00000004"]
    best_pointer.release(root, "step-00000002", HOLDER)
    _save(root, 5, keep=1)
    assert [p.name for p in store.list_checkpoints(root)] == ["step-00000001", "step-00000005"]


def test_a_prune_between_the_evaluators_two_writes_keeps_the_new_best(tmp_path, monkeypatch):
    """The evaluator points `best` at the checkpoint it scored, then releases its hold on it. A
    prune reads the holds and `best` one after the other; here the evaluator's two writes land
    between the prune's two reads, whichever it reads first. The scored checkpoint must survive
    and `best` must name a directory that exists."""
    root = tmp_path / "checkpoints"
    _save(root, 1), _save(root, 2)
    best_pointer.write_best(root, {"checkpoint": "step-00000001", "metric": "eval/fid", "value": 5.0})
    best_pointer.hold(root, root / "step-00000002", HOLDER)
    reads = []

    def then_the_evaluator_finishes(read):
        def first_read_then_evaluator(*args, **kwargs):
            out = read(*args, **kwargs)
            reads.append(read.__name__)
            if len(reads) == 1:  # offer_best's write, then `record`'s release (run_evaluator.py)
                best_pointer.write_best(root, {"checkpoint": "step-00000002", "metric": "eval/fid",
                                               "value": 1.0, "direction": "min"})
                best_pointer.release(root, "step-00000002", HOLDER)
            return out
        return first_read_then_evaluator

    monkeypatch.setattr(best_pointer, "read_best", then_the_evaluator_finishes(best_pointer.read_best))
    monkeypatch.setattr(best_pointer, "held", then_the_evaluator_finishes(best_pointer.held))
    _save(root, 3, keep=1)
    assert sorted(reads) == ["held", "read_best"]  # the prune read both, the writes between them
    assert [p.name for p in store.list_checkpoints(root)] == ["step-00000002", "step-00000003"]
    assert best_pointer.best_checkpoint(root) == root / "step-00000002"


@pytest.mark.slow
def test_blocking_and_process_evaluators_give_the_same_numbers(
        tmp_path, tiny_eval_shards, tiny_classifier, capsys):
    histories = {}
    for mode in ("blocking", "process"):
        run = tmp_path / mode
        cfg = _cfg(run, tiny_eval_shards, tiny_classifier, tmp_path / "cache",
                   **{"eval.mode": mode})
        evaluator = make_evaluator(cfg)
        assert isinstance(evaluator, BlockingEvaluator if mode == "blocking" else ProcessEvaluator)
        result = train(cfg, evaluator=evaluator)
        assert result.step == 4
        history = read_history(run)
        histories[mode] = history
        assert [r["step"] for r in history] == [2, 4]
        assert [r["step"] for r in _eval_lines(run)] == [2, 4]  # back in metrics.jsonl
        m = history[-1]["metrics"]
        assert {"eval/fid", "eval/fid_psi0.8", "eval/intra_fid", "eval/class_accuracy",
                "eval/is", "eval/kid", "eval/precision", "eval/recall"} <= m.keys()
        assert all(math.isfinite(v) for v in m.values())
        protocol = history[-1]["protocol"]["psi=0.8"]
        assert protocol["reference"]["n"] == 16 and protocol["generated"]["n"] == 16
        assert protocol["generated"]["psi"] == 0.8 and len(protocol["weights_sha256"]) == 64
        assert protocol["resize"].startswith("uint8")
        # best names the step of the lowest FID; pruning (keep 1) kept it; no hold is left
        best = best_pointer.read_best(run / "checkpoints")
        low = min(history, key=lambda r: r["metrics"]["eval/fid"])
        assert best["checkpoint"] == low["checkpoint"] and best["value"] == low["metrics"]["eval/fid"]
        assert (run / "checkpoints" / best["checkpoint"]).is_dir()
        assert best_pointer.held(run / "checkpoints") == []
        assert (run / "eval" / "metrics.png").stat().st_size > 1000
    for a, b in zip(histories["blocking"], histories["process"]):
        torch.testing.assert_close(a["metrics"], b["metrics"], rtol=0, atol=0)

    # `bigan checkpoint list` marks it; `bigan export RUN --best` exports it
    capsys.readouterr()
    assert main(["checkpoint", "list", str(run)]) == 0
    listed = capsys.readouterr().out
    best_line = next(line for line in listed.splitlines() if line.startswith(best["checkpoint"]))
    assert "best" in best_line and f"best: {best['checkpoint']} by eval/fid" in listed
    if importlib.util.find_spec("onnxruntime") is not None:
        assert main(["export", str(run), "--best", "--out", str(tmp_path / "best.onnx")]) == 0
        assert f"best checkpoint: {run / 'checkpoints' / best['checkpoint']}" in capsys.readouterr().out


def test_train_and_export_fail_in_one_line_without_extractor_or_best(tmp_path, tiny_eval_shards, capsys):
    code = main(["train", "configs/demo.yaml", "--out", str(tmp_path / "run"),
                 f"data.path={tiny_eval_shards}", "eval.every_kimg=1.28",
                 f"eval.extractor={tmp_path / 'missing.safetensors'}"])
    assert code == 2 and "eval.extractor=" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert main(["export", str(tmp_path / "run"), "--best"]) == 2
    assert "no readable best pointer" in capsys.readouterr().err


class _Raising:
    def submit(self, job):
        raise RuntimeError("evaluator on fire")

    def results(self):
        raise RuntimeError("evaluator on fire")

    def close(self):
        raise RuntimeError("evaluator on fire")


@pytest.mark.slow
def test_an_evaluator_that_raises_does_not_stop_training(
        tmp_path, tiny_eval_shards, tiny_classifier, caplog):
    cfg = _cfg(tmp_path / "run", tiny_eval_shards, tiny_classifier, tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        result = train(cfg, evaluator=_Raising())
    assert result.step == 4 and "evaluator on fire" in caplog.text
    assert best_pointer.held(tmp_path / "run" / "checkpoints") == []  # nobody will score them

    # A job that fails inside the evaluator process (its extractor vanished after the check).
    clf = tmp_path / "clf.safetensors"
    clf.write_bytes(tiny_classifier.read_bytes())
    cfg = _cfg(tmp_path / "run2", tiny_eval_shards, clf, tmp_path / "cache")
    evaluator = make_evaluator(cfg)
    clf.unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = train(cfg, evaluator=evaluator)
    assert result.step == 4
    assert "evaluation of step 2 failed" in caplog.text and "evaluation of step 4 failed" in caplog.text
    assert best_pointer.held(tmp_path / "run2" / "checkpoints") == []
    assert read_history(tmp_path / "run2") == []


@pytest.mark.slow
def test_resume_continues_the_history(tmp_path, tiny_eval_shards, tiny_classifier):
    run = tmp_path / "run"
    cfg = _cfg(run, tiny_eval_shards, tiny_classifier, tmp_path / "cache",
               **{"eval.mode": "blocking", "train.keep_ckpts": 3})
    train(cfg, evaluator=make_evaluator(cfg))
    # A crash right after step 4 was handed over: its record never written, its hold left.
    root = run / "checkpoints"
    history_file = run / "eval" / "history.jsonl"
    first, second = history_file.read_text().splitlines()
    history_file.write_text(first + "\n")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(
        s + "\n" for s in lines if not ('"eval/fid"' in s and json.loads(s)["step"] == 4)))
    best_pointer.hold(root, root / "step-00000004", HOLDER)

    cfg = _cfg(run, tiny_eval_shards, tiny_classifier, tmp_path / "cache",
               **{"eval.mode": "blocking", "train.keep_ckpts": 3, "train.steps": 8})
    result = train(cfg, resume="auto", evaluator=make_evaluator(cfg))
    assert result.step == 8
    history = read_history(run)
    assert [r["step"] for r in history] == [2, 4, 6, 8]
    assert history[1]["metrics"] == json.loads(second)["metrics"]  # step 4 rescored, same numbers
    assert sorted(r["step"] for r in _eval_lines(run)) == [2, 4, 6, 8]
    best = best_pointer.read_best(root)
    assert best["value"] == min(r["metrics"]["eval/fid"] for r in history)
    assert best_pointer.held(root) == []


def test_trackers_are_checked_and_tensorboard_can_be_left_out(tmp_path):
    assert load_config(None, []).train.log_with == ["tensorboard"]
    with pytest.raises(ConfigError, match=r"train\.log_with"):
        load_config(None, ["train.log_with=[tensorboard,nope]"])
    from accelerate.tracking import get_available_trackers

    if "wandb" not in {str(t) for t in get_available_trackers()}:  # not installed: one clear error
        cfg = load_config(None, tiny_overrides(tmp_path / "w", **{"train.log_with": "[wandb]"}))
        with pytest.raises(ConfigError, match=r"train\.log_with.*wandb is not installed"):
            train(cfg)
    run = tmp_path / "quiet"
    train(load_config(None, tiny_overrides(run, **{"train.log_with": "[]", "train.steps": 2})))
    assert not (run / "tb").exists() and (run / "metrics.jsonl").stat().st_size > 0
