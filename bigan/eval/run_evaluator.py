"""Evaluation beside training, the evaluator's side: score the checkpoints a run hands over.

`RunScorer` scores one checkpoint (`bigan.train.evaluation.EvalJob`) with the code of `bigan
eval`: its EMA generator draws `eval.n` class-balanced images at each `eval.psi`
(`generated_features`), one extractor (`eval.extractor`) turns them and the real shards into
features (the real side from the per-data-set cache), and `score` computes `eval.metrics`. It then
records: one line in `RUN/eval/history.jsonl` (metrics and the FID protocol), `checkpoints/best`
moved when the best metric improved, `RUN/eval/metrics.png` redrawn from the whole history, and
the checkpoint's hold released. A failure becomes an error record, never an exception. A
checkpoint handed over again after a crash that its history line already describes is not scored
again: the line is reused, so each step is in the history once.

Two evaluators run it, both behind the trainer's `Evaluator` seam: `ProcessEvaluator`, a spawned
process with its own torch threads that takes jobs from a queue while training goes on, and
`BlockingEvaluator`, which scores inside `submit` (machines with one core, where a second process
only competes with training). Both call the same `RunScorer.record`, so they give the same numbers.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import queue
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from bigan import pictures
from bigan.checkpoint import best as best_pointer
from bigan.config import Config
from bigan.eval.errors import EvalError
from bigan.train.evaluation import HISTORY, HOLDER, EvalJob, append_history, metric_key, read_history
from bigan.train.process_lifetime import die_with_parent

log = logging.getLogger(__name__)

__all__ = ["HISTORY", "BlockingEvaluator", "ProcessEvaluator", "RunScorer", "make_evaluator",
           "metric_key", "read_history"]  # HISTORY, metric_key, read_history: bigan.train.evaluation
CURVES = "metrics.png"
_SCORE_NAMES = {"is": ("inception_score", "domain_inception_score")}  # eval.metrics -> score() keys


def make_extractor(spec: str):
    """The extractor `eval.extractor` names; EvalError (naming the field) when its file is missing."""
    from bigan.eval.features import ClassifierExtractor, InceptionExtractor

    if spec != "inception" and not Path(spec).is_file():
        raise EvalError(f"eval.extractor={spec!r} does not exist; pass an existing classifier "
                        "(.safetensors) or TorchScript Inception (.pt) file, or 'inception'")
    if spec.endswith(".safetensors"):
        return ClassifierExtractor(spec)
    return InceptionExtractor(None if spec == "inception" else spec)


class RunScorer:
    """Scores checkpoints of one run; the extractor and the real features are loaded once."""

    def __init__(self, cfg: Config, run_dir: str | Path):
        self.ec, self.data = cfg.eval, cfg.eval.real_shards(cfg.data)
        self.dir = Path(run_dir) / "eval"
        self.extractor = make_extractor(self.ec.extractor)
        self._real: dict | None = None

    def real(self) -> dict:
        from bigan.eval.real_data import cached_real_features

        if self._real is None:
            self._real = cached_real_features(self.data, self.extractor, self.ec.n,
                                              self.ec.cache_dir or None, log=log.info)
        return self._real

    def score(self, job: EvalJob) -> dict:
        """{"metrics": {key: value}, "protocol": {...}} of the checkpoint `job` names."""
        from bigan.eval.evaluate import generated_features, protocol, score
        from bigan.generation import open_sampler

        sampler, real, e = open_sampler(job.checkpoint), self.real(), self.extractor
        which = set(self.ec.metrics)
        values, protocols = {}, {}
        for psi in self.ec.psi:
            fake = generated_features(sampler, [e], self.ec.n, psi, self.ec.seed)[e.name]
            s = score(real, fake, e, which=which)
            for m in self.ec.metrics:
                found = [s[k] for k in _SCORE_NAMES.get(m, (m,)) if k in s]
                if not found:
                    raise EvalError(f"eval.metrics asks for {m}, which {e.name} cannot give "
                                    "(Inception Score needs an extractor with logits)")
                values[metric_key(m, psi)] = float(found[0])
            protocols[f"psi={psi}"] = protocol(self.data, e, real["n"], self.ec.n, psi, self.ec.seed)
        return {"metrics": values, "protocol": protocols}

    def record(self, job: EvalJob) -> dict:
        """Score `job` and record it (history line, best pointer, curves PNG, hold released);
        the record for the trainer, or {"step", "error"} when anything failed."""
        root = Path(job.checkpoint).parent
        t0 = time.perf_counter()
        try:
            record = self._recorded(job)
            if record is None:
                record = {"step": job.step, "kimg": job.kimg,
                          "checkpoint": Path(job.checkpoint).name, **self.score(job),
                          "seconds": round(time.perf_counter() - t0, 3)}
                append_history(self.dir.parent, record)
            for after in (lambda: self._offer_best(root, record), self._draw):
                try:  # the numbers are recorded: they still go back to the trainer
                    after()
                except Exception as exc:  # noqa: BLE001
                    log.warning("after scoring %s: %s: %s", record["checkpoint"],
                                type(exc).__name__, exc)
            return {k: record[k] for k in ("step", "kimg", "metrics")}
        except Exception as exc:  # noqa: BLE001 - reported to the trainer, which logs it
            log.debug("evaluation of %s failed:\n%s", job.checkpoint, traceback.format_exc())
            return {"step": job.step, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            best_pointer.release(root, job.checkpoint, HOLDER)

    def _recorded(self, job: EvalJob) -> dict | None:
        """The history line of `job`'s checkpoint if one was written (a crash before its hold
        was released), else None. A resume from an earlier step has dropped the lines of the
        steps it retrains (`TrainEvaluation.resume`), so a line found here describes the weights
        in that directory now."""
        name = Path(job.checkpoint).name
        found = next((r for r in read_history(self.dir.parent)
                      if r["step"] == job.step and r.get("checkpoint") == name), None)
        if found is not None:
            log.info("%s was scored before a crash; its history line stands", name)
        return found

    def _offer_best(self, root: Path, record: dict) -> None:
        key = metric_key(self.ec.best_metric, self.ec.psi[0])
        value = record["metrics"][key]
        if math.isfinite(value) and best_pointer.offer_best(
                root, {"checkpoint": record["checkpoint"], "step": record["step"],
                       "kimg": record["kimg"], "metric": key, "value": value}, self.ec.direction):
            log.info("best %s so far: %s = %.4f", record["checkpoint"], key, value)

    def _draw(self) -> None:
        history = read_history(self.dir.parent)
        best = best_pointer.read_best(self.dir.parent / "checkpoints")
        try:
            pictures.metric_curves_png(
                {k: [(r["kimg"], r["metrics"][k]) for r in history if k in r["metrics"]]
                 for k in history[-1]["metrics"]},
                self.dir / CURVES, best=best and (best["metric"], best["kimg"], best["value"]))
        except ImportError as e:  # matplotlib is in the eval extra
            log.warning("no %s (%s): pip install 'bigan[eval]'", self.dir / CURVES, e)


class BlockingEvaluator:
    """Scores inside `submit`: training waits, but no second process competes for the cores."""

    def __init__(self, cfg: Config, run_dir: str | Path):
        self.cfg, self.run_dir = cfg, run_dir
        self._scorer: RunScorer | None = None
        self._done: list[dict] = []

    def submit(self, job: EvalJob) -> None:
        if self._scorer is None:
            self._scorer = RunScorer(self.cfg, self.run_dir)
        self._done.append(self._scorer.record(job))

    def results(self) -> list[dict]:
        out, self._done = self._done, []
        return out

    def close(self) -> list[dict]:
        return self.results()


def _serve(cfg: Config, run_dir: str, jobs, done) -> None:
    """The evaluator process: score jobs from `jobs` until None, putting records on `done`."""
    # A trainer killed outright (the OOM killer) must not leave its evaluator writing the run;
    # the parent's pid is known, so a trainer that died while this process started counts too.
    die_with_parent(mp.parent_process().pid)
    import torch

    os.environ["TQDM_DISABLE"] = "1"  # one progress bar on the terminal: training's
    logging.basicConfig(level=logging.INFO, format="%(levelname)s evaluator: %(message)s")
    torch.set_num_threads(cfg.eval.threads)
    scorer = None
    while (item := jobs.get()) is not None:
        job = EvalJob(**item)
        try:
            scorer = scorer or RunScorer(cfg, run_dir)
            done.put(scorer.record(job))
        except Exception as exc:  # noqa: BLE001 - e.g. the extractor cannot load
            best_pointer.release(Path(job.checkpoint).parent, job.checkpoint, HOLDER)
            done.put({"step": job.step, "error": f"{type(exc).__name__}: {exc}"})


class ProcessEvaluator:
    """Scores in a spawned process beside training (started at the first job). If the process
    dies, its unfinished jobs come back as errors and the next job starts a new one."""

    def __init__(self, cfg: Config, run_dir: str | Path, close_timeout_s: float | None = None):
        self.cfg, self.run_dir, self.close_timeout_s = cfg, str(run_dir), close_timeout_s
        self._ctx = mp.get_context("spawn")  # no fork of a process holding torch threads
        self._proc = None
        self._pending: dict[int, EvalJob] = {}

    def _start(self) -> None:
        self._jobs, self._done = self._ctx.Queue(), self._ctx.Queue()
        self._proc = self._ctx.Process(target=_serve, name="bigan-evaluator", daemon=True,
                                       args=(self.cfg, self.run_dir, self._jobs, self._done))
        self._proc.start()

    def submit(self, job: EvalJob) -> None:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._pending[job.step] = job
        self._jobs.put(asdict(job))

    def _take(self, timeout: float | None) -> dict | None:
        try:
            r = self._done.get(timeout=timeout) if timeout else self._done.get_nowait()
        except queue.Empty:
            return None
        self._pending.pop(r["step"], None)
        return r

    def _lost(self) -> list[dict]:
        """Error records for the jobs of a process that died."""
        code = self._proc.exitcode
        lost = [{"step": s, "error": f"the evaluator process exited with code {code}"}
                for s in self._pending]
        self._pending.clear()
        return lost

    def results(self) -> list[dict]:
        if self._proc is None:
            return []
        out = []
        while (r := self._take(None)) is not None:
            out.append(r)
        if self._pending and not self._proc.is_alive():
            out += [r for r in iter(lambda: self._take(0.2), None)] + self._lost()
        return out

    def close(self) -> list[dict]:
        """Wait for every job (up to close_timeout_s, None: no limit), then stop the process."""
        if self._proc is None:
            return []
        self._jobs.put(None)
        out, deadline = [], None if self.close_timeout_s is None else time.monotonic() + self.close_timeout_s
        while self._pending and (deadline is None or time.monotonic() < deadline):
            r = self._take(1.0)
            if r is not None:
                out.append(r)
            elif not self._proc.is_alive():
                out += [r for r in iter(lambda: self._take(0.2), None)]
                break
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.terminate()
        out += self._lost()
        self._proc = None
        return out


def make_evaluator(cfg: Config, run_dir: str | Path | None = None):
    """The evaluator `cfg.eval` asks for, or None when evaluation is off. The extractor file and
    the real shards are checked now (EvalError naming the field), before training starts."""
    from bigan.data.shards import read_index
    from bigan.data.sources import DataError

    if not cfg.eval.every_kimg:
        return None
    if cfg.eval.extractor != "inception" and not Path(cfg.eval.extractor).is_file():
        make_extractor(cfg.eval.extractor)  # raises the message
    if cfg.eval.extractor == "inception":
        from bigan.eval.features import INCEPTION_HELP, default_inception_weights

        if default_inception_weights() is None:
            raise EvalError(f"eval.extractor=inception but no Inception FID weights are installed. "
                            f"{INCEPTION_HELP}")
    shards = cfg.eval.real_shards(cfg.data)
    try:
        read_index(shards)
    except DataError as e:
        raise EvalError(f"eval.data / data.path {shards!r}: {e}") from e
    run_dir = run_dir or cfg.train.out_dir
    if cfg.eval.mode == "blocking":
        return BlockingEvaluator(cfg, run_dir)
    return ProcessEvaluator(cfg, run_dir)
