"""Experiment trackers (MLflow, Neptune) as reporter sinks of a cross-validation.

Public face::

    reporter = open_trackers("mlflow,neptune", root=out_dir, run_name="trial_0001", params=config.to_dict())
    run_cv(config, data, out_dir, reporter)

    ctx = start_sweep_tracking("mlflow,neptune", root=sweep_dir, sweep_name="s1", params=spec)
    # ... each trial, in any process: open_trackers(None, root=trial_dir, ..., parent=ctx)
    finish_sweep_tracking(ctx, summary)

A sweep is a parent run, each trial a child run, each fold a child of its trial (MLflow nests runs;
Neptune records the sweep in each trial run and folds as namespaces). Trackers are sinks: a failing
tracker warns once and the run goes on; nothing reads them back. Tokens and passwords are never
logged (see ``trainer.tracking._secrets``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trainer._env  # noqa: F401
from trainer.errors import ConfigError
from trainer.reporting import MultiReporter, Reporter
from trainer.tracking._context import TrackingContext
from trainer.tracking._guarded import GuardedTracker, TrackingWarning, warn_tracking
from trainer.tracking._secrets import redact_params, redact_text

if TYPE_CHECKING:
    from neptune import Run

__all__ = [
    "TRACKERS",
    "GuardedTracker",
    "TrackingContext",
    "TrackingWarning",
    "finish_sweep_folder_tracking",
    "finish_sweep_tracking",
    "open_trackers",
    "parse_tracker_names",
    "redact_params",
    "redact_text",
    "start_sweep_tracking",
    "sweep_tracking",
]

TRACKERS: tuple[str, ...] = ("mlflow", "neptune")
#: The sweep's tracking context, kept in the sweep folder for every trial and for resume.
CONTEXT_FILE = "tracking.json"

# The sweep's own Neptune run stays open in the driver between start and finish (Neptune offline
# cannot reopen a run by id), keyed by the sweep's data directory.
_OPEN_SWEEP_RUNS: dict[str, tuple[Run, str]] = {}


def parse_tracker_names(names: str | None) -> tuple[str, ...]:
    """``"mlflow,neptune"`` -> the trackers; ``"none"`` -> none; None -> the default.

    The default is MLflow, plus Neptune when ``NEPTUNE_PROJECT`` is set.
    """
    if names is None:
        return ("mlflow", "neptune") if os.environ.get("NEPTUNE_PROJECT") else ("mlflow",)
    chosen: list[str] = []
    for raw in names.split(","):
        name = raw.strip().lower()
        if name in ("", "none"):
            continue
        if name not in TRACKERS:
            raise ConfigError(
                f"unknown tracker {raw.strip()!r}; use a comma-separated list of {', '.join(TRACKERS)}, or none"
            )
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def open_trackers(
    names: str | None,
    *,
    root: Path,
    run_name: str,
    params: dict[str, Any],
    parent: TrackingContext | None = None,
    neptune_mode: str | None = None,
) -> Reporter:
    """A reporter that logs one cross-validation to the named trackers.

    ``root`` is the run's folder (a trial's folder in a sweep). Without ``parent`` the MLflow store is
    ``root/mlflow.db`` (or ``MLFLOW_TRACKING_URI``) and Neptune writes ``root/.neptune``; with the
    sweep's ``parent`` context, the run is a child of the sweep's run in the sweep's stores. ``names``
    None means the parent's trackers in a sweep, else the default (see :func:`parse_tracker_names`).
    """
    chosen = parent.trackers if names is None and parent is not None else parse_tracker_names(names)
    root = Path(root)
    trackers: list[Reporter] = []
    for name in chosen:
        if name == "mlflow":
            from trainer.tracking._mlflow import MlflowTracker

            use_parent = parent is not None and parent.mlflow_tracking_uri is not None
            trackers.append(
                MlflowTracker(
                    root=root,
                    run_name=run_name,
                    params=params,
                    tracking_uri=parent.mlflow_tracking_uri if use_parent and parent else None,
                    experiment_id=parent.mlflow_experiment_id if use_parent and parent else None,
                    parent_run_id=parent.mlflow_parent_run_id if use_parent and parent else None,
                )
            )
        elif name == "neptune":
            from trainer.tracking._neptune import NeptuneTracker

            in_sweep = parent is not None and parent.neptune_data_dir is not None
            trackers.append(
                NeptuneTracker(
                    root=root,
                    run_name=run_name,
                    params=params,
                    mode=neptune_mode or (parent.neptune_mode if in_sweep and parent else None),
                    project=parent.neptune_project if in_sweep and parent else None,
                    data_dir=Path(parent.neptune_data_dir) if in_sweep and parent and parent.neptune_data_dir else None,
                    sweep_name=parent.sweep_name if parent else None,
                    sweep_id=parent.neptune_sweep_id if in_sweep and parent else None,
                )
            )
    if not trackers:
        return Reporter()
    return trackers[0] if len(trackers) == 1 else MultiReporter(trackers)


def start_sweep_tracking(
    names: str | None,
    root: Path,
    sweep_name: str,
    params: Mapping[str, Any],
    *,
    neptune_mode: str | None = None,
) -> TrackingContext:
    """Open the sweep's parent runs and return the context each trial opens its trackers with.

    A tracker that cannot start warns and is left out of the context; the sweep goes on. Calling
    this again for the same sweep folder (resume) reuses the MLflow sweep run.
    """
    chosen = parse_tracker_names(names)
    root = Path(root)
    values: dict[str, Any] = {"sweep_name": sweep_name}
    started: list[str] = []
    if "mlflow" in chosen:
        from trainer.tracking import _mlflow

        try:
            uri, experiment_id, run_id = _mlflow.start_sweep_run(root, sweep_name, params)
        except Exception as exc:
            warn_tracking(
                f"MLflow tracking is off for this sweep: could not start its run ({type(exc).__name__}: {exc})"
            )
        else:
            values.update(mlflow_tracking_uri=uri, mlflow_experiment_id=experiment_id, mlflow_parent_run_id=run_id)
            started.append("mlflow")
    if "neptune" in chosen:
        from trainer.tracking import _neptune

        mode = _neptune.resolve_mode(neptune_mode)
        project = os.environ.get("NEPTUNE_PROJECT")
        try:
            run, mode, data_dir = _neptune.start_sweep_run(
                root=root, sweep_name=sweep_name, params=params, mode=mode, project=project
            )
        except Exception as exc:
            warn_tracking(
                f"Neptune tracking is off for this sweep: could not start its run ({type(exc).__name__}: {exc})"
            )
        else:
            _OPEN_SWEEP_RUNS[str(data_dir)] = (run, mode)
            values.update(
                neptune_mode=mode,
                neptune_project=project,
                neptune_data_dir=str(data_dir),
                neptune_sweep_id=sweep_name,
            )
            started.append("neptune")
    return TrackingContext(trackers=tuple(started), **values)


def finish_sweep_tracking(ctx: TrackingContext, summary: Mapping[str, Any]) -> None:
    """Log the sweep's summary (best trial, counts, ...) to its parent runs and close them."""
    if ctx.mlflow_tracking_uri and ctx.mlflow_parent_run_id:
        from trainer.tracking import _mlflow

        try:
            _mlflow.finish_sweep_run(ctx.mlflow_tracking_uri, ctx.mlflow_parent_run_id, summary)
        except Exception as exc:
            warn_tracking(f"MLflow could not record the sweep's summary ({type(exc).__name__}: {exc})")
    if ctx.neptune_data_dir:
        from trainer.tracking import _neptune

        try:
            run, mode = _OPEN_SWEEP_RUNS.pop(ctx.neptune_data_dir, (None, ctx.neptune_mode or "offline"))
            if run is None:  # a resumed driver: the sweep's first run was closed with its process
                extra: dict[str, Any] = {"project": ctx.neptune_project} if ctx.neptune_project else {}
                run, mode = _neptune.init_run(
                    mode=mode,
                    data_dir=Path(ctx.neptune_data_dir),
                    name=ctx.sweep_name,
                    tags=["segsweep", "sweep", ctx.sweep_name],
                    **extra,
                )
                run["segsweep/kind"] = "sweep"
                run["sweep/name"] = ctx.sweep_name
                run["sweep/id"] = ctx.neptune_sweep_id or ctx.sweep_name
            for key, value in _flat_summary(summary).items():
                run["summary/" + key.replace(".", "/")] = value
            _neptune.stop_run(run, mode)
        except Exception as exc:
            warn_tracking(f"Neptune could not record the sweep's summary ({type(exc).__name__}: {exc})")


def _flat_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    from trainer.tracking._secrets import flatten_params

    return flatten_params(redact_params(summary))


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

    from trainer.files import write_json_atomic

    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / CONTEXT_FILE
    with (sweep_dir / f".{CONTEXT_FILE}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return TrackingContext.from_json(path.read_text())
        ctx = start_sweep_tracking(names, sweep_dir, sweep_name, params)
        write_json_atomic(path, ctx.to_dict())
    if not keep_open and ctx.neptune_data_dir in _OPEN_SWEEP_RUNS:
        from trainer.tracking import _neptune

        run, mode = _OPEN_SWEEP_RUNS.pop(ctx.neptune_data_dir)
        try:
            _neptune.stop_run(run, mode)
        except Exception as exc:
            warn_tracking(f"Neptune could not close the sweep's run ({type(exc).__name__}: {exc})")
    return ctx


def finish_sweep_folder_tracking(sweep_dir: Path, summary: Mapping[str, Any]) -> None:
    """:func:`finish_sweep_tracking` for the context kept in ``SWEEP/tracking.json`` (if any)."""
    path = Path(sweep_dir) / CONTEXT_FILE
    if path.is_file():
        finish_sweep_tracking(TrackingContext.from_json(path.read_text()), summary)
