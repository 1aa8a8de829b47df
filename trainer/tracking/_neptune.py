"""Neptune sink (client 1.14): offline into the run or sweep folder by default, online bounded.

Neptune's hosted service shut down on 2026-03-05, so ``offline`` is the default mode; ``async``
(online) is used when ``NEPTUNE_MODE`` or the option asks for it, or when both a token and a
project are set. The client writes its data to ``$NEPTUNE_DATA_DIRECTORY`` (default ``.neptune``
in the working directory), read when a run is created: segsweep points it at the run's folder for
that moment under a lock (changing the working directory is not an option in threaded workers),
and uploads file contents (``File.from_content``), which the client copies into that folder,
never paths that point elsewhere.

A server that accepts connections and never answers makes ``init_run`` wait forever, so online
initialisation runs in a thread with a deadline; past it (or on any error) the run falls back to
offline with a warning.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from segsweep.base.errors import ConfigError
from segsweep.base.secrets import flatten_params, redact_params
from trainer.reporter import COMPLETE, FAILED, INTERRUPTED, RUNNING, FoldPreview
from trainer.tracking._backend import TrackerBackend
from trainer.tracking._guarded import warn_tracking

if TYPE_CHECKING:
    from neptune import Run

    from trainer.config import CVConfig
    from trainer.results import CVResult, FoldResult

MODES = ("offline", "async", "debug")
#: Seconds an online ``init_run`` may take before segsweep falls back to offline
#: (``SEGSWEEP_NEPTUNE_INIT_TIMEOUT`` overrides it).
DEFAULT_INIT_TIMEOUT = 30.0
#: Seconds ``stop`` may wait for an online run to finish syncing.
DEFAULT_STOP_TIMEOUT = 30.0
DATA_DIRECTORY_ENV = "NEPTUNE_DATA_DIRECTORY"
#: The client's data folder in a run's root (a sweep folder or ``cv --out``).
DATA_DIR = ".neptune"
_ENV_LOCK = threading.Lock()
# The sweep's own Neptune run stays open in the driver between start and finish (Neptune offline
# cannot reopen a run by id), keyed by the sweep's data directory.
_OPEN_SWEEP_RUNS: dict[str, tuple[Run, str]] = {}


def resolve_mode(option: str | None = None) -> str:
    """The option, else ``NEPTUNE_MODE``, else async when a token and a project are set, else offline."""
    mode = option or os.environ.get("NEPTUNE_MODE")
    if not mode:
        online = os.environ.get("NEPTUNE_API_TOKEN") and os.environ.get("NEPTUNE_PROJECT")
        mode = "async" if online else "offline"
    if mode not in MODES:
        raise ConfigError(f"Neptune mode {mode!r} is not supported; set NEPTUNE_MODE to one of: {', '.join(MODES)}")
    return mode


def data_dir_for(root: Path) -> Path:
    """Where the client's ``.neptune`` folder goes for runs under ``root``."""
    return Path(root).resolve() / DATA_DIR


def init_timeout() -> float:
    return float(os.environ.get("SEGSWEEP_NEPTUNE_INIT_TIMEOUT") or DEFAULT_INIT_TIMEOUT)


def init_run(*, mode: str, data_dir: Path, timeout: float | None = None, **kwargs: Any) -> tuple[Run, str]:
    """A Neptune run writing into ``data_dir``; returns it and the mode it actually runs in."""
    import neptune

    timeout = init_timeout() if timeout is None else timeout

    options: dict[str, Any] = {
        "capture_stdout": False,
        "capture_stderr": False,
        "capture_hardware_metrics": False,
        "capture_traceback": False,
        "source_files": [],
        "git_ref": False,
        "dependencies": None,
        **kwargs,
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    with _ENV_LOCK:
        previous = os.environ.get(DATA_DIRECTORY_ENV)
        os.environ[DATA_DIRECTORY_ENV] = str(data_dir)
        hung = False
        try:
            if mode != "async":
                return neptune.init_run(mode=mode, **options), mode  # type: ignore[arg-type]
            outcome: dict[str, Any] = {}

            def attempt() -> None:
                try:
                    outcome["run"] = neptune.init_run(mode="async", **options)
                except Exception as exc:
                    outcome["error"] = exc

            thread = threading.Thread(target=attempt, name="segsweep-neptune-init", daemon=True)
            thread.start()
            thread.join(timeout)
            if "run" in outcome:
                return outcome["run"], "async"
            if thread.is_alive():
                # The stuck call still reads the data directory when it wakes: leave it pointing here.
                hung = True
                reason = f"the server did not answer within {timeout:g} s"
            else:
                error = outcome.get("error")
                reason = f"{type(error).__name__}: {error}"
            warn_tracking(f"Neptune could not start an online run ({reason}); logging offline into {data_dir}")
            return neptune.init_run(mode="offline", **options), "offline"
        finally:
            if not hung:
                if previous is None:
                    os.environ.pop(DATA_DIRECTORY_ENV, None)
                else:
                    os.environ[DATA_DIRECTORY_ENV] = previous


def assign_params(run: Run, params: Mapping[str, Any]) -> None:
    """Parameters under ``parameters/``, redacted and flattened (Neptune takes no None or lists)."""
    for key, value in flatten_params(redact_params(params)).items():
        run["parameters/" + key.replace(".", "/")] = value


#: Where a run's end state goes: Neptune's own ``sys/state`` only says Active or Inactive.
STATE_FIELD, REASON_FIELD = "segsweep/state", "segsweep/reason"
#: Neptune's failed flag (the runs table's red mark), true for a FAILED run only.
FAILED_FIELD = "sys/failed"


def state_fields(state: str, reason: str = "") -> dict[str, Any]:
    """The fields recording how a run ended (trainer.reporter's states), as Neptune holds them."""
    return {STATE_FIELD: state, REASON_FIELD: reason, FAILED_FIELD: state == FAILED}


def stop_run(run: Run, mode: str) -> None:
    run.stop(seconds=DEFAULT_STOP_TIMEOUT if mode == "async" else None)


class NeptuneTracker(TrackerBackend):
    """One cross-validation as a Neptune run; folds are namespaces ``folds/NN/`` inside it.

    Neptune has no nested runs: a trial records its sweep under ``sweep/`` (name and the sweep run's
    custom id) and carries the sweep's name as a tag. The sweep's part of the tracking context:
    ``mode``, ``project`` (may be None offline), ``data_dir`` (the folder holding ``.neptune``) and
    ``sweep_id`` (the sweep run's custom id).
    """

    name = "Neptune"
    key = "neptune"
    files: ClassVar[Mapping[str, str]] = {"data": DATA_DIR}
    default_when = "NEPTUNE_PROJECT"

    def __init__(
        self,
        *,
        root: Path,
        run_name: str,
        params: Mapping[str, Any],
        mode: str | None = None,
        project: str | None = None,
        data_dir: Path | None = None,
        sweep_name: str | None = None,
        sweep_id: str | None = None,
        init_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.run_name = run_name
        self.params = dict(params)
        self.mode = resolve_mode(mode)
        self.project = project or os.environ.get("NEPTUNE_PROJECT")
        self.data_dir = Path(data_dir) if data_dir else data_dir_for(self.root)
        self.sweep_name = sweep_name
        self.sweep_id = sweep_id
        self.init_timeout = init_timeout
        self.run: Run | None = None
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
    ) -> NeptuneTracker:
        parent = parent or {}
        return cls(
            root=root,
            run_name=run_name,
            params=params,
            mode=parent.get("mode"),
            project=parent.get("project"),
            data_dir=Path(parent["data_dir"]) if parent.get("data_dir") else None,
            sweep_name=sweep_name,
            sweep_id=parent.get("sweep_id"),
        )

    @classmethod
    def start_sweep(cls, root: Path, sweep_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        mode = resolve_mode()
        project = os.environ.get("NEPTUNE_PROJECT")
        run, mode, data_dir = start_sweep_run(
            root=root, sweep_name=sweep_name, params=params, mode=mode, project=project
        )
        _OPEN_SWEEP_RUNS[str(data_dir)] = (run, mode)
        return {"mode": mode, "project": project, "data_dir": str(data_dir), "sweep_id": sweep_name}

    @classmethod
    def release_sweep(cls, part: Mapping[str, Any]) -> None:
        opened = _OPEN_SWEEP_RUNS.pop(str(part.get("data_dir")), None)
        if opened is not None:
            stop_run(*opened)

    @classmethod
    def finish_sweep(cls, part: Mapping[str, Any], sweep_name: str, summary: Mapping[str, Any]) -> None:
        if not part.get("data_dir"):
            return
        run, mode = _OPEN_SWEEP_RUNS.pop(part["data_dir"], (None, part.get("mode") or "offline"))
        if run is None:  # a resumed driver: the sweep's first run was closed with its process
            extra: dict[str, Any] = {"project": part["project"]} if part.get("project") else {}
            run, mode = init_run(
                mode=mode, data_dir=Path(part["data_dir"]), name=sweep_name, tags=["segsweep", "sweep", sweep_name],
                **extra,
            )  # fmt: skip
            run["segsweep/kind"] = "sweep"
            run["sweep/name"] = sweep_name
            run["sweep/id"] = part.get("sweep_id") or sweep_name
        for key, value in flatten_params(redact_params(summary)).items():
            run["summary/" + key.replace(".", "/")] = value
        stop_run(run, mode)

    def _cv_start(self, config: CVConfig, n_folds: int, out_dir: Path) -> None:
        del config, out_dir
        if self.run is not None:
            return
        tags = ["segsweep", "trial" if self.sweep_name else "cv"]
        if self.sweep_name:
            tags.append(self.sweep_name)
        kwargs: dict[str, Any] = {"name": self.run_name, "tags": tags}
        if self.project:
            kwargs["project"] = self.project
        self.run, self.mode = init_run(mode=self.mode, data_dir=self.data_dir, timeout=self.init_timeout, **kwargs)
        run = self.run
        run["segsweep/kind"] = "trial" if self.sweep_name else "cv"
        run["segsweep/root"] = str(self.root)
        run["segsweep/n_folds"] = n_folds
        if self.sweep_name:
            run["sweep/name"] = self.sweep_name
        if self.sweep_id:
            run["sweep/id"] = self.sweep_id
        assign_params(run, self.params)
        self._record_state(RUNNING, "")

    def _record_state(self, state: str, reason: str) -> None:
        assert self.run is not None
        self.state = state
        for key, value in state_fields(state, reason).items():
            self.run[key] = value

    def _epoch(self, fold: int, epoch: int, metrics: Mapping[str, float]) -> None:
        assert self.run is not None
        for key, value in metrics.items():
            self.run[f"folds/{fold:02d}/{key}"].append(float(value), step=epoch)

    def _fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None:
        from neptune.types import File

        from trainer.results import summarise

        assert self.run is not None
        run = self.run
        base = f"folds/{result.fold:02d}"
        run[f"{base}/dice"] = result.dice
        run[f"{base}/iou"] = result.iou
        run[f"{base}/epochs_run"] = result.epochs_run
        run[f"{base}/n_train"] = result.n_train
        run[f"{base}/n_val"] = result.n_val
        run[f"{base}/lr_drops"] = ",".join(str(e) for e in result.lr_drops)
        if preview is not None:
            from trainer.preview import preview_png

            run[f"{base}/preview"].upload(File.from_content(preview_png(preview), extension="png"))
        run["cv/fold_dice"].append(result.dice, step=result.fold)
        run["cv/fold_iou"].append(result.iou, step=result.fold)
        mean, std = summarise(completed)
        self._assign_summary(mean, std, len(completed))

    def _assign_summary(self, mean: Mapping[str, float], std: Mapping[str, float], folds_done: int) -> None:
        assert self.run is not None
        for metric in ("dice", "iou"):
            self.run[f"cv/mean/{metric}"] = mean[metric]
            self.run[f"cv/std/{metric}"] = std[metric]
        self.run["cv/folds_done"] = folds_done

    def _cv_end(self, result: CVResult) -> None:
        self._assign_summary(result.mean, result.std, len(result.folds))
        assert self.run is not None
        self.run["segsweep/complete"] = True
        self._record_state(COMPLETE, "")

    def _cv_incomplete(self, state: str, reason: str) -> None:
        if self.run is not None:
            self._record_state(state, reason)

    def _close(self) -> None:
        if self.run is not None:
            if self.state == RUNNING:  # neither complete, pruned nor failed: interrupted
                self._record_state(INTERRUPTED, "interrupted before the run ended")
            run, self.run = self.run, None
            stop_run(run, self.mode)


def start_sweep_run(
    *, root: Path, sweep_name: str, params: Mapping[str, Any], mode: str | None, project: str | None
) -> tuple[Run, str, Path]:
    """The sweep's own Neptune run (kept open by the driver): (run, mode, data directory)."""
    data_dir = data_dir_for(root)
    kwargs: dict[str, Any] = {
        "name": sweep_name,
        "tags": ["segsweep", "sweep", sweep_name],
        "custom_run_id": sweep_name[:128],
    }
    if project:
        kwargs["project"] = project
    run, actual = init_run(mode=resolve_mode(mode), data_dir=data_dir, **kwargs)
    run["segsweep/kind"] = "sweep"
    run["sweep/name"] = sweep_name
    run["sweep/id"] = sweep_name
    assign_params(run, params)
    return run, actual, data_dir
