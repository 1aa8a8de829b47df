"""trial.json and events.jsonl: the trial folder's own records, written by driver and trainable alike.

The searcher (driver) writes a trial's number and parameters when it proposes it, the trainable
(worker) its configuration and attempts, the driver's callback its final state and reason. Every
write is a locked read-modify-write through an atomic rename, so the writers never lose each
other's fields and readers (``segsweep sweep status``) never see half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer.results import write_json_atomic

TRIAL_FILE = "trial.json"
EVENTS_FILE = "events.jsonl"
_LOCK_FILE = ".trial.lock"


def now() -> str:
    """The current time as ISO 8601 in UTC (seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def trial_dir(sweep_dir: str | Path, trial_id: str) -> Path:
    return Path(sweep_dir) / "trials" / trial_id


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / _LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_trial_record(folder: Path) -> dict[str, Any]:
    """trial.json as a dict ({} when the trial has none yet)."""
    try:
        loaded = json.loads((folder / TRIAL_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def update_trial_record(folder: Path, **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into trial.json under the folder's lock; return the new record."""
    with _locked(folder):
        record = read_trial_record(folder)
        record.update(changes)
        write_json_atomic(folder / TRIAL_FILE, record)
    return record


def append_event(folder: Path, event: str, **fields: Any) -> None:
    """One JSON line in events.jsonl: what happened to the trial, when and in which process.

    ``fold_end`` lines count fold trainings (a resumed sweep must not add a second one for a fold).
    """
    import os

    from trainer.results import dumps_strict

    line = dumps_strict({"time": now(), "event": event, "pid": os.getpid(), **fields})
    with _locked(folder), open(folder / EVENTS_FILE, "a") as handle:
        handle.write(line + "\n")


def read_events(folder: Path) -> list[dict[str, Any]]:
    path = folder / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events
