"""The reporter interface: how a cross-validation tells the outside world what it is doing.

The worker calls a reporter after every epoch and every fold. The sweep adapts it to Ray Tune
(``tune.report``), trackers (MLflow, Neptune) implement it as sinks, and the CLI prints with it.
A reporter must not raise for a tracking failure: trackers warn and carry on (see trainer.tracking).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trainer.config import CVConfig
    from trainer.results import CVResult, EpochRecord, FoldResult

#: How a run ended, as trackers record it (and the sweep folder's trial states, which use these):
#: every fold done; stopped after a finished fold by a scheduler (its finished folds stand); an
#: error; or an interruption (Ctrl-C, a killed worker, a sweep stopping to resume later).
RUNNING, COMPLETE, PRUNED, FAILED, INTERRUPTED = "RUNNING", "COMPLETE", "PRUNED", "FAILED", "INTERRUPTED"


class StoppedEarly(SystemExit):
    """Raised by a reporter whose scheduler ended the run after a finished fold (a sweep pruned the
    trial). A SystemExit, as the scheduler's own stop is: it ends the run's thread, not the program.
    The cross-validation tells its reporters the run ended PRUNED and lets it propagate."""

    def __init__(self, reason: str) -> None:
        super().__init__(0)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class FoldPreview:
    """A few validation images of a fold with their true masks and predicted probabilities."""

    stems: tuple[str, ...]
    images: np.ndarray  # (k, S, S, 3) uint8 RGB
    true_masks: np.ndarray  # (k, S, S) uint8 0/1
    probabilities: np.ndarray  # (k, S, S) float32 in [0, 1]


class Reporter:
    """Base class with no-op hooks; subclass and override what you need."""

    def on_cv_start(self, config: CVConfig, n_folds: int, out_dir: Path) -> None:
        """Called once, before the first fold (also when resuming)."""

    def on_fold_start(self, fold: int, n_train: int, n_val: int) -> None:
        """Called before a fold trains. ``fold`` counts from 1."""

    def on_epoch(self, fold: int, epoch: int, metrics: Mapping[str, float]) -> None:
        """Called after every epoch with loss, val_loss, val_iou and lr. ``epoch`` counts from 1."""

    def on_batch(self, fold: int, epoch: int, batch: int, batches: int, images_per_second: float) -> None:
        """Called during an epoch, about once a second (trainer.callbacks.BatchProgress): ``batch``
        of ``batches`` done, at ``images_per_second`` so far in the epoch."""

    def on_fold_resumed(self, fold: int, history: list[EpochRecord]) -> None:
        """Called after on_fold_start when the fold goes on from an epoch checkpoint: ``history`` holds
        the epochs trained before (on_epoch follows for the rest)."""

    def on_fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None:
        """Called after a fold is scored and written; ``completed`` includes it."""

    def on_cv_end(self, result: CVResult) -> None:
        """Called once when every fold is done."""

    def on_cv_incomplete(self, state: str, reason: str) -> None:
        """Called instead of on_cv_end when the run ends early: ``state`` PRUNED (a reporter raised
        StoppedEarly after a finished fold) or FAILED (an error; ``reason`` is its one line). An
        interruption calls nothing: close() then finds the run open and records it INTERRUPTED."""

    def close(self) -> None:
        """Release resources (tracker runs, files). Called even when the run fails."""


class MultiReporter(Reporter):
    """Forwards every call to several reporters in order."""

    def __init__(self, reporters: Iterable[Reporter]) -> None:
        self.reporters = list(reporters)

    def on_cv_start(self, config: CVConfig, n_folds: int, out_dir: Path) -> None:
        for r in self.reporters:
            r.on_cv_start(config, n_folds, out_dir)

    def on_fold_start(self, fold: int, n_train: int, n_val: int) -> None:
        for r in self.reporters:
            r.on_fold_start(fold, n_train, n_val)

    def on_epoch(self, fold: int, epoch: int, metrics: Mapping[str, float]) -> None:
        for r in self.reporters:
            r.on_epoch(fold, epoch, metrics)

    def on_batch(self, fold: int, epoch: int, batch: int, batches: int, images_per_second: float) -> None:
        for r in self.reporters:
            r.on_batch(fold, epoch, batch, batches, images_per_second)

    def on_fold_resumed(self, fold: int, history: list[EpochRecord]) -> None:
        for r in self.reporters:
            r.on_fold_resumed(fold, history)

    def on_fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None:
        for r in self.reporters:
            r.on_fold_end(result, completed, preview)

    def on_cv_end(self, result: CVResult) -> None:
        for r in self.reporters:
            r.on_cv_end(result)

    def on_cv_incomplete(self, state: str, reason: str) -> None:
        for r in self.reporters:
            r.on_cv_incomplete(state, reason)

    def close(self) -> None:
        for r in self.reporters:
            r.close()
