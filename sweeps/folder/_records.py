"""The records of a sweep folder, read and written: sweep.json, trial.json, events.jsonl, predictions.

Writers: the driver (sweep.json, trial states), the searcher (a trial's number and parameters), the
trainable (configuration, attempts, folds). Every trial.json write is a locked read-modify-write
through an atomic rename, so writers never lose each other's fields and readers never see half a file.

Readers are tolerant: a record that does not parse (a disk filled up, a hand edit, a copy cut short)
is rebuilt from the other records where they hold the same facts (trial.json from cv.json, the fold
files, events.jsonl and the Optuna study), kept aside as ``<name>.damaged`` rather than overwritten,
and named in a warning. What cannot be rebuilt is a :class:`DamagedRecord` naming the file and the repair.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segsweep.base.files import dumps_strict, write_json_atomic
from sweeps.folder._layout import EVENTS_FILE, FORMAT_VERSION, TRIAL_FILE, SweepFolder
from sweeps.folder._schema import DamagedRecord, SweepRecord, TrialRecord
from trainer.results import CV_FILE, read_cv_result, read_fold_files

_LOCK_FILE = ".trial.lock"
#: The Ray trial id stored on each Optuna trial, so the study and the trial folders can be matched.
STUDY_TRIAL_ID_ATTR = "ray_trial_id"
#: Why a trial failed or was pruned, stored on the Optuna trial for the dashboard.
STUDY_REASON_ATTR = "reason"
#: The label of a starting point (``--start``, a space's ``start:``), stored on its Optuna trial;
#: trial.json's ``start`` holds the same label.
STUDY_START_ATTR = "segsweep_start"
#: On a trial ``--warm-start`` added from an earlier sweep: ``SWEEP/TRIAL_ID`` it was scored in.
STUDY_WARM_START_ATTR = "segsweep_warm_start"
#: On a proposal that repeated a scored configuration: the number of the study's trial that scored it.
#: The searcher told the proposal that trial's score and drew another; it has no trial folder.
STUDY_REPEAT_ATTR = "segsweep_repeat_of"
#: On the study: why the searcher ended the sweep before its --trials (every proposal a repeat).
STUDY_EXHAUSTED_ATTR = "segsweep_space_exhausted"


def now() -> str:
    """The current time as ISO 8601 in UTC (seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_json_record(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when the file is missing; ValueError when it is damaged."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    loaded = json.loads(text)  # ValueError (JSONDecodeError) for a damaged file
    if not isinstance(loaded, dict):
        raise ValueError(f"expected a JSON object, found {type(loaded).__name__}")
    return loaded


def keep_damaged(path: Path) -> Path:
    """Copy a damaged record aside (``<name>.damaged``) before anything rewrites it; return the copy."""
    copy = path.with_name(path.name + ".damaged")
    if not copy.exists():
        with contextlib.suppress(OSError):
            shutil.copy2(path, copy)
    return copy


# --- submitted.json -------------------------------------------------------------------------


def read_submissions(folder: SweepFolder) -> list[dict[str, Any]]:
    """Every submission of the sweep's driver (``sweep submit``), oldest first; [] when none.

    Each is ``{"kind": "slurm"|"ray-job", "job_id", "address" (Ray Jobs), "submitted", "resume"}``.
    """
    try:
        record = read_json_record(folder.submitted_file)
    except (OSError, ValueError) as exc:
        raise DamagedRecord(
            f"{folder.submitted_file} does not parse ({exc}); it only lists the submitted jobs: "
            "delete it, and find the jobs with squeue / `ray job list`"
        ) from None
    return list((record or {}).get("submissions") or [])


def append_submission(folder: SweepFolder, **fields: Any) -> dict[str, Any]:
    """Record one more submission (with the time) in submitted.json; returns it."""
    entry = {**fields, "submitted": now()}
    submissions = [*read_submissions(folder), entry]
    folder.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder.submitted_file, {"format": FORMAT_VERSION, "submissions": submissions})
    return entry


# --- sweep.json -------------------------------------------------------------------------------


def read_spec_record(folder: SweepFolder) -> SweepRecord:
    """sweep.json: NoSuchSweep when missing, DamagedRecord when it does not parse.

    sweep.json holds what no other record does (the search space, the data folder, the budget), so
    it is not rebuilt: the message says where a copy lives.
    """
    folder.require()
    try:
        record = read_json_record(folder.spec_file)
    except (OSError, ValueError) as exc:
        copy = keep_damaged(folder.spec_file)
        raise DamagedRecord(
            f"{folder.spec_file} is damaged ({exc}); it alone records the sweep's data, space and budget: "
            f"restore it from a backup (a copy of the damaged file is in {copy.name}); the trials under "
            f"{folder.trials_dir} are untouched"
        ) from None
    assert record is not None  # require() saw the file
    return SweepRecord.from_dict(record, folder.spec_file)


def write_spec_record(folder: SweepFolder, record: SweepRecord | dict[str, Any]) -> None:
    """Write sweep.json (a flat dict is read as sweep.json's contents first, so it is checked alike)."""
    if not isinstance(record, SweepRecord):
        record = SweepRecord.from_dict(record, folder.spec_file)
    write_json_atomic(folder.spec_file, record.to_dict())


# --- trial.json -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(trial_dir: Path) -> Iterator[None]:
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(trial_dir / _LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_trial_record(trial_dir: Path, warnings: list[str] | None = None) -> TrialRecord:
    """trial.json (an empty record when the trial has none yet; rebuilt when it does not parse).

    A rebuilt record adds a line to ``warnings`` naming the damaged file. A record that parses but
    holds what this version does not write (an unknown field, a newer format) is a DamagedRecord:
    rebuilding it would drop those fields on the next write.
    """
    path = trial_dir / TRIAL_FILE
    try:
        values = read_json_record(path)
    except (OSError, ValueError) as exc:
        copy = keep_damaged(path)
        rebuilt = rebuild_trial_record(trial_dir)
        sources = rebuilt.pop("_sources")
        if warnings is not None:
            warnings.append(
                f"{path} is damaged ({exc}); rebuilt from {', '.join(sources) or 'its folder name'} "
                f"(the damaged file is kept as {copy.name}; the next write replaces it)"
            )
        return TrialRecord(**rebuilt)
    return TrialRecord.from_dict(values, path) if values is not None else TrialRecord()


def update_trial_record(trial_dir: Path, **changes: Any) -> TrialRecord:
    """Set ``changes`` (TrialRecord's fields; None clears one) in trial.json under the folder's lock;
    return the new record. A name that is not a field, or a value of the wrong type, is a TypeError
    before anything is written."""
    with _locked(trial_dir):
        record = read_trial_record(trial_dir).updated({**changes, "format": FORMAT_VERSION})
        write_json_atomic(trial_dir / TRIAL_FILE, record.to_dict())
    return record


def rebuild_trial_record(trial_dir: Path) -> dict[str, Any]:
    """What the other records of a trial say about it, as TrialRecord's fields (``_sources`` names them).

    cv.json gives the configuration and fold count, the fold files the folds done, events.jsonl the
    times and the final state, the Optuna study the number and proposed parameters.
    """
    record: dict[str, Any] = {"trial_id": trial_dir.name, "state": "RUNNING"}
    sources: list[str] = []
    cv = read_cv_result(trial_dir)
    if cv is not None:
        record.update(config=cv.config, n_folds=cv.n_folds)
        sources.append(CV_FILE)
    folds, _damaged = read_fold_files(trial_dir)
    if folds:
        record["folds_done"] = len(folds)
        sources.append("the fold files")
    events = read_events(trial_dir)
    if events:
        sources.append(EVENTS_FILE)
        attempts = [e for e in events if e.get("event") == "attempt"]
        if attempts:
            record["started"] = attempts[0].get("time")
        ends = [e for e in events if e.get("event") == "trial_end"]
        if ends:
            record.update(
                state=ends[-1].get("state", "RUNNING"), reason=ends[-1].get("reason"), ended=ends[-1].get("time")
            )
        elif any(e.get("event") == "failed" for e in events):
            failed = [e for e in events if e.get("event") == "failed"][-1]
            record["reason"] = failed.get("reason")
    if record["state"] == "RUNNING" and cv is not None and cv.complete:
        record["state"] = "COMPLETE"  # every fold finished: nothing else ends a trial that way
    study = _study_trial(trial_dir)
    if study is not None:
        record.update(number=study.number, params=dict(study.params))
        sources.append("the Optuna study")
        if record["state"] == "RUNNING" and study.state.is_finished():
            record["state"] = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED"}.get(study.state.name, "FAILED")
    record["_sources"] = sources
    return record


def _study_trial(trial_dir: Path) -> Any | None:
    """The Optuna trial whose Ray id is this folder's name, from SWEEP/optuna.db (None if absent)."""
    sweep = SweepFolder(trial_dir.parent.parent)
    if not sweep.optuna_db.is_file():
        return None
    with contextlib.suppress(Exception):  # a damaged study must not stop the rebuild of the rest
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(sweep.optuna_url)
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            for trial in study.get_trials(deepcopy=False):
                if trial.user_attrs.get(STUDY_TRIAL_ID_ATTR) == trial_dir.name:
                    return trial
    return None


# --- events.jsonl -----------------------------------------------------------------------------


def append_event(trial_dir: Path, event: str, **fields: Any) -> None:
    """One JSON line in events.jsonl: what happened to the trial, when and in which process.

    ``fold_end`` lines count fold trainings (a resumed sweep must not add a second one for a fold).
    """
    line = dumps_strict({"time": now(), "event": event, "pid": os.getpid(), **fields}, default=str)
    with _locked(trial_dir), open(trial_dir / EVENTS_FILE, "a") as handle:
        handle.write(line + "\n")


def read_events(trial_dir: Path) -> list[dict[str, Any]]:
    """Every readable line of events.jsonl (a line cut short by a crash is skipped)."""
    path = trial_dir / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            loaded = json.loads(line)
            if isinstance(loaded, dict):
                events.append(loaded)
    return events


def attempt_spans(trial_dir: Path) -> list[tuple[float, float]]:
    """When the trial ran, by its events: one (start, end) in POSIX seconds per attempt, from its
    ``attempt`` event to that attempt's last event (a stop, a crash or a pause ends a span)."""
    spans: list[tuple[float, float]] = []
    for event in read_events(trial_dir):
        try:
            when = datetime.fromisoformat(str(event.get("time"))).timestamp()
        except ValueError:
            continue
        if event.get("event") == "attempt" or not spans:
            spans.append((when, when))
        else:
            spans[-1] = (spans[-1][0], max(spans[-1][1], when))
    return spans
