"""The driver's Ray Tune callback: trial states into trial.json, and progress a person can follow."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from sweeps._trainable import interrupted_by_stop, one_line_reason, pruned_reason
from sweeps.folder import (
    COMPLETE,
    FAILED,
    OBJECTIVE,
    PRUNED,
    RUNNING,
    SweepFolder,
    TrialRecord,
    append_event,
    load_sweep,
    now,
    read_trial_record,
    update_trial_record,
)


class SweepCallback(tune.Callback):
    """Writes each trial's end (COMPLETE, PRUNED by the scheduler, FAILED with its reason) and
    prints a line per fold plus the best trial so far, beside Ray's own trial table."""

    def __init__(self, sweep_dir: str | Path, name: str) -> None:
        self.sweep_dir = str(sweep_dir)
        self.name = name
        # The progress line's counts and best trial, kept as trials end: reading the whole sweep
        # folder after every trial made the driver's cost per trial grow with the sweep (once per
        # driver run it is read, to count the trials of earlier runs).
        self._progress: _Progress | None = None

    def _folder(self, trial: Any) -> Path:
        return SweepFolder(Path(self.sweep_dir)).trial_dir(trial.trial_id)

    def _label(self, trial: Any) -> str:
        number = read_trial_record(self._folder(trial)).number
        return f"#{number} ({trial.trial_id})" if number is not None else trial.trial_id

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if "folds_done" not in result:
            return
        print(
            f"[segsweep] trial {self._label(trial)}: fold {result.get('fold')} "
            f"({result['folds_done']}/{result.get('n_folds')} done) "
            f"Dice {result.get('fold_dice', float('nan')):.4f}, "
            f"running mean {result.get('dice', float('nan')):.4f}",
            flush=True,
        )

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        folder = self._folder(trial)
        reason = _error_reason(trial, read_trial_record(folder))
        update_trial_record(folder, state=RUNNING, reason=f"retrying after: {reason}")
        append_event(folder, "retry", reason=reason)
        print(f"[segsweep] trial {self._label(trial)} failed ({reason}); retrying", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        folder = self._folder(trial)
        reason = _error_reason(trial, read_trial_record(folder))
        record = update_trial_record(folder, state=FAILED, reason=reason, ended=now())
        append_event(folder, "trial_end", state=FAILED, reason=reason)
        print(f"[segsweep] trial {self._label(trial)} FAILED: {reason}", flush=True)
        self._count(trial.trial_id, record)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        folds_done, n_folds = int(last.get("folds_done") or 0), int(last.get("n_folds") or 0)
        folder = self._folder(trial)
        if interrupted_by_stop(SweepFolder(Path(self.sweep_dir)), last):
            append_event(folder, "interrupted", folds_done=folds_done)
            return  # the sweep is stopping, not the scheduler: the trial resumes with the sweep
        if n_folds and folds_done >= n_folds:
            state, reason = COMPLETE, None
        else:
            state, reason = PRUNED, pruned_reason(last, read_trial_record(folder))
        record = update_trial_record(folder, state=state, reason=reason, ended=now())
        append_event(folder, "trial_end", state=state, reason=reason)
        suffix = f": {reason}" if reason else ""
        print(f"[segsweep] trial {self._label(trial)} {state}{suffix}", flush=True)
        best = None
        if state == COMPLETE:
            best = _Best(
                float(last.get(OBJECTIVE.metric, float("nan"))),
                float(last.get("dice", float("nan"))),
                float(last.get("dice_std", float("nan"))),
                float(last.get("iou", float("nan"))),
                record.number,
                dict(record.params or {}),
            )
        self._count(trial.trial_id, record, best)
        self._print_best()

    def _count(self, trial_id: str, record: TrialRecord, best: _Best | None = None) -> None:
        with contextlib.suppress(Exception):  # progress output must never stop a sweep
            if self._progress is None:
                self._progress = _Progress.read(Path(self.sweep_dir).parent, self.name)
                return  # that read saw this trial's end already
            self._progress.finished.add(trial_id)
            so_far = self._progress.best
            if best is not None and (so_far is None or OBJECTIVE.better(best.value, so_far.value)):
                self._progress.best = best

    def _print_best(self) -> None:
        progress = self._progress
        if progress is None:
            return
        finished = f"[segsweep] {len(progress.finished)}/{progress.trials} trials finished"
        best = progress.best
        if best is None:
            print(f"{finished}; none complete yet", flush=True)
            return
        params = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
        print(
            f"{finished}; best so far: #{best.number} Dice {best.dice:.4f} ± {best.dice_std:.4f}, "
            f"IoU {best.iou:.4f} ({params})",
            flush=True,
        )


@dataclass
class _Best:
    value: float  # the objective's, which picks the best
    dice: float
    dice_std: float
    iou: float
    number: int | None
    params: dict[str, Any]


@dataclass
class _Progress:
    """Trials finished so far (ids) and the best complete one, for the progress line."""

    trials: int | None
    finished: set[str] = field(default_factory=set)
    best: _Best | None = None

    @classmethod
    def read(cls, storage: Path, name: str) -> _Progress:
        sweep = load_sweep(storage, name)
        progress = cls(sweep.spec.trials, {t.trial_id for t in sweep.trials if t.state in (COMPLETE, PRUNED, FAILED)})
        done = sweep.completed()
        if done:
            top = done[0]
            progress.best = _Best(
                top.mean[OBJECTIVE.metric],
                top.mean["dice"],
                top.std["dice"],
                top.mean["iou"],
                top.number,
                dict(top.params),
            )
        return progress


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _error_reason(trial: Any, record: TrialRecord) -> str:
    """One line naming the trial's latest error: as the trial wrote it into trial.json before raising,
    else from the error Ray stored for it (a worker that died wrote nothing; Ray may store its copy
    after this callback runs, which made the reason "unknown" now and then)."""
    written = record.fatal_reason or record.error
    if written:
        return str(written)
    with contextlib.suppress(Exception):
        error = trial.get_pickled_error()
        if error is not None:
            return one_line_reason(error)
    with contextlib.suppress(Exception):
        text = trial.get_error()
        if text:
            lines = [line.strip() for line in str(text).splitlines() if line.strip()]
            if lines:
                return lines[-1][:300]
    return "unknown error (see the trial's error.txt under ray/)"
