"""Experiment trackers (MLflow, Neptune, any registered backend) as reporter sinks of a cross-validation.

Public face::

    reporter = open_trackers("mlflow,neptune", root=out_dir, run_name="trial_0001", params=config.to_dict())
    run_cv(config, data, out_dir, reporter)

    ctx = start_sweep_tracking("mlflow,neptune", root=sweep_dir, sweep_name="s1", params=spec)
    # ... each trial, in any process: open_trackers(None, root=trial_dir, ..., parent=ctx)
    finish_sweep_tracking(ctx, summary)

A sweep is a parent run, each trial a child run, each fold a child of its trial (MLflow nests runs;
Neptune records the sweep in each trial run and folds as namespaces). Trackers are sinks: a failing
tracker warns once and the run goes on; nothing reads them back. Tokens and passwords are never
logged (see ``segsweep.base.secrets``).

Each tracker is a backend class (``trainer.tracking._backend.TrackerBackend``: the run's and the
sweep's life cycle, the files it owns, its default) registered below with one line; everything here
iterates the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import segsweep.base.env  # noqa: F401
from segsweep.base.errors import ConfigError
from segsweep.base.secrets import redact_params
from segsweep.base.suggest import did_you_mean
from trainer.reporter import MultiReporter, Reporter
from trainer.tracking._backend import (
    TRACKER_BACKENDS,
    TrackerBackend,
    register_tracker,
    tracker_files,
    tracker_help,
)
from trainer.tracking._context import TrackingContext
from trainer.tracking._guarded import GuardedTracker, TrackingWarning, warn_tracking
from trainer.tracking._mlflow import MlflowTracker
from trainer.tracking._neptune import NeptuneTracker

__all__ = [
    "TRACKER_BACKENDS",
    "GuardedTracker",
    "TrackerBackend",
    "TrackingContext",
    "TrackingWarning",
    "finish_sweep_folder_tracking",
    "finish_sweep_tracking",
    "open_trackers",
    "parse_tracker_names",
    "register_tracker",
    "start_sweep_tracking",
    "sweep_tracking",
    "tracker_files",
    "tracker_help",
    "tracker_names",
]

# The trackers, one line each (a new tracker: its module, then its line here).
register_tracker(MlflowTracker)
register_tracker(NeptuneTracker)

#: The sweep's tracking context, kept in the sweep folder for every trial and for resume.
CONTEXT_FILE = "tracking.json"


def tracker_names() -> tuple[str, ...]:
    """Every registered tracker's ``--tracker`` word."""
    return tuple(TRACKER_BACKENDS)


def parse_tracker_names(names: str | None) -> tuple[str, ...]:
    """``"mlflow,neptune"`` -> the trackers; ``"none"`` -> none; None -> the default.

    The default is each tracker that is on by default (MLflow, plus Neptune when ``NEPTUNE_PROJECT``
    is set: see ``TrackerBackend.default_when``).
    """
    if names is None:
        return tuple(key for key, backend in TRACKER_BACKENDS.items() if backend.is_default())
    chosen: list[str] = []
    for raw in names.split(","):
        name = raw.strip().lower()
        if name in ("", "none"):
            continue
        if name not in TRACKER_BACKENDS:
            raise ConfigError(
                f"unknown tracker {raw.strip()!r}; {did_you_mean(name, [*TRACKER_BACKENDS, 'none'])}"
                f"use a comma-separated list of {', '.join(TRACKER_BACKENDS)}, or none"
            )
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def _context_backends(ctx: TrackingContext) -> list[type[TrackerBackend]]:
    """The backends of the trackers a sweep's context names (one this version lacks warns and is left out)."""
    backends = []
    for key in ctx.trackers:
        if key in TRACKER_BACKENDS:
            backends.append(TRACKER_BACKENDS[key])
        else:
            warn_tracking(f"the sweep's tracker {key!r} is not one of {', '.join(TRACKER_BACKENDS)}: left out")
    return backends


def open_trackers(
    names: str | None,
    *,
    root: Path,
    run_name: str,
    params: dict[str, Any],
    parent: TrackingContext | None = None,
) -> Reporter:
    """A reporter that logs one cross-validation to the named trackers.

    ``root`` is the run's folder (a trial's folder in a sweep). Without ``parent`` each tracker's store
    is in ``root`` (MLflow: ``root/mlflow.db`` or ``MLFLOW_TRACKING_URI``; Neptune: ``root/.neptune``);
    with the sweep's ``parent`` context, the run is a child of the sweep's run in the sweep's stores.
    ``names`` None means the parent's trackers in a sweep, else the default (see
    :func:`parse_tracker_names`).
    """
    if names is None and parent is not None:
        backends = _context_backends(parent)
    else:
        backends = [TRACKER_BACKENDS[key] for key in parse_tracker_names(names)]
    params = redact_params(params)  # every backend gets them redacted (MLflow's and Neptune's redact again)
    trackers: list[Reporter] = [
        backend.for_run(
            root=Path(root),
            run_name=run_name,
            params=params,
            sweep_name=parent.sweep_name if parent else None,
            parent=parent.part(backend.key) if parent else None,
        )
        for backend in backends
    ]
    if not trackers:
        return Reporter()
    return trackers[0] if len(trackers) == 1 else MultiReporter(trackers)


def start_sweep_tracking(names: str | None, root: Path, sweep_name: str, params: Mapping[str, Any]) -> TrackingContext:
    """Open the sweep's parent runs and return the context each trial opens its trackers with.

    A tracker that cannot start warns and is left out of the context; the sweep goes on. Calling
    this again for the same sweep folder (resume) reuses the sweep's runs where the tracker can.
    """
    parts: dict[str, dict[str, Any]] = {}
    params = redact_params(params)
    for key in parse_tracker_names(names):
        backend = TRACKER_BACKENDS[key]
        try:
            parts[key] = backend.start_sweep(Path(root), sweep_name, params)
        except Exception as exc:
            warn_tracking(
                f"{backend.name} tracking is off for this sweep: could not start its run ({type(exc).__name__}: {exc})"
            )
    return TrackingContext(trackers=tuple(parts), sweep_name=sweep_name, parts=parts)


def finish_sweep_tracking(ctx: TrackingContext, summary: Mapping[str, Any]) -> None:
    """Log the sweep's summary (best trial, counts, ...) to its parent runs and close them."""
    summary = redact_params(summary)
    for backend in _context_backends(ctx):
        try:
            backend.finish_sweep(ctx.part(backend.key) or {}, ctx.sweep_name, summary)
        except Exception as exc:
            warn_tracking(f"{backend.name} could not record the sweep's summary ({type(exc).__name__}: {exc})")


def sweep_tracking(
    sweep_dir: Path, names: str | None, sweep_name: str, params: Mapping[str, Any], *, keep_open: bool = False
) -> TrackingContext:
    """The sweep's tracking context: read from ``SWEEP/tracking.json``, or started and written there.

    Whichever process asks first (the driver before its trials, or else the first trial) opens the
    sweep's parent runs, under a file lock so that concurrent trials open them once. A resumed sweep
    finds its context and keeps logging under the same parent runs. ``keep_open`` keeps the sweep's
    Neptune run open in this process until :func:`finish_sweep_tracking` (the driver); otherwise it
    is closed at once and the summary goes to a second sweep-level run.
    """
    import fcntl

    from segsweep.base.files import write_json_atomic

    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / CONTEXT_FILE
    with (sweep_dir / f".{CONTEXT_FILE}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return TrackingContext.from_json(path.read_text())
        ctx = start_sweep_tracking(names, sweep_dir, sweep_name, params)
        write_json_atomic(path, ctx.to_dict())
    if not keep_open:
        for backend in _context_backends(ctx):
            try:
                backend.release_sweep(ctx.part(backend.key) or {})
            except Exception as exc:
                warn_tracking(f"{backend.name} could not close the sweep's run ({type(exc).__name__}: {exc})")
    return ctx


def finish_sweep_folder_tracking(sweep_dir: Path, summary: Mapping[str, Any]) -> None:
    """:func:`finish_sweep_tracking` for the context kept in ``SWEEP/tracking.json`` (if any)."""
    path = Path(sweep_dir) / CONTEXT_FILE
    if path.is_file():
        finish_sweep_tracking(TrackingContext.from_json(path.read_text()), summary)
