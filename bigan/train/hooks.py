"""The seam between the training loop and whatever launched it.

`train(cfg, hooks)` calls these at fixed points; launchers (Ray, a test, a notebook) subclass
`TrainHooks` and override what they need, so the trainer never imports ray or knows who watches.
"""

from __future__ import annotations

from pathlib import Path


class TrainHooks:
    """No-op defaults; every method is called on every process (check the rank yourself)."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Scalars logged at every `train.log_every_kimg` (losses, images/s, data position)."""

    def on_checkpoint(self, path: Path, step: int) -> None:
        """A complete checkpoint was written (already atomic and verified-on-read); every rank
        gets the same path."""

    def should_stop(self, step: int) -> bool:
        """Return True to stop after this step; the trainer then writes a final checkpoint. The
        answers are agreed across ranks (any rank saying True stops them all at this step), so
        one rank never leaves the others waiting in the next collective."""
        return False
