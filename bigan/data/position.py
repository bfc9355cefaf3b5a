"""Where a shard loader stands in its data order, and what it skipped: both go into checkpoints.

`LoaderPosition` is the resume state of `bigan.data.loader.ShardLoader`: for each epoch not yet
finished, for each shard, how long a prefix of that shard's keyed sample order has been consumed
(delivered in a batch the trainer used, or skipped as bad). Epochs whose shards are all consumed
collapse into `complete_epochs`, so the state stays small however long the run. Ranks keep their
own positions (each sees only its batches); `merge` unites them before a checkpoint is written.

`SkipCounter` adds up the per-batch skip counts the loader's streams report, for logging.
Plain Python: the checkpoint code and the CLI can import this without torch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoaderPosition:
    shard_sizes: list[int]  # samples per shard (dataset.json); identifies the pack
    seed: int = 0  # data-order seed the prefixes refer to
    shuffle_buffer: int = 1000  # in-shard shuffle buffer the prefixes refer to
    complete_epochs: int = 0  # every epoch < this one has been consumed in full
    epochs: dict[int, dict[int, int]] = field(default_factory=dict)  # epoch -> shard -> prefix

    def prefix(self, epoch: int, shard: int) -> int:
        """Samples of `shard`'s order in `epoch` already consumed."""
        if epoch < self.complete_epochs:
            return self.shard_sizes[shard]
        return self.epochs.get(epoch, {}).get(shard, 0)

    def update(self, batch: dict) -> None:
        """Record a batch the trainer consumed (its `progress` rows: epoch, shard, end)."""
        rows = batch["progress"]
        for epoch, shard, end in rows.tolist() if hasattr(rows, "tolist") else rows:
            self._advance(int(epoch), int(shard), int(end))
        self._compact()

    def _advance(self, epoch: int, shard: int, end: int) -> None:
        if epoch < self.complete_epochs:
            return
        per_shard = self.epochs.setdefault(epoch, {})
        per_shard[shard] = max(per_shard.get(shard, 0), end)

    def _compact(self) -> None:
        while True:
            done = self.epochs.get(self.complete_epochs, {})
            if any(done.get(k, 0) < n for k, n in enumerate(self.shard_sizes)):
                return
            self.epochs.pop(self.complete_epochs, None)
            self.complete_epochs += 1

    def merge(self, other: LoaderPosition) -> LoaderPosition:
        """The union of two ranks' positions (each shard's longer prefix); a new object."""
        self.check_matches(other.shard_sizes, other.seed, other.shuffle_buffer, "the other rank")
        out = LoaderPosition(list(self.shard_sizes), self.seed, self.shuffle_buffer,
                             max(self.complete_epochs, other.complete_epochs))
        for source in (self, other):
            for epoch, shards in source.epochs.items():
                for shard, end in shards.items():
                    out._advance(epoch, shard, end)
        out._compact()
        return out

    @property
    def consumed(self) -> int:
        """Sample positions consumed since the start of the run (delivered + skipped)."""
        partial = sum(min(end, self.shard_sizes[k]) for shards in self.epochs.values()
                      for k, end in shards.items())
        return self.complete_epochs * sum(self.shard_sizes) + partial

    def check_matches(self, shard_sizes: list[int], seed: int, shuffle_buffer: int,
                      where: str) -> None:
        from bigan.data.sources import DataError

        if list(shard_sizes) != list(self.shard_sizes):
            raise DataError(f"the saved data position is for a pack of {len(self.shard_sizes)} "
                            f"shards / {sum(self.shard_sizes)} samples, but {where} has "
                            f"{len(shard_sizes)} shards / {sum(shard_sizes)} samples: resume "
                            "with the same shards, or start the data order afresh")
        if (seed, shuffle_buffer) != (self.seed, self.shuffle_buffer):
            raise DataError(f"the saved data position was recorded with seed={self.seed}, "
                            f"shuffle_buffer={self.shuffle_buffer}, not seed={seed}, "
                            f"shuffle_buffer={shuffle_buffer} ({where}): the order would differ")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (string keys) for the checkpoint manifest."""
        return {"shard_sizes": list(self.shard_sizes), "seed": self.seed,
                "shuffle_buffer": self.shuffle_buffer, "complete_epochs": self.complete_epochs,
                "epochs": {str(e): {str(k): n for k, n in sorted(s.items())}
                           for e, s in sorted(self.epochs.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderPosition:
        return cls([int(n) for n in data["shard_sizes"]], int(data["seed"]),
                   int(data["shuffle_buffer"]), int(data["complete_epochs"]),
                   {int(e): {int(k): int(n) for k, n in s.items()}
                    for e, s in data.get("epochs", {}).items()})


@dataclass
class SkipCounter:
    """Running totals of skipped samples by cause, fed from each batch's `skipped` dict."""

    counts: Counter = field(default_factory=Counter)

    def add(self, batch_or_counts: dict) -> None:
        counts = batch_or_counts.get("skipped", batch_or_counts)
        for cause, n in counts.items():
            if isinstance(n, int) and n:
                self.counts[cause] += n

    def merge(self, other: SkipCounter) -> SkipCounter:
        return SkipCounter(self.counts + other.counts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def __str__(self) -> str:
        return ", ".join(f"{c}={n}" for c, n in sorted(self.counts.items())) or "none"
