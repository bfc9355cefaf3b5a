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
it is guarded and a failure is logged.

The history (`RUN/eval/history.jsonl`, one line per scored checkpoint, written by the evaluator)
is read here too, because a resume must make it agree with the run (`TrainEvaluation.resume`):
- a resume from an older step (or a fresh start over old checkpoints) retrains the steps after
  it, so their history lines and a `best` naming one of them are dropped, and its newer
  checkpoints are moved into `checkpoints/superseded/` (`store.set_aside`: left in place, the
  newest would be what a later `--resume auto` picks), with one warning that says all of it;
- a record in the history but not in metrics.jsonl (a crash after the evaluator wrote it and
  before the trainer collected it) is written to the logs then, once;
- a checkpoint still held was handed over but never finished (a crash): it is submitted again,
  and the evaluator reuses its history line if it had written one, so a step is recorded once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from bigan.checkpoint import best as best_pointer
from bigan.checkpoint.durable import write_atomically
from bigan.checkpoint.store import SUPERSEDED, list_checkpoints, set_aside
from bigan.config import Config, crossed

log = logging.getLogger(__name__)

HOLDER = "eval"  # the name of the evaluator's holds on checkpoints
HISTORY = "history.jsonl"  # RUN/eval/HISTORY: one JSON line per scored checkpoint


def metric_key(metric: str, psi: float | None) -> str:
    """The scalar's name in metrics.jsonl / TensorBoard: eval/fid, eval/fid_psi0.7, ..."""
    return f"eval/{metric}" + ("" if psi is None else f"_psi{psi:g}")


def history_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "eval" / HISTORY


def _history_lines(path: Path) -> list[tuple[str, dict | None]]:
    """Each line of the history with its record, None for a line cut short by a crash."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        try:
            r = json.loads(line) if line.endswith("\n") else None
            ok = isinstance(r, dict) and isinstance(r.get("step"), int)
            out.append((line, r if ok else None))
        except ValueError:
            out.append((line, None))
    return out


def read_history(run_dir: str | Path) -> list[dict]:
    """The run's evaluation records by step; a step recorded twice (by a version that could)
    keeps its newest record."""
    path = history_path(run_dir)
    by_step = {r["step"]: r for _, r in _history_lines(path) if r} if path.is_file() else {}
    return [by_step[s] for s in sorted(by_step)]


def append_history(run_dir: str | Path, record: dict) -> None:
    """Add `record` as one line. After a line cut short by a kill, a newline first: the new
    record must not be glued onto the torn one (both would be unreadable)."""
    path = history_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as f:
        torn = False
        if f.seek(0, 2) > 0:
            f.seek(-1, 2)
            torn = f.read(1) != b"\n"
        f.write((b"\n" if torn else b"") + (json.dumps(record) + "\n").encode())


def drop_history_after(run_dir: str | Path, step: int) -> list[dict]:
    """Keep only the history lines of steps <= `step` (and no torn ones); the records dropped.
    Rewritten under a temporary name and renamed, like metrics.jsonl (`run_log.py`)."""
    path = history_path(run_dir)
    if not path.is_file():
        return []
    lines = _history_lines(path)
    kept = [line for line, r in lines if r and r["step"] <= step]
    if len(kept) < len(lines):
        write_atomically(path, "".join(kept).encode("utf-8"))
    return [r for _, r in lines if r and r["step"] > step]


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
                 write: Callable[[int, dict[str, float]], None], main: bool,
                 logged: Iterable[int] = ()):
        self.every_nimg = cfg.eval.every_nimg  # an exact int: 4.03 kimg is 4030 images, not 4030.0000000000005
        self.evaluator = evaluator if main else None
        self.main, self.root, self.write = main, Path(root), write
        self.run_dir = self.root.parent  # checkpoints/ and eval/ sit side by side in it
        self.logged = set(logged)  # steps whose evaluation is in metrics.jsonl (RunLog.eval_steps)
        if main and self.every_nimg and evaluator is None:
            log.warning("eval.every_kimg=%g but no evaluator was given to train(): checkpoints are "
                        "written at the evaluation steps, nothing scores them (`bigan train` "
                        "composes one)", cfg.eval.every_kimg)

    def due(self, prev_nimg: int, cur_nimg: int, last: bool) -> bool:
        """Whether the step that took the image count from prev_nimg to cur_nimg is evaluated:
        it crossed a multiple of eval.every_kimg, or it is the last. The same on every rank."""
        if not self.every_nimg:
            return False
        return last or crossed(prev_nimg, cur_nimg, self.every_nimg)

    def resume(self, step: int) -> None:
        """Before training from `step` (0: a fresh start), on the main process: drop what the
        history and `best` say of the steps after it (they are retrained), log the records the
        logs lack, and submit again what a crash left held. Guarded like every evaluator call."""
        if self.main:
            self._guarded(self._supersede_after, step)
            backlog = [r for r in self._guarded(read_history, self.run_dir) or []
                       if r["step"] not in self.logged]
            if backlog:
                log.info("logging %d evaluation record(s) of eval/%s that a crash kept out of "
                         "metrics.jsonl (steps %s)", len(backlog), HISTORY,
                         ", ".join(str(r["step"]) for r in backlog))
                self._record(backlog)
            self.resubmit_held()

    def _supersede_after(self, step: int) -> None:
        """Checkpoints after `step` are of a line this run retrains: release their holds, drop
        their history lines, move `best` off them; one warning says so, and what gets overwritten."""
        newer = [p.name for p in list_checkpoints(self.root) if best_pointer.step_of(p.name) > step]
        for name in best_pointer.held(self.root, HOLDER):
            if best_pointer.step_of(name) > step:
                best_pointer.release(self.root, name, HOLDER)
        dropped = drop_history_after(self.run_dir, step)
        moved = best_pointer.retract_after(self.root, step, read_history(self.run_dir))
        if not (newer or dropped or moved):
            return
        said = [f"training from step {step}, behind checkpoints of an earlier run"]
        if newer:
            try:  # a later `--resume auto` must not jump back to the line this run left
                set_aside(self.root, newer)
                said.append(f"moved {', '.join(newer)} to {self.root / SUPERSEDED} (kept; "
                            "`--resume auto` no longer considers them; delete them to free space)")
            except OSError as e:
                said.append(f"could not move {', '.join(newer)} out of the way ({e}): until this "
                            f"run overwrites them, `--resume auto` would resume from {newer[-1]}; "
                            f"move them into {self.root / SUPERSEDED} by hand")
        if dropped:
            said.append(f"dropped the eval/{HISTORY} records of step(s) "
                        f"{', '.join(str(r['step']) for r in dropped)}")
        if moved:
            old, new = moved
            now = (f"now {new['checkpoint']} ({new['metric']}={new['value']:.4g})" if new
                   else "removed (no earlier scored checkpoint)")
            said.append(f"best was {old['checkpoint']} ({old.get('metric')}={old.get('value')}), "
                        f"{now}")
        log.warning("; ".join(said))

    def rewind(self, step: int) -> None:
        """Training goes back to `step` in this process (a recovery's rollback): what the history
        and `best` say of the later steps is dropped, as on a resume from `step`."""
        if self.main:
            self._guarded(self._supersede_after, step)
            self.logged = {s for s in self.logged if s <= step}

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
                if int(r["step"]) in self.logged:  # e.g. a held step logged from the history
                    continue
                self.write(int(r["step"]), {**r["metrics"], "progress/kimg": float(r["kimg"])})
                self.logged.add(int(r["step"]))
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
