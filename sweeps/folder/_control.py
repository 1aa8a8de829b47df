"""Who runs a sweep, and asking it to stop: the driver's lock and the stop request.

The driver holds an exclusive ``flock`` on driver.json for as long as it runs, so any process that
sees the folder (``sweep list``, ``sweep stop``, ``status --watch``) can tell a running sweep from an
interrupted one without trusting a pid (pids are reused; a killed driver's lock goes with it).
``sweep stop`` writes stop.json; the driver polls it, stops proposing trials, and ends once every
running trial has finished its current fold (``now``: at once), leaving the sweep resumable.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from segsweep.base.files import write_json_atomic
from sweeps.folder import _records
from sweeps.folder._layout import SweepFolder


@dataclass(frozen=True)
class StopRequest:
    """Why and how a sweep is asked to stop: ``now`` stops running folds too (they rerun on resume)."""

    reason: str
    now: bool
    requested: str


def request_stop(folder: SweepFolder, reason: str, *, now: bool = False) -> StopRequest:
    """Ask the sweep's driver to stop (a request already there is made stricter, never milder)."""
    current = read_stop_request(folder)
    request = StopRequest(
        reason=current.reason if current else reason,
        now=now or bool(current and current.now),
        requested=current.requested if current else _records.now(),
    )
    write_json_atomic(folder.stop_file, {"reason": request.reason, "now": request.now, "requested": request.requested})
    return request


def read_stop_request(folder: SweepFolder) -> StopRequest | None:
    """The pending stop request, if any (a damaged request file counts as a request to stop)."""
    try:
        record = _records.read_json_record(folder.stop_file)
    except (OSError, ValueError):
        return StopRequest(reason=f"{folder.stop_file} (unreadable)", now=False, requested=_records.now())
    if record is None:
        return None
    return StopRequest(
        str(record.get("reason") or "stop requested"), bool(record.get("now")), str(record.get("requested") or "")
    )


def clear_stop_request(folder: SweepFolder) -> None:
    """Forget a request once a driver has acted on it (a resumed sweep must not stop at once)."""
    folder.stop_file.unlink(missing_ok=True)


@contextlib.contextmanager
def hold_driver_lock(folder: SweepFolder) -> Iterator[None]:
    """Mark this process as the sweep's driver while the block runs; refuse a second driver."""
    from segsweep.base.errors import ConfigError

    folder.path.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(folder.driver_file, "a+")  # noqa: SIM115 (held for the block's lifetime)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = driver_info(folder)
            raise ConfigError(
                f"sweep {folder.name!r} is already running (driver pid {other.get('pid')} on "
                f"{other.get('host')}); follow it with `segsweep sweep status {folder.cli_args} --watch`, "
                f"or stop it with `segsweep sweep stop {folder.cli_args}`"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": _records.now()}))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def driver_running(folder: SweepFolder) -> bool:
    """True while some process holds the sweep's driver lock."""
    if not folder.driver_file.is_file():
        return False
    with open(folder.driver_file) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def driver_info(folder: SweepFolder) -> dict[str, object]:
    """driver.json's host, pid and start ({} when absent or unreadable)."""
    try:
        return _records.read_json_record(folder.driver_file) or {}
    except (OSError, ValueError):
        return {}
