"""What a running sweep is doing, read from its folder: the live view's data, and an ETA.

Trials append an ``epoch`` event after every epoch (fold, epoch, epochs, val IoU, seconds), so the
driver and ``segsweep sweep status --watch`` in another shell build the same view from the same
records. Only running trials' events are read on each refresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sweeps.folder._layout import TRIAL_FILE, SweepFolder
from sweeps.folder._objective import OBJECTIVE
from sweeps.folder._records import read_events, read_spec_record, read_trial_record
from sweeps.folder._schema import TrialRecord, may_win
from sweeps.folder._sweep_results import COMPLETE, FAILED, PRUNED, RUNNING


@dataclass(frozen=True)
class RunningTrial:
    """One running trial where its events leave it: fold k of K, epoch e of E."""

    trial_id: str
    number: int | None
    params: dict[str, Any]
    fold: int
    n_folds: int
    epoch: int
    epochs: int
    val_iou: float | None
    elapsed_s: float
    epoch_seconds: list[float] = field(default_factory=list)
    parked: bool = False

    @property
    def remaining_epochs(self) -> int:
        """Epochs this trial still trains if no scheduler stops it."""
        if not self.epochs or not self.n_folds:
            return 0
        return (self.n_folds - self.fold) * self.epochs + (self.epochs - self.epoch)


@dataclass(frozen=True)
class SweepProgress:
    """A running sweep at one moment."""

    name: str
    trials_total: int
    finished: int
    running: list[RunningTrial]
    best: tuple[str, float] | None  # (trial label, mean Dice) of the best trial that completed all folds
    epochs_per_trial: int  # folds x epochs of a trial that is not stopped early

    @property
    def pending(self) -> int:
        return max(0, self.trials_total - self.finished - len(self.running))

    @property
    def epoch_seconds(self) -> float | None:
        """Mean measured epoch time over the running trials (None before the first epoch)."""
        times = [t for trial in self.running for t in trial.epoch_seconds]
        return sum(times) / len(times) if times else None

    @property
    def eta_seconds(self) -> float | None:
        """Time left if no trial is pruned: remaining epochs spread over the running slots."""
        per_epoch = self.epoch_seconds
        if per_epoch is None:
            return None
        slots = max(1, len(self.running))
        remaining = sum(t.remaining_epochs for t in self.running) + self.pending * self.epochs_per_trial
        return remaining * per_epoch / slots


def _seconds_since(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    try:
        return max(0.0, (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds())
    except ValueError:
        return 0.0


def running_trial(trial_dir: Path, record: TrialRecord) -> RunningTrial:
    """Where a running trial's events leave it (its latest attempt only)."""
    events = read_events(trial_dir)
    starts = [i for i, e in enumerate(events) if e.get("event") == "attempt"]
    current = events[starts[-1] :] if starts else events
    config = record.config or {}
    fold = epoch = 0
    val_iou: float | None = None
    epoch_seconds: list[float] = []
    epochs = int(config.get("epochs") or 0)
    for event in current:
        kind = event.get("event")
        if kind == "fold_start":  # a new fold: its own epochs and IoU from here
            fold, epoch, val_iou = int(event.get("fold") or 0), 0, None
        elif kind == "epoch":
            fold, epoch = int(event.get("fold") or fold), int(event.get("epoch") or 0)
            epochs = int(event.get("epochs") or epochs)
            value = event.get("val_iou")
            val_iou = float(value) if isinstance(value, int | float) and math.isfinite(value) else val_iou
            if isinstance(event.get("seconds"), int | float):
                epoch_seconds.append(float(event["seconds"]))
    started = current[0].get("time") if current else record.started
    return RunningTrial(
        trial_id=trial_dir.name,
        number=record.number,
        params=dict(record.params or {}),
        fold=fold,
        n_folds=int(record.n_folds or config.get("folds") or 0),
        epoch=epoch,
        epochs=epochs,
        val_iou=val_iou,
        elapsed_s=_seconds_since(started),
        epoch_seconds=epoch_seconds,
        parked=bool(record.parked),
    )


def read_progress(folder: SweepFolder) -> SweepProgress:
    """The sweep's progress from its records (trial.json of every trial, events of the running ones)."""
    spec = read_spec_record(folder)
    finished = 0
    running: list[RunningTrial] = []
    best: tuple[str, float] | None = None
    epochs_per_trial = 0
    for trial_dir in folder.trial_dirs():
        record = read_trial_record(trial_dir)
        state = record.state
        config = record.config or {}
        if config:
            epochs_per_trial = max(epochs_per_trial, int(config.get("epochs") or 0) * int(record.n_folds or 0))
        if state in (COMPLETE, PRUNED, FAILED):
            finished += 1
            # The trial record's running mean, not the fold files: a refresh reads one file per trial.
            recorded = getattr(record, OBJECTIVE.record_field)
            value = float(recorded) if recorded is not None else math.nan
            if may_win(state, record.all_folds_done, value) and (best is None or OBJECTIVE.better(value, best[1])):
                number = record.number
                label = f"#{number} ({trial_dir.name})" if number is not None else trial_dir.name
                best = (label, value)
        elif state == RUNNING and record.attempts:
            running.append(running_trial(trial_dir, record))
    return SweepProgress(
        name=folder.name,
        trials_total=spec.trials or 0,
        finished=finished,
        running=sorted(running, key=lambda t: t.number if t.number is not None else 1 << 30),
        best=best,
        epochs_per_trial=epochs_per_trial,
    )


@dataclass(frozen=True)
class SweepSummary:
    """One line of ``segsweep sweep list``."""

    name: str
    state: str  # running, finished, stopped, interrupted
    detail: str  # why it stopped, or who runs it
    finished: int
    asked: int
    best_dice: float | None
    started: str | None
    last_update: str | None
    path: str


def summarise_sweep(folder: SweepFolder) -> SweepSummary:
    """State, counts, best Dice and times of a sweep, from its records (no fold files read)."""
    from sweeps.folder._control import driver_info, driver_running

    spec = read_spec_record(folder)
    last = spec.runs[-1] if spec.runs else {}
    if driver_running(folder):
        info = driver_info(folder)
        state, detail = "running", f"driver pid {info.get('pid')} on {info.get('host')}"
    elif last.get("finished"):
        state, detail = "finished", str(last.get("exhausted") or "")
    elif last.get("stopped"):
        state, detail = "stopped", str(last["stopped"])
    else:
        state, detail = "interrupted", "the driver ended without finishing (resume it)"
    finished, best = 0, None
    mtimes = [folder.spec_file.stat().st_mtime]
    for trial_dir in folder.trial_dirs():
        record = read_trial_record(trial_dir)
        with_mtime = trial_dir / TRIAL_FILE
        if with_mtime.is_file():
            mtimes.append(with_mtime.stat().st_mtime)
        if record.state in (COMPLETE, PRUNED, FAILED):
            finished += 1
        recorded = getattr(record, OBJECTIVE.record_field)
        value = float(recorded) if recorded is not None else math.nan
        if may_win(record.state, record.all_folds_done, value):
            best = value if best is None or OBJECTIVE.better(value, best) else best
    last_update = datetime.fromtimestamp(max(mtimes), UTC).isoformat(timespec="seconds")
    return SweepSummary(
        name=folder.name,
        state=state,
        detail=detail,
        finished=finished,
        asked=spec.trials or 0,
        best_dice=best,
        started=spec.created,
        last_update=last_update,
        path=str(folder.path),
    )
