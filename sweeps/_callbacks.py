"""The driver's Ray Tune callback: trial states into trial.json, and progress a person can follow."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ray import tune

from sweeps._trainable import one_line_reason
from sweeps.folder import (
    COMPLETE,
    FAILED,
    PRUNED,
    RUNNING,
    SweepFolder,
    append_event,
    load_sweep,
    now,
    read_stop_request,
    read_trial_record,
    update_trial_record,
)


class SweepCallback(tune.Callback):
    """Writes each trial's end (COMPLETE, PRUNED by the scheduler, FAILED with its reason) and
    prints a line per fold plus the best trial so far, beside Ray's own trial table."""

    def __init__(self, sweep_dir: str | Path, name: str) -> None:
        self.sweep_dir = str(sweep_dir)
        self.name = name

    def _folder(self, trial: Any) -> Path:
        return SweepFolder(Path(self.sweep_dir)).trial_dir(trial.trial_id)

    def _label(self, trial: Any) -> str:
        number = read_trial_record(self._folder(trial)).get("number")
        return f"#{number} ({trial.trial_id})" if number is not None else trial.trial_id

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
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
        reason = _error_reason(trial)
        folder = self._folder(trial)
        update_trial_record(folder, state=RUNNING, reason=f"retrying after: {reason}")
        append_event(folder, "retry", reason=reason)
        print(f"[segsweep] trial {self._label(trial)} failed ({reason}); retrying", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        reason = _error_reason(trial)
        folder = self._folder(trial)
        update_trial_record(folder, state=FAILED, reason=reason, ended=now())
        append_event(folder, "trial_end", state=FAILED, reason=reason)
        print(f"[segsweep] trial {self._label(trial)} FAILED: {reason}", flush=True)

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
            state = PRUNED
            reason = (
                f"stopped by the scheduler after {folds_done} of {n_folds} folds "
                f"(running mean Dice {float(last.get('dice', float('nan'))):.4f})"
            )
        update_trial_record(folder, state=state, reason=reason, ended=now())
        append_event(folder, "trial_end", state=state, reason=reason)
        suffix = f": {reason}" if reason else ""
        print(f"[segsweep] trial {self._label(trial)} {state}{suffix}", flush=True)
        self._print_best()

    def _print_best(self) -> None:
        with contextlib.suppress(Exception):  # progress output must never stop a sweep
            sweep = load_sweep(Path(self.sweep_dir).parent, self.name)
            done = sweep.completed()
            finished = sum(t.state in (COMPLETE, PRUNED, FAILED) for t in sweep.trials)
            if not done:
                print(f"[segsweep] {finished}/{sweep.spec.get('trials')} trials finished; none complete yet",
                      flush=True)
                return
            best = done[0]
            params = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
            print(
                f"[segsweep] {finished}/{sweep.spec.get('trials')} trials finished; best so far: "
                f"#{best.number} Dice {best.mean['dice']:.4f} ± {best.std['dice']:.4f}, "
                f"IoU {best.mean['iou']:.4f} ({params})",
                flush=True,
            )


def interrupted_by_stop(sweep: SweepFolder, last_result: dict[str, Any] | None) -> bool:
    """Whether Tune ends an unfinished trial because the sweep is stopping (not because ASHA said so).

    Tune reports every running trial as complete when a run ends on its SIGINT path, which is how a
    sweep stops resumably; such a trial must stay RUNNING in trial.json and the study.
    """
    last = last_result or {}
    unfinished = int(last.get("folds_done") or 0) < int(last.get("n_folds") or 1 << 30)
    return unfinished and read_stop_request(sweep) is not None


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _error_reason(trial: Any) -> str:
    """One line naming the trial's latest error (from the error Ray stored for it)."""
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
