"""Files, written safely: atomic writes, strict JSON, content digests, staged folders, a full disk.

The one home of each: every module that writes a result or hashes a file uses these, so a crash
never leaves half a file where a reader expects a whole one, and a full disk reads as one line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from segsweep.base.env import created_file_mode, created_folder_mode
from segsweep.base.errors import ConfigError, DiskFullError


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's content, read in 1 MiB blocks (``sha256``, ``md5``, ...)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_writable_folder(folder: Path, what: str, fix: str) -> Path:
    """Create ``folder`` if needed and check this process can write in it, or say how to fix it.

    Fails before any work (not after an hour of training); ``what`` names the folder for the user
    (``--storage``, ``output folder``, ``the data cache``) and ``fix`` says what to do instead.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder} is a file, not a folder; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to {what} {folder}: {exc.strerror or exc}; {fix}") from None
    return folder


def ensure_new_folder(out: Path, what: str) -> Path:
    """``out`` must not exist or be an empty folder (nothing is overwritten), under a parent we can create."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; pass a new --out for the {what}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out.parent}: {exc.strerror}; pass a writable --out") from None
    return out


# --- a full disk ----------------------------------------------------------------------------------

#: errno values of a write the file system had no room for: the device is full, or the user's quota on it.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def no_room_errno(exc: BaseException) -> int | None:
    """ENOSPC or EDQUOT when ``exc`` is a write that had no room, else None.

    OSError carries errno (Python's writes, h5py's, numpy's); TensorFlow's C++ file writers (SavedModel)
    raise tf.errors.OpError instead, with the C library's text in the message.
    """
    if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
        return exc.errno
    if type(exc).__module__.startswith("tensorflow"):
        for number in _NO_ROOM:
            if os.strerror(number) in str(exc):
                return number
    return None


def mount_point(path: Path) -> Path:
    """The mount point of the file system ``path`` is (or would be created) on: where space must be freed."""
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    while not os.path.ismount(current):
        current = current.parent
    return current


def _megabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.0f}" if n_bytes >= 1e7 else f"{max(n_bytes, 1e5) / 1e6:.1f}"


def disk_full_message(errno_value: int, folder: Path, needs_bytes: int | None) -> str:
    """The one line a writer that had no room says: the file system, what it needs, what is free, the fix."""
    mount = mount_point(folder)
    sizes = [f"needs ~{_megabytes(needs_bytes)} MB"] if needs_bytes else []
    with suppress(OSError):  # the free space is a courtesy: the line is said without it
        sizes.append(f"{_megabytes(shutil.disk_usage(mount).free)} MB free")
    where = "" if mount == Path(os.path.abspath(folder)) else f" writing {folder}"
    return (
        f"{os.strerror(errno_value).lower()} on {mount}{' (' + ', '.join(sizes) + ')' if sizes else ''}{where}; "
        "nothing partial was kept: free space there (or write elsewhere) and run the command again"
    )


@contextmanager
def disk_full_as_error(folder: Path, needs_bytes: int | Callable[[], int | None] | None = None) -> Iterator[None]:
    """Turn a write inside the block that had no room (ENOSPC, EDQUOT) into one DiskFullError line.

    The one home of that translation: every writer of results (atomic files, bundles, exports, reports,
    predicted masks) runs inside it. ``folder`` is what the block writes into; ``needs_bytes`` (or a
    function computing it once the write failed) is the estimated size of the whole output. An outer
    block that knows the whole output's size restates an inner block's error with its own estimate.
    """
    try:
        yield
    except DiskFullError as exc:
        if needs_bytes is None:
            raise
        needs = needs_bytes() if callable(needs_bytes) else needs_bytes
        restated: int = exc.errno or errno.ENOSPC
        raise DiskFullError(disk_full_message(restated, folder, needs), errno_value=restated) from None
    except Exception as exc:
        number = no_room_errno(exc)
        if number is None:
            raise
        needs = needs_bytes() if callable(needs_bytes) else needs_bytes
        raise DiskFullError(disk_full_message(number, folder, needs), errno_value=number) from None


# --- atomic writes --------------------------------------------------------------------------------


@contextmanager
def atomic_path(target: Path, suffix: str = ".part", *, needs_bytes: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``target`` that replaces it only if the block completes.

    A full disk is a DiskFullError (see disk_full_as_error), and the partial file is removed either way.
    """
    with disk_full_as_error(target.parent, needs_bytes):
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
        os.close(handle)
        partial = Path(name)
        try:
            yield partial
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)


#: The name ``tempfile.mkdtemp`` gives a staging folder of output ``NAME`` beside it (``.NAME.`` and its
#: eight random characters), as :func:`staged_folder`, write_bundle and export make them.
_STAGING_SUFFIX = r"[a-z0-9_]{8}"


def _lock_file(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextmanager
def writing_lock(out: Path) -> Iterator[Path]:
    """Hold ``out`` (a folder segsweep writes) for this process; yield its resolved path.

    An flock on ``.NAME.lock`` beside ``out``, holding this process's pid: a second writer of the
    same ``--out`` stops at once with "OUT is being written by pid N" instead of failing after an
    hour of training, and the kernel releases the lock when its holder dies. Holding it, every
    staging folder ``.NAME.XXXXXXXX`` beside ``out`` belongs to a writer that is gone (a live one
    would hold the lock), so those are removed. The lock file is removed on release.
    """
    import fcntl

    out = out.resolve()  # one lock however the folder is spelt (relative, through a symlink)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out.parent}: {exc.strerror}; pass a writable --out") from None
    path = _lock_file(out)
    while True:
        try:
            handle = open(path, "a+")  # noqa: SIM115  (held until the block ends)
        except OSError as exc:
            raise ConfigError(f"cannot create {path}: {exc.strerror}; pass a writable --out") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise ConfigError(
                f"{out} is being written by {who}; wait for it to finish, or pass another --out"
            ) from None
        # The holder before us removes the file on release: a lock on that unlinked file guards nothing.
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        remove_stale_staging(out)
        yield out
    finally:
        path.unlink(missing_ok=True)  # before the release, so no one locks a file that is going
        handle.close()


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove the staging folders ``.NAME.XXXXXXXX`` beside ``out``; call it holding :func:`writing_lock`.

    A writer killed before its rename (SIGKILL, a power cut) leaves its staging folder: tens of MB of
    weights or thousands of masks that nothing else removes.
    """
    pattern = re.compile(re.escape(f".{out.name}.") + _STAGING_SUFFIX)
    removed = []
    for path in out.parent.iterdir() if out.parent.is_dir() else ():
        if pattern.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            print(f"segsweep: warning: removed {path}, left by an earlier run writing {out} that was killed",
                  file=sys.stderr)  # fmt: skip
    return removed


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out`` that replaces ``out`` whole if the block completes.

    Readers never see half an output under its final name: an exception removes the staging folder,
    a kill leaves it for :func:`remove_stale_staging`. An ``out`` already there is replaced whole (the
    caller decides it may be); between its rename and the new folder's, a kill leaves both as staging
    folders. Hold :func:`writing_lock` on ``out`` around it and pass the path it yields (resolved).
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staging.chmod(created_folder_mode())  # the umask's mode, like every other output
        yield staging
        if out.exists():
            earlier = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
            os.replace(out, earlier)  # rename(2) onto an empty folder
            staging.rename(out)
            shutil.rmtree(earlier, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN/inf float (numpy's too) replaced by None, at every depth."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def dumps_strict(payload: Any, **options: Any) -> str:
    """Strict JSON (RFC 8259: no NaN or Infinity, which jq and browsers reject); non-finite -> null."""
    return json.dumps(finite_or_none(payload), allow_nan=False, **options)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` through a temporary file and a rename, so readers never see half a file."""
    with atomic_path(path, suffix="", needs_bytes=len(data)) as tmp:
        os.chmod(tmp, created_file_mode())  # mkstemp makes 0600 files; follow the umask like other outputs
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` through a temporary file and a rename (see write_bytes_atomic)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write strict JSON through a temporary file and a rename, so readers never see half a file."""
    write_text_atomic(path, dumps_strict(payload, indent=2) + "\n")
