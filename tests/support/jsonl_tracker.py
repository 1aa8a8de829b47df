"""A stand-in tracker: every life-cycle call as one JSON line in ``tracker.jsonl``.

What a new tracker is: this one module (a :class:`TrackerBackend`) plus one ``register_tracker``
line. A sweep's runs all append to the sweep folder's file; a run outside a sweep to its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from trainer.reporter import COMPLETE, INTERRUPTED, RUNNING, FoldPreview
from trainer.tracking import TrackerBackend

if TYPE_CHECKING:
    from trainer.config import CVConfig
    from trainer.results import CVResult, FoldResult

LOG_FILE = "tracker.jsonl"


def _append(path: Path, event: str, **fields: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write(json.dumps({"event": event, **fields}, sort_keys=True, default=str) + "\n")


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class JsonLinesTracker(TrackerBackend):
    """Runs as lines of a JSON-lines file; a run's end state as the line ``run_end``."""

    name = "JSON lines"
    key = "jsonl"
    files: ClassVar[Mapping[str, str]] = {"log": LOG_FILE}

    def __init__(self, *, log: Path, run_name: str, params: Mapping[str, Any], parent_run: str | None) -> None:
        super().__init__()
        self.log, self.run_name, self.params, self.parent_run = log, run_name, dict(params), parent_run
        self.state: str | None = None

    @classmethod
    def for_run(
        cls,
        *,
        root: Path,
        run_name: str,
        params: Mapping[str, Any],
        sweep_name: str | None,
        parent: Mapping[str, Any] | None,
    ) -> JsonLinesTracker:
        del sweep_name
        log = Path(parent["log"]) if parent else Path(root) / LOG_FILE
        return cls(log=log, run_name=run_name, params=params, parent_run=parent["run"] if parent else None)

    @classmethod
    def start_sweep(cls, root: Path, sweep_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        log = Path(root).resolve() / LOG_FILE
        _append(log, "sweep_start", run=sweep_name, params=dict(params))
        return {"log": str(log), "run": sweep_name}

    @classmethod
    def finish_sweep(cls, part: Mapping[str, Any], sweep_name: str, summary: Mapping[str, Any]) -> None:
        _append(Path(part["log"]), "sweep_end", run=sweep_name, state=COMPLETE, summary=dict(summary))

    def _write(self, event: str, **fields: Any) -> None:
        _append(self.log, event, run=self.run_name, **fields)

    def _cv_start(self, config: CVConfig, n_folds: int, out_dir: Path) -> None:
        del config, out_dir
        self.state = RUNNING
        self._write("run_start", parent=self.parent_run, n_folds=n_folds, params=self.params)

    def _fold_start(self, fold: int, n_train: int, n_val: int) -> None:
        self._write("fold_start", fold=fold, n_train=n_train, n_val=n_val)

    def _epoch(self, fold: int, epoch: int, metrics: Mapping[str, float]) -> None:
        self._write("epoch", fold=fold, epoch=epoch, metrics={k: float(v) for k, v in metrics.items()})

    def _fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None:
        self._write("fold_end", fold=result.fold, dice=result.dice, done=len(completed), preview=preview is not None)

    def _cv_end(self, result: CVResult) -> None:
        self._end(COMPLETE, "", mean_dice=result.mean["dice"])

    def _cv_incomplete(self, state: str, reason: str) -> None:
        self._end(state, reason)

    def _end(self, state: str, reason: str, **fields: Any) -> None:
        self.state = state
        self._write("run_end", state=state, reason=reason, **fields)

    def _close(self) -> None:
        if self.state == RUNNING:  # neither complete, pruned nor failed: interrupted
            self._end(INTERRUPTED, "interrupted before the run ended")
        self.state = None
