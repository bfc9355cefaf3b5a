"""Checkpoints that pruning must keep: the `best` pointer and holds.

`<root>/best` is a small JSON file naming the best checkpoint by an evaluation metric
(`{"checkpoint": "step-NNNNNNNN", "metric": "fid", "value": 12.3, "direction": "min", ...}`). It
is replaced like `latest`: written to `best.tmp`, fsynced, then `os.replace`d over the old one, so
a crash at any moment leaves either the old or the new pointer, never half of one. A *hold*
(`<root>/holds/<step-dir>.<holder>`, an empty file) says that someone still needs a checkpoint:
the evaluator beside training holds each checkpoint it has been handed until it has scored it, so
a fast-moving `train.keep_ckpts` cannot delete it first; holds left by a crash tell a resumed run
what was never scored. `store._prune` keeps whatever `protected(root)` names. A resume from an
older step retracts a `best` that names a later, about to be retrained, checkpoint
(`retract_after`): its score no longer describes the weights that will be in that directory.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from bigan.checkpoint.checks import STEP_DIR
from bigan.checkpoint.durable import write_atomically

log = logging.getLogger(__name__)

BEST = "best"
HOLDS = "holds"
_HOLDER = re.compile(r"^[a-z][a-z0-9_-]*$")


class BestPointerError(RuntimeError):
    """`best` is missing or unreadable; the message says what to do."""


def better(value: float, than: float | None, direction: str) -> bool:
    """Whether `value` improves on `than` (None: nothing yet) when `direction` is min or max.
    A tie keeps the older checkpoint (strict comparison)."""
    if than is None:
        return True
    return value < than if direction == "min" else value > than


def read_best(root: str | Path) -> dict | None:
    """The `best` record of a checkpoints root, or None when there is none (or it is unreadable,
    which is logged: the next evaluation writes a fresh one)."""
    path = Path(root) / BEST
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s is unreadable (%s); ignoring it", path, e)
        return None
    if not isinstance(record, dict) or not STEP_DIR.match(str(record.get("checkpoint", ""))):
        log.warning("%s does not name a step-* checkpoint; ignoring it", path)
        return None
    return record


def write_best(root: str | Path, record: dict) -> None:
    """Point `best` at `record["checkpoint"]` (a step-* directory name under root) atomically."""
    root = Path(root)
    if not STEP_DIR.match(str(record.get("checkpoint", ""))):
        raise ValueError(f"best record must name a step-* directory, got {record.get('checkpoint')!r}")
    write_atomically(root / BEST, (json.dumps(record, indent=1) + "\n").encode())


def offer_best(root: str | Path, record: dict, direction: str) -> bool:
    """Make `record` the best if its `value` beats the current best's (same metric); True if it
    did. The caller is the only writer of `best` in a run (the evaluator), so read-compare-write
    needs no lock."""
    current = read_best(root)
    same_metric = current is not None and current.get("metric") == record["metric"]
    if same_metric and (Path(root) / current["checkpoint"]).is_dir() \
            and not better(record["value"], current.get("value"), direction):
        return False
    write_best(root, {**record, "direction": direction})
    return True


def step_of(name: str) -> int:
    """The step of a step-NNNNNNNN directory name."""
    m = STEP_DIR.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a step-* directory name")
    return int(m.group(1))


def retract_after(root: str | Path, step: int,
                  records: list[dict]) -> tuple[dict, dict | None] | None:
    """A run resumed from `step` retrains the checkpoints after it. If `best` names one of
    them, point it at the best of `records` (evaluation history records: step, kimg, checkpoint,
    metrics) at or before `step` whose directory exists, by the same metric and direction, or
    remove it when none qualifies. (old, new or None) when `best` changed, None when it stood."""
    root = Path(root)
    current = read_best(root)
    if current is None or step_of(current["checkpoint"]) <= step:
        return None
    metric, direction = current.get("metric"), current.get("direction", "min")
    new = None
    for r in sorted(records, key=lambda r: r["step"]):  # a tie keeps the older, as offer_best does
        value = r.get("metrics", {}).get(metric)
        name = str(r.get("checkpoint", ""))
        if (r["step"] <= step and isinstance(value, (int, float)) and math.isfinite(value)
                and STEP_DIR.match(name) and (root / name).is_dir()
                and (new is None or better(value, new["value"], direction))):
            new = {"checkpoint": r["checkpoint"], "step": r["step"], "kimg": r.get("kimg"),
                   "metric": metric, "value": value, "direction": direction}
    if new is None:
        (root / BEST).unlink(missing_ok=True)
    else:
        write_best(root, new)
    return current, new


def best_checkpoint(root: str | Path) -> Path:
    """The checkpoint directory `best` names; BestPointerError when there is none."""
    root = Path(root)
    record = read_best(root)
    if record is None:
        raise BestPointerError(f"{root} has no readable {BEST} pointer: it is written by the "
                               "evaluation during training (eval.every_kimg > 0)")
    path = root / record["checkpoint"]
    if not path.is_dir():
        raise BestPointerError(f"{root / BEST} names {record['checkpoint']}, which is missing")
    return path


def hold(root: str | Path, checkpoint: str | Path, holder: str) -> Path:
    """Keep `checkpoint` (a step-* directory under root) from being pruned until `release`."""
    name = Path(checkpoint).name
    if not STEP_DIR.match(name) or not _HOLDER.match(holder):
        raise ValueError(f"cannot hold {name!r} for {holder!r}")
    path = Path(root) / HOLDS / f"{name}.{holder}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def release(root: str | Path, checkpoint: str | Path, holder: str) -> None:
    (Path(root) / HOLDS / f"{Path(checkpoint).name}.{holder}").unlink(missing_ok=True)


def held(root: str | Path, holder: str | None = None) -> list[str]:
    """Step-* names held (by `holder`, or by anyone), sorted by step."""
    folder = Path(root) / HOLDS
    if not folder.is_dir():
        return []
    names = set()
    for p in folder.iterdir():
        name, _, who = p.name.partition(".")
        if STEP_DIR.match(name) and (holder is None or who == holder):
            names.add(name)
    return sorted(names)


def protected(root: str | Path) -> set[str]:
    """Step-* names pruning must keep: the best checkpoint and every held one."""
    # Holds first, then `best`: the evaluator writes `best` before it releases its hold on the
    # checkpoint it scored, so a checkpoint that is no longer held when the holds are read is
    # already named by the `best` read after them. Read the other way round, the evaluator's
    # two writes could both land between the reads, and the new best would be pruned.
    names = set(held(root))
    record = read_best(root)
    return names | ({record["checkpoint"]} if record else set())
