"""The driver's side of stopping a sweep cleanly: ``sweep stop``, a time budget, failures, Ctrl-C.

Ray Tune ends a run resumably only through its SIGINT handler (trials it stops itself are final:
TERMINATED, never resumed). So every stop here goes through that handler, at a moment chosen so
that no finished work is lost: the searcher stops proposing, running trials park at their next fold
boundary (sweeps._trainable.wait_while_stopping), and once all are parked the run ends. ``now``
(``sweep stop --now``, a second Ctrl-C) ends it at once; running folds rerun on resume. With no
trial running (a stop between trials, or as the last running ones end) StoppableSearch ends it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from ray import tune
from ray.tune.search import Searcher, SearchGenerator

from sweeps.folder import SweepFolder, read_stop_request, read_trial_record, request_stop
from sweeps.spec import format_duration

#: Seconds between the driver's looks at the stop request, the budget and the failures.
POLL_S = 1.0

SignalHandler = Callable[[int, FrameType | None], Any]


class StopControl(tune.Callback):
    """Ends the Ray Tune run resumably when the sweep is asked to stop or a limit is reached."""

    def __init__(
        self, folder: SweepFolder, *, time_budget_s: float | None = None, max_failed_trials: int | None = None
    ) -> None:
        self.folder = folder
        self.time_budget_s = time_budget_s
        self.max_failed_trials = max_failed_trials
        self.started = time.monotonic()
        self.reason: str | None = None
        self._tune_handler: SignalHandler | None = None
        self._last_poll = 0.0
        self._announced = False
        self._triggered = False

    def setup(
        self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None, **info: Any
    ) -> None:
        """Put a graceful first Ctrl-C in front of Tune's handler (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        current = signal.getsignal(signal.SIGINT)
        if callable(current):
            self._tune_handler = current
            signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        pending = read_stop_request(self.folder)
        if pending is None:
            request_stop(self.folder, "interrupted (Ctrl-C)")
            print(
                "\n[segsweep] stopping: no new trials; running trials stop at the end of their current fold "
                "(Ctrl-C again to stop now; their running folds then rerun on resume)",
                flush=True,
            )
            return
        request_stop(self.folder, pending.reason, now=True)
        self._trigger(pending.reason)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._triggered or time.monotonic() - self._last_poll < POLL_S:
            return
        self._last_poll = time.monotonic()
        self._check_limits(trials)
        request = read_stop_request(self.folder)
        if request is None:
            return
        running = [t for t in trials if t.status == "RUNNING"]
        parked = [t for t in running if read_trial_record(self.folder.trial_dir(t.trial_id)).parked]
        if not self._announced:
            self._announced = True
            print(
                f"[segsweep] stopping ({request.reason}): no new trials; "
                + (
                    "ending now"
                    if request.now
                    else f"waiting for {len(running)} running trial(s) to finish their current fold"
                ),
                flush=True,
            )
        if request.now or len(parked) == len(running):
            self._trigger(request.reason)

    def _check_limits(self, trials: list[Any]) -> None:
        if read_stop_request(self.folder) is not None:
            return
        if self.time_budget_s is not None and time.monotonic() - self.started >= self.time_budget_s:
            request_stop(self.folder, f"time budget of {format_duration(self.time_budget_s)} reached")
        failed = sum(t.status == "ERROR" for t in trials)
        if self.max_failed_trials is not None and failed >= self.max_failed_trials:
            request_stop(self.folder, f"{failed} trials failed (--max-failures {self.max_failed_trials})")

    def _trigger(self, reason: str) -> None:
        self.reason = reason
        if self._triggered:
            return
        self._triggered = True
        if self._tune_handler is not None:
            self._tune_handler(signal.SIGINT, None)  # Tune saves its state and leaves trials resumable
        else:
            signal.raise_signal(signal.SIGINT)


class StoppableSearch(SearchGenerator):
    """Tune's wrapper of the searcher, reporting the search finished while the sweep is stopping.

    With no trial running or pending, Tune waits inside one step, up to ten minutes and with no
    callback called, for the searcher to propose a trial; the searcher proposes none while a stop is
    pending (sweeps._optuna), so a stop that came between trials waited that long. A finished search
    with every trial ended ends the run at once. Nothing of this is saved (Tune's own ``finished`` flag
    stays unset), so a resumed sweep proposes the remaining trials.
    """

    def __init__(self, searcher: Searcher, folder: SweepFolder) -> None:
        super().__init__(searcher)
        self.folder = folder

    def is_finished(self) -> bool:
        return bool(super().is_finished()) or read_stop_request(self.folder) is not None
