"""The typed forms of a sweep folder's two records: ``trial.json`` (:class:`TrialRecord`) and
``sweep.json`` (:class:`SweepRecord`), each with the folder's format version.

Only sweeps.folder reads and writes the files (see _records); everything else gets these objects.
A trial.json of this format or an earlier numbered one holds only :class:`TrialRecord`'s fields:
an unknown field or a value of the wrong type is refused, naming the file. A record written before
records carried a ``format`` reads as it is (fields this version does not know are left out), and
one written by a newer segsweep is refused rather than rewritten without the fields it added.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from segsweep.base.errors import SegsweepError
from sweeps.folder._layout import FORMAT_VERSION
from trainer.reporter import COMPLETE

_T = TypeVar("_T")


class DamagedRecord(SegsweepError):
    """A sweep record that does not parse and cannot be rebuilt from the others, or that holds what
    this version does not write (an unknown field, a value of the wrong type, a newer format)."""


@dataclass
class TrialRecord:
    """One trial's ``trial.json``. Every field is optional on disk: writers fill it in over the
    trial's life (None, the default, is "not recorded yet" and is not written)."""

    #: The folder's record format (sweeps.folder.FORMAT_VERSION) the record was last written in.
    format: int | None = None
    #: Ray Tune's trial id (also the trial folder's name).
    trial_id: str | None = None
    # --- written by the searcher when it proposes the trial ---
    #: Optuna's trial number in the sweep's study.
    number: int | None = None
    #: What Optuna proposed (before the sweep's overrides).
    params: dict[str, Any] | None = None
    #: When the searcher proposed it (ISO 8601, UTC).
    proposed: str | None = None
    #: The label of the starting point this trial runs (``--start``, a space's ``start:``), if any.
    start: str | None = None
    # --- written by the trainable as it runs ---
    #: The configuration the trial trains with (trainer.config.CVConfig.to_dict()).
    config: dict[str, Any] | None = None
    #: Each attempt Ray made: started, node_id, pid, restored_folds.
    attempts: list[dict[str, Any]] | None = None
    #: When the first attempt started.
    started: str | None = None
    #: Folds the cross-validation runs, and how many are done (with the running mean Dice).
    n_folds: int | None = None
    folds_done: int | None = None
    mean_dice: float | None = None
    #: True while the trial waits for a stopping sweep to end (``sweep stop``, a budget).
    parked: bool | None = None
    #: The current attempt's error (one line), cleared when the next attempt starts.
    error: str | None = None
    #: An error no retry can fix (a SegsweepError): Ray's retries end at once on it.
    fatal_reason: str | None = None
    # --- written by the driver ---
    #: RUNNING, COMPLETE, PRUNED or FAILED (trainer.reporter's run states).
    state: str | None = None
    #: Why the trial was pruned, failed or is being retried.
    reason: str | None = None
    #: The scheduler's reason for stopping the trial, written before it stops it (sweeps._paired):
    #: the driver and the trial's trackers both record it as the PRUNED reason.
    pruned_by: str | None = None
    #: When the trial ended.
    ended: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: Path | str) -> TrialRecord:
        """The record in ``values`` (read from ``source``); DamagedRecord naming the file for a field
        this version does not know, a value of the wrong type, or a newer format."""
        version = values.get("format")
        check_format(version, source)
        if version is None:  # written before records carried a format: read what is known
            values = {k: v for k, v in values.items() if k in field_types(cls)}
        problems = check_fields(cls, values)
        if problems:
            raise DamagedRecord(f"{source}: {'; '.join(problems)} (fix or remove the field; segsweep does not "
                                "rewrite a record it cannot read whole)")  # fmt: skip
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """trial.json's contents: the recorded fields (None ones are left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def updated(self, changes: dict[str, Any]) -> TrialRecord:
        """This record with ``changes`` (field name -> value; None clears the field); TypeError at once
        for a name that is not a field or a value of the wrong type (a writer's mistake, not a user's)."""
        problems = check_fields(type(self), changes)
        if problems:
            raise TypeError(f"trial.json update refused: {'; '.join(problems)}")
        return dataclasses.replace(self, **changes)

    @property
    def empty(self) -> bool:
        """Nothing recorded yet (the trial has no trial.json)."""
        return not self.to_dict()

    @property
    def all_folds_done(self) -> bool:
        """Every fold of the cross-validation finished (by the record's counts)."""
        return bool(self.n_folds) and (self.folds_done or 0) >= (self.n_folds or 0)


def may_win(state: str | None, all_folds_done: bool, dice: float) -> bool:
    """The one eligibility rule: a trial may win (be ranked) when it is COMPLETE, did every fold and
    has a finite mean Dice. The ranking applies it to fold files, the live view to trial.json."""
    return state == COMPLETE and all_folds_done and math.isfinite(dice)


@dataclass
class SweepRecord:
    """``sweep.json`` as the folder reads it: the sweep's specification, and what each run of the
    driver recorded beside it (``runs``).

    ``specification`` holds sweeps.spec.SweepSpec's fields as written (SweepSpec.from_dict reads and
    checks them); the properties are the values the folder, status and the reports show.
    """

    specification: dict[str, Any] = field(default_factory=dict)
    #: One entry per run of the driver: ended, wall_seconds, resumed, finished, stopped.
    runs: list[dict[str, Any]] = field(default_factory=list)
    format: int | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: Path | str) -> SweepRecord:
        values = dict(values)
        version = values.pop("format", None)
        if version is None and "max_failures" in values:  # sweep.json before format 1 named it so
            values["trial_retries"] = values.pop("max_failures")
        check_format(version, source)
        runs = values.pop("runs", None) or []
        if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
            raise DamagedRecord(f"{source}: 'runs' must be a list of objects, found {runs!r}")
        return cls(specification=values, runs=runs, format=version)

    def to_dict(self) -> dict[str, Any]:
        """sweep.json's contents (flat: the specification's fields, ``runs`` and ``format``)."""
        return {**self.specification, **({"runs": self.runs} if self.runs else {}), "format": FORMAT_VERSION}

    @property
    def name(self) -> str | None:
        return _optional(self.specification.get("name"), str)

    @property
    def data(self) -> str | dict[str, Any] | None:
        """The data set folder (a dict ``{"root": ...}`` in some early records)."""
        value = self.specification.get("data")
        return value if isinstance(value, str | dict) else None

    @property
    def space(self) -> Any:
        """What the user named as the search space (a name or a file)."""
        return self.specification.get("space")

    @property
    def trials(self) -> int | None:
        """The trials asked for (``--trials``)."""
        return _optional(self.specification.get("trials"), int)

    @property
    def concurrency(self) -> int | None:
        """Trials run at once (``--concurrency``, or what the driver resolved it to)."""
        return _optional(self.specification.get("concurrency"), int)

    @property
    def created(self) -> str | None:
        return _optional(self.specification.get("created"), str)

    @property
    def overrides(self) -> dict[str, Any]:
        return _optional(self.specification.get("overrides"), dict) or {}

    @property
    def skip_bad(self) -> bool:
        return bool(self.specification.get("skip_bad"))

    @property
    def mixed_precision(self) -> str | None:
        return _optional(self.specification.get("mixed_precision"), str)

    @property
    def threads(self) -> int | None:
        return _optional(self.specification.get("threads"), int)

    @property
    def warm_start(self) -> str | None:
        return _optional(self.specification.get("warm_start"), str)

    @property
    def warm_start_mode(self) -> str | None:
        return _optional(self.specification.get("warm_start_mode"), str)


def check_format(version: Any, source: Path | str) -> None:
    """DamagedRecord unless ``version`` is a format this segsweep reads (None: before formats)."""
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION):
        raise DamagedRecord(
            f"{source}: record format {version!r} is not one this segsweep reads (format {FORMAT_VERSION} "
            "and earlier); open the sweep with the segsweep version that wrote it"
        )


def _optional(value: Any, kind: type[_T]) -> _T | None:
    return value if isinstance(value, kind) and not (kind is int and isinstance(value, bool)) else None


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def field_types(record: type) -> dict[str, Any]:
    """A record class's fields and their declared types (resolved once per class)."""
    if record not in _FIELD_TYPES:
        hints = typing.get_type_hints(record)
        _FIELD_TYPES[record] = {f.name: hints[f.name] for f in dataclasses.fields(record)}
    return _FIELD_TYPES[record]


def check_fields(record: type, values: dict[str, Any]) -> list[str]:
    """What in ``values`` is not a field of ``record`` or not of the field's type, one phrase each."""
    types_of = field_types(record)
    unknown = sorted(set(values) - set(types_of))
    problems = [f"unknown field(s) {', '.join(map(repr, unknown))}"] if unknown else []
    problems += [
        f"{name!r} must be {_type_name(types_of[name])}, found {value!r}"
        for name, value in values.items()
        if name in types_of and not _is_instance(value, types_of[name])
    ]
    return problems


def _is_instance(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType):
        return any(_is_instance(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    kind = typing.get_origin(hint) or hint
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(hint: Any) -> str:
    return " or ".join(
        "null" if arg is type(None) else (typing.get_origin(arg) or arg).__name__
        for arg in (typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,))
    )
