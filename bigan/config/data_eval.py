"""The data and evaluation sections: `data:` (what the trainer reads: shards or an in-memory
set; read by `bigan/data/`) and `eval:` (scoring checkpoints while training and picking
`checkpoints/best`; read by `bigan/train/evaluation.py` and `bigan/eval/run_evaluator.py`).

A field's trailing comment is its documentation; `validate(prefix)` checks one section alone and
`EvalConfig.check_against` what depends on `model:` and `data:` (called by `Config.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bigan.config.vocabulary import (
    DATA_SOURCES,
    EVAL_METRICS,
    EVAL_MODES,
    UNREADABLE_SHARD_ACTIONS,
    _one_of,
    _positive,
    _require,
)
from bigan.config.units import nimg_property
from bigan.onnx_metadata import MAX_TRUNCATION, MIN_TRUNCATION  # the one psi range

if TYPE_CHECKING:
    from bigan.config.model import ModelConfig


@dataclass
class DataConfig:
    source: str = "digits"  # shards (WebDataset, see `path`) | in-memory: digits | synthetic | gaussian-ring | gaussian-grid
    path: str = ""  # shards: directory holding dataset.json and shard-*.tar, or a URL (s3://, gs://, https://, file://), brace pattern (.../shard-{000000..000009}.tar) or pipe:CMD; docs/training.md
    num_workers: int = 2  # shards: DataLoader worker processes per training process
    shuffle_buffer: int = 1000  # shards: samples in each shard's shuffle buffer (0 = tar order)
    verify: bool = False  # shards: check every shard's sha256 before training
    read_retries: int = 5  # shards at a URL: failed reads in a row retried (and counted) before a shard is given up
    retry_backoff_sec: float = 1.0  # ... the first wait between retries; doubles per retry (jittered), at most 30 s
    on_unreadable_shard: str = "skip"  # a shard given up: skip (count its samples, name it in the log) | stop (fail the run)
    num_samples: int = 10_000  # synthetic / gaussian sets: how many samples to make
    flip: bool = False  # random horizontal flip
    seed: int = 0  # seed of the generated sets (not of the data order, see train.seed)

    def validate(self, prefix: str = "data") -> None:
        _one_of(f"{prefix}.source", self.source, DATA_SOURCES)
        _positive(f"{prefix}.num_samples", self.num_samples)
        _positive(f"{prefix}.num_workers", self.num_workers, zero_ok=True)
        _positive(f"{prefix}.shuffle_buffer", self.shuffle_buffer, zero_ok=True)
        _positive(f"{prefix}.read_retries", self.read_retries, zero_ok=True)
        _require(self.retry_backoff_sec >= 0, f"{prefix}.retry_backoff_sec",
                 self.retry_backoff_sec, "must be >= 0")
        _one_of(f"{prefix}.on_unreadable_shard", self.on_unreadable_shard,
                UNREADABLE_SHARD_ACTIONS)
        _require(self.source != "shards" or bool(self.path), f"{prefix}.path", self.path,
                 "data.source=shards needs the shard directory (see `bigan data pack`)")


@dataclass
class EvalConfig:
    """Evaluation while training (`bigan/train/evaluation.py` + `bigan/eval/run_evaluator.py`):
    at every `every_kimg` the trainer writes a checkpoint and hands it to an evaluator, which
    scores its EMA generator and writes the results back at that step; `checkpoints/best` names
    the best one by `best_metric`."""

    every_kimg: float = 0.0  # thousands of real images between evaluations (0 = off), a whole number of steps; always also at the end
    n: int = 1000  # generated (and real) images per evaluation; FID is biased upwards at small N
    metrics: list[str] = field(default_factory=lambda: ["fid"])  # fid | kid | precision | recall | class_accuracy | is | intra_fid
    extractor: str = "inception"  # inception (the FID network) | path to a domain classifier .safetensors | a TorchScript Inception .pt
    data: str = ""  # real shards to compare with ("" = data.path when data.source=shards)
    psi: list[float | None] = field(default_factory=lambda: [None])  # truncation values to score at (null = none); best_metric is read at the first
    best_metric: str = "fid"  # the metric that picks checkpoints/best (one of `metrics`)
    best_direction: str = ""  # min | max ("" = the metric's own: min for fid, kid, intra_fid; max for the rest)
    mode: str = "process"  # process: beside training in its own process (`bigan launch`: a Ray actor) | blocking: inside the loop (single-core machines)
    threads: int = 1  # torch threads of the evaluator process
    seed: int = 0  # seed of the first generated sample (sample i: class i mod K, seed + i)
    cache_dir: str = ""  # real-feature cache ("" = $BIGAN_CACHE_DIR/real-features or ~/.cache/bigan/real-features)

    def validate(self, prefix: str = "eval") -> None:
        _positive(f"{prefix}.every_kimg", self.every_kimg, zero_ok=True)
        _require(self.n >= 4, f"{prefix}.n", self.n, "must be >= 4 (precision/recall use k=3 neighbours)")
        _require(bool(self.metrics), f"{prefix}.metrics", self.metrics, "name at least one metric")
        for m in self.metrics:
            _one_of(f"{prefix}.metrics", m, tuple(EVAL_METRICS))
        _require(len(set(self.metrics)) == len(self.metrics), f"{prefix}.metrics", self.metrics,
                 "lists a metric twice")
        classifier = self.extractor.endswith(".safetensors")
        _require(self.extractor == "inception" or classifier or self.extractor.endswith(".pt"),
                 f"{prefix}.extractor", self.extractor, "must be 'inception', a domain classifier "
                 "file (.safetensors, `bigan eval train-classifier`) or a TorchScript Inception (.pt)")
        _require(classifier or "class_accuracy" not in self.metrics, f"{prefix}.metrics",
                 self.metrics, "class_accuracy needs a domain classifier as eval.extractor")
        _require(self.extractor != "inception" or "is" not in self.metrics, f"{prefix}.metrics",
                 self.metrics, "is (Inception Score) needs logits; the default Inception FID "
                 "network has none: use a classifier or an Inception .pt with a logits output")
        _require(bool(self.psi), f"{prefix}.psi", self.psi, "name at least one value (null = none)")
        for v in self.psi:
            _require(v is None or (not isinstance(v, bool) and isinstance(v, (int, float))
                                   and MIN_TRUNCATION <= v <= MAX_TRUNCATION),
                     f"{prefix}.psi", self.psi,
                     f"each value must be a psi in [{MIN_TRUNCATION:g}, {MAX_TRUNCATION:g}] or null")
        _require(len(set(self.psi)) == len(self.psi), f"{prefix}.psi", self.psi, "lists a value twice")
        _require(self.best_metric in self.metrics, f"{prefix}.best_metric", self.best_metric,
                 f"must be one of eval.metrics ({', '.join(self.metrics)})")
        _one_of(f"{prefix}.best_direction", self.best_direction, ("", "min", "max"))
        natural = EVAL_METRICS.get(self.best_metric)
        _require(self.best_direction in ("", natural), f"{prefix}.best_direction",
                 self.best_direction, f"{self.best_metric} is better when "
                 f"{'lower' if natural == 'min' else 'higher'}: use {natural} (or leave it empty)")
        _one_of(f"{prefix}.mode", self.mode, EVAL_MODES)
        _positive(f"{prefix}.threads", self.threads)

    every_nimg = nimg_property("every_kimg")

    @property
    def direction(self) -> str:
        """min or max: which way `best_metric` improves."""
        return self.best_direction or EVAL_METRICS[self.best_metric]

    def check_against(self, model: ModelConfig, data: DataConfig, prefix: str = "eval") -> None:
        """Cross-section checks, only when evaluation is on: real shards to compare with, an
        image model, classes for the per-class metrics."""
        if not self.every_kimg:
            return
        _require(bool(self.data) or data.source == "shards", f"{prefix}.data", self.data,
                 f"evaluation compares with real shards: set eval.data (`bigan data pack`), or "
                 f"train on shards (data.source={data.source!r} is in memory)")
        _require(model.arch != "mlp", f"{prefix}.every_kimg", self.every_kimg,
                 "image metrics need an image model; the 2-D mlp is scored by bench/quality.py")
        for m in ("class_accuracy", "intra_fid"):
            _require(m not in self.metrics or model.num_classes > 1, f"{prefix}.metrics",
                     self.metrics, f"{m} needs a class-conditional model (model.num_classes > 1)")

    def real_shards(self, data: DataConfig) -> str:
        """The shard directory the evaluation compares with."""
        return self.data or data.path
