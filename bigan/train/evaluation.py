"""Evaluation beside training, the trainer's side: when to evaluate, handing a checkpoint over,
and writing the results back at the step they belong to.

The trainer never imports `bigan.eval` (a layer above it); it talks to an `Evaluator` passed into
`train(cfg, evaluator=...)` by whoever composes the run (`bigan train` builds one with
`bigan.eval.run_evaluator.make_evaluator`). At an evaluation step, every `eval.every_kimg`
thousand images and at the last step, the trainer writes a checkpoint (so the EMA weights are
already on disk), *holds* it against pruning (`checkpoint/best.py`) and submits it; the evaluator
scores it (in its own process, or inline in blocking mode), records the history, moves `best` and
releases the hold. Its finished records come back through `results()` and go into metrics.jsonl
and TensorBoard at their own step. Nothing the evaluator does can stop training: every call into
it is guarded and a failure is logged. A checkpoint still held when a run resumes was handed over
but never scored (a crash), so it is submitted again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from bigan.checkpoint import best as best_pointer
from bigan.config import Config

log = logging.getLogger(__name__)

HOLDER = "eval"  # the name of the evaluator's holds on checkpoints


@dataclass
class EvalJob:
    checkpoint: str  # absolute path of the step-NNNNNNNN directory to score (its parent: the root)
    step: int  # G step of the checkpoint
    kimg: float  # thousands of real images shown to D by then


class Evaluator(Protocol):
    """What the trainer needs of an evaluator. Records are dicts: {"step", "kimg", "metrics":
    {"eval/<name>": value}} for a scored checkpoint, {"step", "error": message} for a failure."""

    def submit(self, job: EvalJob) -> None:
        """Take `job`; the process evaluator returns at once, the blocking one scores it first."""

    def results(self) -> list[dict]:
        """Records finished since the last call (never waits)."""

    def close(self) -> list[dict]:
        """Wait for every submitted job, stop, and return the records not yet returned."""


class TrainEvaluation:
    """The evaluation cadence and the evaluator of one run, on every rank (only the main one
    hands anything over); `write(step, scalars)` is where results go (RunLog.write_eval)."""

    def __init__(self, cfg: Config, evaluator: Evaluator | None, root: Path,
                 write: Callable[[int, dict[str, float]], None], main: bool):
        self.every_nimg = cfg.eval.every_kimg * 1000
        self.evaluator = evaluator if main else None
        self.root, self.write = Path(root), write
        if main and self.every_nimg and evaluator is None:
            log.warning("eval.every_kimg=%g but no evaluator was given to train(): checkpoints are "
                        "written at the evaluation steps, nothing scores them (`bigan train` "
                        "composes one)", cfg.eval.every_kimg)

    def due(self, prev_nimg: int, cur_nimg: int, last: bool) -> bool:
        """Whether the step that took the image count from prev_nimg to cur_nimg is evaluated:
        it crossed a multiple of eval.every_kimg, or it is the last. The same on every rank."""
        if not self.every_nimg:
            return False
        return last or prev_nimg // self.every_nimg < cur_nimg // self.every_nimg

    def resubmit_held(self) -> None:
        """After a resume: submit again what the crashed run handed over but never got scored."""
        if self.evaluator is None:
            return
        for name in best_pointer.held(self.root, HOLDER):
            path = self.root / name
            try:
                manifest = json.loads((path / "manifest.json").read_text())
            except (OSError, ValueError):
                best_pointer.release(self.root, name, HOLDER)  # gone or damaged: nothing to score
                continue
            log.info("scoring %s, handed over before the resume but never scored", name)
            self._guarded(self.evaluator.submit, EvalJob(str(path.resolve()), manifest["step"],
                                                         manifest.get("cur_nimg", 0) / 1000))
        self.collect()

    def hand_over(self, checkpoint: Path, step: int, cur_nimg: int) -> None:
        """Hold `checkpoint` against pruning and submit it (main process; no-op elsewhere)."""
        if self.evaluator is None:
            return
        best_pointer.hold(self.root, checkpoint, HOLDER)
        job = EvalJob(str(Path(checkpoint).resolve()), step, cur_nimg / 1000)
        if not self._guarded(self.evaluator.submit, job, ok=True):
            best_pointer.release(self.root, checkpoint, HOLDER)  # nobody will score it
        self.collect()

    def collect(self) -> None:
        """Write whatever the evaluator has finished (cheap; called at log steps)."""
        if self.evaluator is not None:
            self._record(self._guarded(self.evaluator.results) or [])

    def finish(self) -> None:
        """End of training: wait for the last evaluations and write them."""
        if self.evaluator is not None:
            self._record(self._guarded(self.evaluator.close) or [])
            self.evaluator = None

    def _record(self, records: list[dict]) -> None:
        for r in records:
            if "error" in r:
                log.warning("evaluation of step %s failed (training goes on): %s",
                            r.get("step"), r["error"])
                continue
            try:
                self.write(int(r["step"]), {**r["metrics"], "progress/kimg": float(r["kimg"])})
            except Exception:  # a malformed record must not end the run either
                log.exception("could not write the evaluation record %r", r)

    @staticmethod
    def _guarded(call: Callable, *args: Any, ok: Any = None) -> Any:
        """call(*args), or None (logged) when it raises: the evaluator never stops training.
        `ok`: what to return for a call that returns nothing but succeeded."""
        try:
            out = call(*args)
        except Exception:
            log.exception("the evaluator failed in %s; training goes on",
                          getattr(call, "__name__", call))
            return None
        return ok if out is None and ok is not None else out
