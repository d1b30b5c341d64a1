"""What a caller that drives many runs (a hyperparameter search) may ask of one training run.

Light at import (no torch): `tunelab.auto.tune` builds hooks before any training library is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class RunHooks:
    """ON_EPOCH_END(epoch, validation_metrics) is called after each epoch's validation, so a search can
    report the curve to its pruner and stop a hopeless trial by raising (e.g. `optuna.TrialPruned`; the run
    then ends there, leaving its checkpoints). SCORE_TEST false keeps the test split unscored: a search
    chooses among trials by validation and scores test once, on the winner, so that test stays unbiased."""

    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None
    score_test: bool = True

    def epoch_end(self, epoch: int, validation: dict[str, Any]) -> None:
        """Call ON_EPOCH_END when set (EPOCH counts from 1)."""
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch, validation)

    def held_out(self) -> tuple[str, ...]:
        """The held-out splits the run scores after training: validation, and test unless told not to."""
        return ("validation", "test") if self.score_test else ("validation",)
