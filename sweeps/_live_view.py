"""The live view of a sweep: one line per running trial and a summary with the best so far and an ETA.

The same view serves the driver (a Tune callback) and ``segsweep sweep status NAME --watch`` in
another shell; both read the sweep folder (sweeps.folder.read_progress), so they show the same.
On a terminal it is a table redrawn in place (rich); elsewhere (logs, CI) plain lines, printed
only when something changed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

from ray import tune

from sweeps.folder import RunningTrial, SweepFolder, SweepProgress, format_value, read_progress
from sweeps.spec import format_duration

#: Seconds between refreshes of the view.
REFRESH_S = 2.0
#: In a log, the summary line comes when the counts change, and with news at most this often.
SUMMARY_EVERY_S = 10.0


def _short_params(params: dict[str, Any], width: int = 48) -> str:
    text = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
    return text if len(text) <= width else text[: width - 1] + "…"


#: The state a running trial shows: training, or parked between folds while its sweep stops.
RUNNING_SHOWN, STOPPING_SHOWN = "RUNNING", "STOPPING"


def trial_state(trial: RunningTrial) -> str:
    return STOPPING_SHOWN if trial.parked else RUNNING_SHOWN


def progress_bar(done: int, total: int, width: int = 12) -> str:
    """``[#####-------]``: ``done`` of ``total`` (an empty bar when the total is not known)."""
    filled = min(width, round(width * done / total)) if total > 0 else 0
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def epoch_progress(trial: RunningTrial) -> str:
    """The epoch in training: a bar of its batches and images/s, or what the events say."""
    batch = trial.batch
    if batch is None:
        return f"epoch {trial.epoch + 1}/{trial.epochs or '?'}" if trial.fold else "starting"
    speed = f", {batch.images_per_second:.1f} img/s" if batch.images_per_second is not None else ""
    return (
        f"epoch {batch.epoch}/{trial.epochs or '?'} {progress_bar(batch.batch, batch.batches)} "
        f"{batch.batch}/{batch.batches or '?'} batches{speed}"
    )


def trial_line(trial: RunningTrial) -> str:
    """A log's line for a trial, printed when it reaches a new epoch (the epochs it has done; a log gets
    no bar inside the epoch, which the terminal's table shows)."""
    state = "" if not trial.parked else f", {STOPPING_SHOWN} (waiting to stop)"
    if not trial.fold:
        return f"{trial.label} ({_short_params(trial.params)}): starting, {format_duration(trial.elapsed_s)}{state}"
    where = f"fold {trial.fold}/{trial.n_folds or '?'}, epoch {trial.epoch}/{trial.epochs or '?'}"
    iou = f"val IoU {trial.val_iou:.4f}" if trial.val_iou is not None else "val IoU -"
    return f"{trial.label} ({_short_params(trial.params)}): {where}, {iou}, {format_duration(trial.elapsed_s)}{state}"


def summary_line(progress: SweepProgress) -> str:
    return f"sweep {progress.name}: {progress.summary}"


class ProgressView:
    """Renders successive :class:`SweepProgress` snapshots to a terminal (live) or a log (lines)."""

    def __init__(self, out: IO[str] | None = None, *, live: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self._shown: dict[str, str] = {}
        self._summary = ""
        self._summary_at = 0.0
        self._rich: Any = None

    def show(self, progress: SweepProgress) -> None:
        if self.live:
            self._show_live(progress)
            return
        news = False
        for trial in progress.running:
            key = f"{trial.trial_id}/{trial.fold}/{trial.epoch}/{trial.parked}"
            if self._shown.get(trial.trial_id) != key:
                self._shown[trial.trial_id] = key
                news = True
                print(f"[segsweep] {trial_line(trial)}", file=self.out, flush=True)
        summary = summary_line(progress)
        # Counts and best changed, or an ETA is known for the first time: say so at once.
        counts = ";".join(summary.split(";")[:2]) + str(progress.eta_seconds is None)
        due = news and time.monotonic() - self._summary_at >= SUMMARY_EVERY_S
        if counts != self._summary or due:
            self._summary, self._summary_at = counts, time.monotonic()
            print(f"[segsweep] {summary}", file=self.out, flush=True)

    def _show_live(self, progress: SweepProgress) -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.table import Table
        from rich.text import Text

        table = Table(expand=False, show_edge=False)
        for column in ("trial", "state", "parameters", "fold", "epoch", "val IoU", "elapsed"):
            table.add_column(column)
        for trial in progress.running:
            table.add_row(
                trial.label,
                trial_state(trial),
                _short_params(trial.params, 60),
                f"{trial.fold}/{trial.n_folds or '?'}" if trial.fold else "-",
                epoch_progress(trial),
                f"{trial.val_iou:.4f}" if trial.val_iou is not None else "-",
                format_duration(trial.elapsed_s),
            )
        view = Group(table, Text(summary_line(progress)))
        if self._rich is None:
            from rich.console import Console

            # On the view's own stream (rich's default console is sys.stdout, whatever ``out`` is).
            console = Console(file=self.out, force_terminal=self.live)
            self._rich = Live(view, console=console, refresh_per_second=1, transient=False, redirect_stdout=False)
            self._rich.start()
        else:
            self._rich.update(view)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


class LiveProgress(tune.Callback):
    """The driver's live view, refreshed from the sweep folder every :data:`REFRESH_S` seconds."""

    def __init__(self, folder: SweepFolder, view_factory: Callable[[], ProgressView] = ProgressView) -> None:
        self.folder = folder
        self.view_factory = view_factory
        self._view: ProgressView | None = None
        self._last = 0.0

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self._last < REFRESH_S:
            return
        self._last = time.monotonic()
        if self._view is None:
            self._view = self.view_factory()
        try:
            self._view.show(read_progress(self.folder))
        except Exception as exc:  # the view must never stop a sweep
            print(f"[segsweep] progress view: {exc}", flush=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self._view is not None:
            self._view.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_view"] = None  # a terminal display does not survive Tune's experiment snapshot
        return state


def watch(
    folder: SweepFolder,
    *,
    out: IO[str] | None = None,
    interval_s: float = REFRESH_S,
    live: bool | None = None,
    until_done: bool = True,
) -> int:
    """``sweep status --watch``: the live view from another shell, until the driver ends (or Ctrl-C)."""
    from sweeps.folder import driver_running

    view = ProgressView(out, live=live)
    try:
        while True:
            view.show(read_progress(folder))
            if until_done and not driver_running(folder):
                return 0
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return 0
    finally:
        view.close()
