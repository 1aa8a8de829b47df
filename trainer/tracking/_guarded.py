"""A tracker never stops a run: its first failure warns once and switches it off.

Trackers are sinks; the trainer's own ``cv.json`` is the source of truth. A full disk, a locked
database or a server that went away must cost the tracking, not the trial.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from segsweep.base.secrets import redact_text
from trainer.reporter import FoldPreview, Reporter

if TYPE_CHECKING:
    from trainer.config import CVConfig
    from trainer.results import CVResult, EpochRecord, FoldResult


class TrackingWarning(UserWarning):
    """A tracker failed and stopped logging; the run itself goes on."""


def warn_tracking(message: str) -> None:
    warnings.warn(redact_text(message), TrackingWarning, stacklevel=3)


class GuardedTracker(Reporter):
    """Reporter hooks that call the tracker's ``_``-prefixed implementations under a guard."""

    name = "tracker"

    def __init__(self) -> None:
        self.failed: str | None = None

    def _guard(self, what: str, call: Callable[[], None]) -> None:
        if self.failed is not None:
            return
        try:
            call()
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            warn_tracking(
                f"{self.name} tracking stopped after an error while {what} ({self.failed}); "
                "the run goes on and its results are in cv.json"
            )
            self._abandon()

    def _abandon(self) -> None:
        """Release what can be released after a failure, without raising."""
        with contextlib.suppress(Exception):
            self._close()

    def on_cv_start(self, config: CVConfig, n_folds: int, out_dir: Path) -> None:
        self._guard("starting the run", lambda: self._cv_start(config, n_folds, out_dir))

    def on_fold_start(self, fold: int, n_train: int, n_val: int) -> None:
        self._guard(f"starting fold {fold}", lambda: self._fold_start(fold, n_train, n_val))

    def on_epoch(self, fold: int, epoch: int, metrics: Mapping[str, float]) -> None:
        self._guard(f"logging epoch {epoch} of fold {fold}", lambda: self._epoch(fold, epoch, metrics))

    def on_fold_resumed(self, fold: int, history: list[EpochRecord]) -> None:
        # The fold's run gets the epochs trained before the checkpoint, so its curves are whole.
        for record in history:
            metrics = {"loss": record.loss, "val_loss": record.val_loss, "val_iou": record.val_iou, "lr": record.lr}
            self.on_epoch(fold, record.epoch, metrics)

    def on_fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None:
        self._guard(f"logging fold {result.fold}", lambda: self._fold_end(result, completed, preview))

    def on_cv_end(self, result: CVResult) -> None:
        self._guard("finishing the run", lambda: self._cv_end(result))

    def on_cv_incomplete(self, state: str, reason: str) -> None:
        self._guard(f"recording the run as {state}", lambda: self._cv_incomplete(state, reason))

    def close(self) -> None:
        try:
            self._close()
        except Exception as exc:
            if self.failed is None:
                warn_tracking(f"{self.name} tracking could not close cleanly ({type(exc).__name__}: {exc})")
            self.failed = self.failed or str(exc)

    # Implementations (no-ops by default).
    def _cv_start(self, config: CVConfig, n_folds: int, out_dir: Path) -> None: ...
    def _fold_start(self, fold: int, n_train: int, n_val: int) -> None: ...
    def _epoch(self, fold: int, epoch: int, metrics: Mapping[str, float]) -> None: ...
    def _fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None: ...
    def _cv_end(self, result: CVResult) -> None: ...
    def _cv_incomplete(self, state: str, reason: str) -> None: ...
    def _close(self) -> None: ...
