"""The tracker protocol and its registry: what every tracker backend provides, and where it is found.

A backend is one class (a :class:`~trainer.tracking._guarded.GuardedTracker`, so a failure never
stops a run) that provides:

- the **run life cycle**: built by :meth:`TrackerBackend.for_run` for one cross-validation, it gets
  the reporter hooks (start with the parameters, each epoch, each fold with its preview) and ends
  with one of ``trainer.reporter``'s states (COMPLETE, PRUNED, FAILED; INTERRUPTED when closed
  while running), which it maps to its own notion of a run's status;
- the **sweep-level life cycle**: :meth:`TrackerBackend.start_sweep` opens the sweep's own run and
  returns the backend's part of the sweep's :class:`~trainer.tracking.TrackingContext` (names and
  ids only, JSON); each trial's run gets that part back as ``parent``;
  :meth:`TrackerBackend.finish_sweep` records the sweep's summary and closes the sweep's run;
- the files and folders it writes in a run's (or sweep's) folder, and its line in ``--tracker``'s help.

Adding a tracker is one module with such a class plus one :func:`register_tracker` line (see
``trainer/tracking/__init__.py``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from trainer.tracking._guarded import GuardedTracker

if TYPE_CHECKING:
    from trainer.config import CVConfig
    from trainer.reporter import FoldPreview
    from trainer.results import CVResult, FoldResult


class TrackerBackend(GuardedTracker, ABC):
    """One tracker: a cross-validation's run (the reporter hooks) and the sweep's run (classmethods)."""

    #: The tracker's word in ``--tracker`` and in a sweep's tracking context (lower case).
    key: ClassVar[str]
    #: What the files and folders it writes in a run's root (a sweep folder, ``cv --out``) are called,
    #: by role (e.g. ``{"store": "mlflow.db"}``): the tracker owns these names.
    files: ClassVar[Mapping[str, str]] = {}
    #: When the tracker is on without ``--tracker``: ``"always"``, an environment variable that turns
    #: it on when set, or None (only when named).
    default_when: ClassVar[str | None] = None

    @classmethod
    def is_default(cls) -> bool:
        """Whether the tracker is on when ``--tracker`` is not given."""
        if cls.default_when is None:
            return False
        return cls.default_when == "always" or bool(os.environ.get(cls.default_when))

    @classmethod
    @abstractmethod
    def for_run(
        cls,
        *,
        root: Path,
        run_name: str,
        params: Mapping[str, Any],
        sweep_name: str | None,
        parent: Mapping[str, Any] | None,
    ) -> TrackerBackend:
        """The tracker of one cross-validation in ``root``. In a sweep, ``sweep_name`` names it and
        ``parent`` is this tracker's part of the sweep's context (None when the sweep did not start
        this tracker): the run is then a trial of the sweep's run, in the sweep's store."""

    @classmethod
    @abstractmethod
    def start_sweep(cls, root: Path, sweep_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Open (or, resuming, reopen) the sweep's run in ``root``; return this tracker's part of the
        sweep's context (JSON values: names and ids, never a client or a credential). May raise:
        the caller warns and leaves the tracker out of the sweep."""

    @classmethod
    def release_sweep(cls, part: Mapping[str, Any]) -> None:
        """Let go of what :meth:`start_sweep` keeps open in this process when this process will not
        finish the sweep (the first trial of a sweep whose driver started no tracking)."""
        del part

    @classmethod
    @abstractmethod
    def finish_sweep(cls, part: Mapping[str, Any], sweep_name: str, summary: Mapping[str, Any]) -> None:
        """Record the sweep's summary (best trial, counts, ...), redacted, and close the sweep's run;
        possibly in another process than :meth:`start_sweep` (a resumed driver)."""

    # The run life cycle every backend implements (GuardedTracker calls these under its guard).
    @abstractmethod
    def _cv_start(self, config: CVConfig, n_folds: int, out_dir: Path) -> None: ...
    @abstractmethod
    def _epoch(self, fold: int, epoch: int, metrics: Mapping[str, float]) -> None: ...
    @abstractmethod
    def _fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None: ...
    @abstractmethod
    def _cv_end(self, result: CVResult) -> None: ...
    @abstractmethod
    def _cv_incomplete(self, state: str, reason: str) -> None: ...
    @abstractmethod
    def _close(self) -> None: ...


#: Every tracker, by its ``--tracker`` word, in the order they were registered (the help's order).
TRACKER_BACKENDS: dict[str, type[TrackerBackend]] = {}


def register_tracker(backend: type[TrackerBackend]) -> type[TrackerBackend]:
    """Make ``backend`` a tracker that ``--tracker`` accepts (usable as a class decorator)."""
    key = backend.key
    if key != key.strip().lower() or key in ("", "none") or "," in key:
        raise ValueError(f"a tracker's key must be a lower-case word other than 'none', not {key!r}")
    existing = TRACKER_BACKENDS.get(key)
    if existing is not None and existing is not backend:
        raise ValueError(f"tracker {key!r} is already registered ({existing.__module__}.{existing.__qualname__})")
    TRACKER_BACKENDS[key] = backend
    return backend


def tracker_files(key: str) -> Mapping[str, str]:
    """The names of the files and folders tracker ``key`` writes in a run's root, by role."""
    return TRACKER_BACKENDS[key].files


def tracker_help(scope: str = "") -> str:
    """``--tracker``'s help: the registered trackers and the default, e.g. ``scope=" for every trial"``."""
    always = [k for k, b in TRACKER_BACKENDS.items() if b.default_when == "always"]
    when = [f"{k} when {b.default_when} is set" for k, b in TRACKER_BACKENDS.items()
            if b.default_when not in (None, "always")]  # fmt: skip
    default = ", plus ".join([", ".join(always), *when] if always else when) or "none"
    return f"comma-separated trackers{scope}: {', '.join(TRACKER_BACKENDS)}, or none (default: {default})"
