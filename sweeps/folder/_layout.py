"""Where everything of a sweep lives: the one place that names the files of ``STORAGE/NAME/``.

::

    sweep.json                 the sweep's specification (data, space, trials, seed, overrides, runs)
    optuna.db                  Optuna RDB storage (SQLite); the study is named after the sweep
    trials/<trial_id>/
        trial.json             trial id, Optuna number, parameters, configuration, state, reason, times
        cv.json, folds/        the trainer's cross-validation output (trainer.results owns those names)
        events.jsonl           one line per attempt, fold and end (node, pid, times)
        progress.json          a running trial's current epoch: batches done, images/s (rewritten ~1/s)
    ray/                       Ray Tune's experiment state (for resume)
    report/                    `segsweep report` output (report.html, report.md, figures/, best.json)
    driver.json                the running driver's host, pid and start (locked while it runs)
    driver.log                 a driver started in the background (sweeps.api's Sweep.start): its output
    stop.json                  a pending request to stop (from `sweep stop`, a budget, Ctrl-C)
    predictions/<key>.json     test-set scores `segsweep predict` recorded for a bundle retrained from a trial
    mlflow.db, mlartifacts/    MLflow sink; .neptune/ Neptune's (each tracker owns its names: trainer.tracking)
    tracking.json              the sweep-level tracker runs the trials' runs nest under (trainer.tracking's name)
    submitted.json             `segsweep sweep submit`: each Slurm job or Ray Job that ran the driver
    slurm.sbatch               the Slurm batch script `sweep submit --slurm` wrote (editable; resubmittable)
    logs/                      the Slurm jobs' output (slurm-<job id>.out)

A sweep folder is the source of truth; trackers are sinks and are never read back.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from segsweep.base.errors import SegsweepError
from trainer.tracking import CONTEXT_FILE as TRACKING_FILE
from trainer.tracking import tracker_files

#: Bump when a record's meaning changes; readers accept this version and older ones.
FORMAT_VERSION = 1

SPEC_FILE = "sweep.json"
OPTUNA_FILE = "optuna.db"
TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"
EVENTS_FILE = "events.jsonl"
PROGRESS_FILE = "progress.json"
RAY_DIR = "ray"
REPORT_DIR = "report"
#: The report's record of the winner (its configuration, evidence, test sets), in REPORT_DIR or --out.
BEST_FILE = "best.json"
PREDICTIONS_DIR = "predictions"
#: A request to stop the sweep (``segsweep sweep stop``, a time budget, Ctrl-C), read by its driver.
STOP_FILE = "stop.json"
#: Held (flock) by the running driver; names its host and pid, so others can tell a sweep is running.
DRIVER_FILE = "driver.json"
#: The output of a driver started in the background (``Sweep.start()`` of sweeps.api).
DRIVER_LOG = "driver.log"
SUBMITTED_FILE = "submitted.json"
SLURM_SCRIPT = "slurm.sbatch"
LOGS_DIR = "logs"
#: Slurm's output file pattern (``%j``: the job id), inside LOGS_DIR.
SLURM_LOG_PATTERN = "slurm-%j.out"

#: Where sweeps go when no --storage is given: $SEGSWEEP_HOME, else ./runs (git-ignored here, and
#: outside every package, so a sweep started from a checkout never lands in the source tree).
STORAGE_ENV = "SEGSWEEP_HOME"
DEFAULT_STORAGE = "runs"


def default_storage() -> Path:
    """The folder that holds the sweeps: ``$SEGSWEEP_HOME`` or ``./runs``."""
    return storage_path(None)


def storage_path(storage: str | Path | None) -> Path:
    """The folder a --storage value (a sweep configuration's ``storage:``, ``$SEGSWEEP_HOME``) names.

    The one reader of such values: ``~`` is expanded here because a shell leaves a quoted "~/x" (or
    one in a file) as it is, which would otherwise create a folder literally named ``~``.
    """
    chosen = storage if storage is not None else (os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)
    return Path(chosen).expanduser()


def storage_help() -> str:
    """The --storage option's help text, naming the default from this one place."""
    return f"folder that holds the sweeps (default: ${STORAGE_ENV}, else ./{DEFAULT_STORAGE})"


@dataclass(frozen=True)
class SweepFolder:
    """The paths of one sweep's folder, ``STORAGE/NAME``."""

    path: Path

    @classmethod
    def at(cls, storage: str | Path | None, name: str) -> SweepFolder:
        return cls(storage_path(storage) / name)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def storage(self) -> Path:
        return self.path.parent

    @property
    def cli_args(self) -> str:
        """``NAME --storage STORAGE``, for the command lines segsweep's hints print: a hint names the
        storage the sweep is in, so it works as printed (a default storage depends on the shell)."""
        return f"{shlex.quote(self.name)} --storage {shlex.quote(str(self.storage))}"

    @property
    def spec_file(self) -> Path:
        return self.path / SPEC_FILE

    @property
    def optuna_db(self) -> Path:
        return self.path / OPTUNA_FILE

    @property
    def optuna_url(self) -> str:
        """The study's RDB URL (absolute, so it works from any working directory)."""
        return f"sqlite:///{self.optuna_db.resolve()}"

    @property
    def trials_dir(self) -> Path:
        return self.path / TRIALS_DIR

    def trial_dir(self, trial_id: str) -> Path:
        return self.trials_dir / trial_id

    def trial_dirs(self) -> list[Path]:
        """Every trial folder, sorted by name."""
        return sorted(p for p in self.trials_dir.glob("*") if p.is_dir())

    @property
    def ray_dir(self) -> Path:
        return self.path / RAY_DIR

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT_DIR

    @property
    def report_best_file(self) -> Path:
        """The best.json of the report written to its default folder (``sweep status`` reads its test sets)."""
        return self.report_dir / BEST_FILE

    @property
    def predictions_dir(self) -> Path:
        return self.path / PREDICTIONS_DIR

    @property
    def stop_file(self) -> Path:
        return self.path / STOP_FILE

    @property
    def driver_file(self) -> Path:
        return self.path / DRIVER_FILE

    def tracker_path(self, tracker: str, role: str) -> Path:
        """A file or folder a tracker writes here, by its role (``"mlflow", "store"``): the tracker's
        backend names it (``TrackerBackend.files``)."""
        return self.path / tracker_files(tracker)[role]

    @property
    def driver_log(self) -> Path:
        return self.path / DRIVER_LOG

    @property
    def tracking_file(self) -> Path:
        """The sweep-level tracking context (trainer.tracking writes and reads it)."""
        return self.path / TRACKING_FILE

    @property
    def mlflow_db(self) -> Path:
        return self.tracker_path("mlflow", "store")

    @property
    def mlflow_artifacts(self) -> Path:
        return self.tracker_path("mlflow", "artifacts")

    @property
    def submitted_file(self) -> Path:
        return self.path / SUBMITTED_FILE

    @property
    def slurm_script(self) -> Path:
        return self.path / SLURM_SCRIPT

    @property
    def logs_dir(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def slurm_log_pattern(self) -> Path:
        """The batch script's ``--output`` (Slurm puts the job id in place of ``%j``)."""
        return self.logs_dir / SLURM_LOG_PATTERN

    def slurm_log(self, job_id: str) -> Path:
        return self.logs_dir / SLURM_LOG_PATTERN.replace("%j", job_id)

    def exists(self) -> bool:
        return self.spec_file.is_file()

    def require(self) -> SweepFolder:
        """This folder if it holds a sweep, else :class:`NoSuchSweep` naming the sweeps there."""
        if not self.exists():
            raise NoSuchSweep(self)
        return self


def sweep_names(storage: str | Path) -> list[str]:
    """Names of the sweeps in ``storage`` (folders with a sweep.json)."""
    storage = storage_path(storage)
    return sorted(p.parent.name for p in storage.glob(f"*/{SPEC_FILE}")) if storage.is_dir() else []


class NoSuchSweep(SegsweepError):
    """No sweep of that name in that storage folder; the message lists those that are there."""

    def __init__(self, folder: SweepFolder) -> None:
        names = sweep_names(folder.storage)
        hint = (
            f"sweeps there: {', '.join(names)}"
            if names
            else "pass --storage with the folder given to `segsweep sweep run`"
        )
        super().__init__(f"no sweep named {folder.name!r} in {folder.storage} ({folder.spec_file} missing); {hint}")
