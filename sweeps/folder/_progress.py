"""What a running sweep is doing, read from its folder: the live view's data, and an ETA.

Trials append an ``epoch`` event after every epoch (fold, epoch, epochs, val IoU, seconds), so the
driver and ``segsweep sweep status --watch`` in another shell build the same view from the same
records. Inside an epoch a running trial rewrites its ``progress.json`` about once a second (batches
done, images/s). Running trials' events are read on each refresh; an ended trial's epoch times are
read once per process (its events no longer change) and feed the ETA with the running ones'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segsweep.base.files import write_json_atomic
from sweeps.folder._layout import EVENTS_FILE, PROGRESS_FILE, TRIAL_FILE, SweepFolder
from sweeps.folder._objective import OBJECTIVE
from sweeps.folder._records import read_events, read_spec_record, read_trial_record
from sweeps.folder._schema import TrialRecord, may_win
from sweeps.folder._sweep_results import COMPLETE, FAILED, PRUNED, RUNNING

#: The states a trial ends in, in the order the live view counts them.
ENDED_STATES = (COMPLETE, PRUNED, FAILED)


@dataclass(frozen=True)
class BatchProgress:
    """How far a running trial's current epoch is: ``batch`` of ``batches``, at ``images_per_second``."""

    fold: int
    epoch: int  # the epoch being trained (from 1)
    batch: int
    batches: int
    images_per_second: float | None


def write_batch_progress(trial_dir: Path, progress: BatchProgress) -> None:
    """progress.json of a running trial (rewritten about once a second by trainer.callbacks.BatchProgress)."""
    speed = progress.images_per_second
    write_json_atomic(
        trial_dir / PROGRESS_FILE,
        {
            "fold": progress.fold,
            "epoch": progress.epoch,
            "batch": progress.batch,
            "batches": progress.batches,
            "images_per_second": round(speed, 2) if speed is not None and math.isfinite(speed) else None,
        },
    )


def read_batch_progress(trial_dir: Path) -> BatchProgress | None:
    """A running trial's progress.json (None when absent or being replaced)."""
    import json

    try:
        raw = json.loads((trial_dir / PROGRESS_FILE).read_text())
        speed = raw.get("images_per_second")
        return BatchProgress(
            fold=int(raw["fold"]),
            epoch=int(raw["epoch"]),
            batch=int(raw["batch"]),
            batches=int(raw["batches"]),
            images_per_second=float(speed) if isinstance(speed, int | float) else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


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
    #: The epoch in training now (epoch + 1 of this fold), where its progress.json is that recent.
    batch: BatchProgress | None = None

    @property
    def label(self) -> str:
        """``#N``: the trial's number in the study, as every segsweep view names it."""
        return f"#{self.number}" if self.number is not None else self.trial_id

    @property
    def remaining_epochs(self) -> int:
        """Epochs this trial still trains if no scheduler stops it."""
        if not self.epochs or not self.n_folds:
            return 0
        # Before its first fold starts (fold 0) a trial has all folds ahead, as in fold 1 at epoch 0.
        return (self.n_folds - max(1, self.fold)) * self.epochs + (self.epochs - self.epoch)


@dataclass(frozen=True)
class SweepProgress:
    """A running sweep at one moment."""

    name: str
    trials_total: int
    ended: dict[str, int]  # trials that ended, by state (COMPLETE, PRUNED, FAILED)
    running: list[RunningTrial]
    best: tuple[str, float] | None  # (trial label, mean Dice) of the best trial that completed all folds
    epochs_per_trial: int  # folds x epochs of a trial that is not stopped early
    #: Every epoch time measured so far, of ended and running trials (the ETA's rate).
    measured_epoch_seconds: list[float] = field(default_factory=list)
    #: Trials the sweep runs at once (sweep.json's concurrency; 0 when not recorded yet).
    concurrency: int = 0

    @property
    def finished(self) -> int:
        return sum(self.ended.values())

    @property
    def finished_text(self) -> str:
        """``4/4 finished (1 complete, 3 pruned)``: the ended trials by state, in the leaderboard's words."""
        parts = ", ".join(f"{n} {state.lower()}" for state, n in self.ended.items() if n)
        return f"{self.finished}/{self.trials_total} finished" + (f" ({parts})" if parts else "")

    @property
    def eta_text(self) -> str:
        from sweeps.spec import format_duration

        eta = self.eta_seconds
        if eta == 0.0:
            return "no trial left to run"
        if eta is None:
            return "ETA after the first epoch"
        return f"ETA ~{format_duration(eta)} if no trial is pruned"

    @property
    def summary(self) -> str:
        """The live view's summary: counts, the best so far and the ETA."""
        return (
            f"{self.finished_text}, {len(self.running)} running, {self.pending} pending; "
            f"{self.best_text}; {self.eta_text}"
        )

    @property
    def best_text(self) -> str:
        return f"best {self.best[0]} Dice {self.best[1]:.4f}" if self.best else "no trial complete yet"

    def _repr_html_(self) -> str:
        """A notebook's view (``sweep.progress()``): a bar of the finished trials, one of each running
        trial's epoch (its batches), and the summary line's counts, best and ETA."""
        from html import escape

        def bar(done: float, total: float) -> str:
            return f'<progress value="{done:g}" max="{max(total, 1):g}" style="width:12em"></progress>'

        rows = []
        for trial in self.running:
            state = "STOPPING" if trial.parked else "RUNNING"
            where = f"fold {trial.fold}/{trial.n_folds or '?'}" if trial.fold else "starting"
            batch = trial.batch
            if batch is not None:
                speed = f", {batch.images_per_second:.1f} img/s" if batch.images_per_second is not None else ""
                epoch = (
                    f"epoch {batch.epoch}/{trial.epochs or '?'} {bar(batch.batch, batch.batches)} "
                    f"{batch.batch}/{batch.batches} batches{speed}"
                )
            else:
                epoch = f"epoch {trial.epoch}/{trial.epochs or '?'} done" if trial.fold else ""
            iou = f"{trial.val_iou:.4f}" if trial.val_iou is not None else "-"
            cells = [escape(trial.label), state, escape(where), epoch, iou]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        head = "".join(f"<th>{c}</th>" for c in ("trial", "state", "fold", "epoch", "val IoU"))
        table = f"<table><tr>{head}</tr>{''.join(rows)}</table>" if rows else ""
        summary = escape(self.summary)
        return f"<div><b>sweep {escape(self.name)}</b> {bar(self.finished, self.trials_total)} {summary}{table}</div>"

    @property
    def pending(self) -> int:
        return max(0, self.trials_total - self.finished - len(self.running))

    @property
    def epoch_seconds(self) -> float | None:
        """Mean epoch time over every epoch measured so far (None before the first epoch)."""
        times = self.measured_epoch_seconds
        return sum(times) / len(times) if times else None

    @property
    def eta_seconds(self) -> float | None:
        """Time left if no trial is pruned: remaining epochs spread over the sweep's slots.

        The rate is the mean of every epoch measured so far, so it does not start over when new
        trials start; the slots are the sweep's concurrency (the running trials before it is known).
        """
        if not self.running and not self.pending:
            return 0.0
        per_epoch = self.epoch_seconds
        if per_epoch is None:
            return None
        slots = max(1, self.concurrency or len(self.running))
        remaining = sum(t.remaining_epochs for t in self.running) + self.pending * self.epochs_per_trial
        return remaining * per_epoch / slots


def _seconds_since(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    try:
        return max(0.0, (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds())
    except ValueError:
        return 0.0


def _epoch_seconds(events: list[dict[str, Any]]) -> list[float]:
    return [
        float(e["seconds"]) for e in events if e.get("event") == "epoch" and isinstance(e.get("seconds"), int | float)
    ]


#: An ended trial's epoch times by (events file, size, mtime): read once, not on every refresh.
_ENDED_EPOCH_SECONDS: dict[tuple[str, int, int], list[float]] = {}


def ended_epoch_seconds(trial_dir: Path) -> list[float]:
    """The epoch times an ended trial's events hold (all its attempts), cached while its events file is unchanged."""
    path = trial_dir / EVENTS_FILE
    try:
        stat = path.stat()
    except OSError:
        return []
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _ENDED_EPOCH_SECONDS:
        _ENDED_EPOCH_SECONDS[key] = _epoch_seconds(read_events(trial_dir))
    return _ENDED_EPOCH_SECONDS[key]


def running_trial(trial_dir: Path, record: TrialRecord) -> RunningTrial:
    """Where a running trial's events leave it (its latest attempt only)."""
    events = read_events(trial_dir)
    starts = [i for i, e in enumerate(events) if e.get("event") == "attempt"]
    current = events[starts[-1] :] if starts else events
    config = record.config or {}
    fold = epoch = 0
    val_iou: float | None = None
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
    started = current[0].get("time") if current else record.started
    batch = read_batch_progress(trial_dir)
    if batch is not None and (batch.fold, batch.epoch) != (fold, epoch + 1):
        batch = None  # of an epoch that ended (or of an earlier attempt): the events are newer
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
        epoch_seconds=_epoch_seconds(events),  # every attempt's: all are measured epochs
        parked=bool(record.parked),
        batch=batch,
    )


def read_progress(folder: SweepFolder) -> SweepProgress:
    """The sweep's progress from its records (trial.json of every trial, events of the running ones)."""
    spec = read_spec_record(folder)
    ended = dict.fromkeys(ENDED_STATES, 0)
    running: list[RunningTrial] = []
    measured: list[float] = []
    best: tuple[str, float] | None = None
    epochs_per_trial = 0
    for trial_dir in folder.trial_dirs():
        record = read_trial_record(trial_dir)
        state = record.state
        config = record.config or {}
        if config:
            epochs_per_trial = max(epochs_per_trial, int(config.get("epochs") or 0) * int(record.n_folds or 0))
        if state in ENDED_STATES:
            ended[state] += 1
            measured += ended_epoch_seconds(trial_dir)
            # The trial record's running mean, not the fold files: a refresh reads one file per trial.
            recorded = getattr(record, OBJECTIVE.record_field)
            value = float(recorded) if recorded is not None else math.nan
            if may_win(state, record.all_folds_done, value) and (best is None or OBJECTIVE.better(value, best[1])):
                number = record.number
                label = f"#{number} ({trial_dir.name})" if number is not None else trial_dir.name
                best = (label, value)
        elif state == RUNNING and record.attempts:
            trial = running_trial(trial_dir, record)
            running.append(trial)
            measured += trial.epoch_seconds
    return SweepProgress(
        name=folder.name,
        trials_total=spec.trials or 0,
        ended=ended,
        running=sorted(running, key=lambda t: t.number if t.number is not None else 1 << 30),
        best=best,
        epochs_per_trial=epochs_per_trial,
        measured_epoch_seconds=measured,
        concurrency=spec.concurrency or 0,
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
