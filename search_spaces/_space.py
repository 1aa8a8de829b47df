"""A search space: the parameters Optuna samples, the constants beside them, and the define-by-run.

Everything here is plain data plus module-level code, so a space and its define-by-run pickle: Ray
pickles its searcher (which holds the define-by-run) into every experiment checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from segsweep.base.errors import ConfigError
from trainer.config import CVConfig

ParamType = Literal["categorical", "int", "float"]
PARAM_TYPES: tuple[ParamType, ...] = ("categorical", "int", "float")

#: CVConfig fields every trial of a sweep takes from the sweep, never from its space, with the
#: ``sweep run`` option that sets them (sweeps.spec.SweepSpec.cv_overrides reads the same names): the
#: seed is one for all trials so that they split the same folds and their scores compare. A space
#: naming one would show a value its trials never train with, so the space loader refuses it.
SWEEP_WIDE_FIELDS: dict[str, str] = {"seed": "--seed"}

#: The values Optuna can store for a categorical parameter.
Choice = None | bool | int | float | str


class SuggestTrial(Protocol):
    """What the define-by-run needs of a trial: an ``optuna.Trial`` or Ray's wrapper around one."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


@dataclass(frozen=True)
class Param:
    """One searched CVConfig field.

    ``categorical`` draws from ``choices``; ``int`` and ``float`` draw from ``low``..``high``
    (inclusive), on a log scale when ``log`` and on a grid of ``step`` when given. ``when`` maps
    earlier parameters to the values for which this one exists (all must hold); absent, the field
    keeps its CVConfig default.
    """

    name: str
    type: ParamType
    choices: tuple[Choice, ...] = ()
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    when: Mapping[str, tuple[Choice, ...]] = field(default_factory=dict)
    #: Line of the parameter in its YAML file, for messages; not part of the space's identity.
    line: int | None = field(default=None, compare=False)

    def is_active(self, sampled: Mapping[str, Any]) -> bool:
        """Whether this parameter exists given the values sampled so far in the same trial."""
        return all(name in sampled and sampled[name] in allowed for name, allowed in self.when.items())

    def suggest(self, trial: SuggestTrial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take (used to check resumed and sampled values)."""
        if self.type == "categorical":
            return any(type(value) is type(choice) and value == choice for choice in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        if self.type == "int":
            step = int(self.step or 1)
            return isinstance(value, int) and self.low <= value <= self.high and (value - self.low) % step == 0
        # Optuna maps samples back into [low, high]; allow float rounding at the ends.
        tolerance = 1e-12 * max(abs(self.low), abs(self.high), 1.0)
        if not self.low - tolerance <= value <= self.high + tolerance:
            return False
        if self.step is None:
            return True
        steps = (value - self.low) / self.step
        return math.isclose(steps, round(steps), abs_tol=1e-6)

    def to_dict(self) -> dict[str, Any]:
        """This parameter in the YAML file format (defaults left out)."""
        spec: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            spec["choices"] = list(self.choices)
        else:
            spec["low"] = self.low
            spec["high"] = self.high
            if self.log:
                spec["log"] = True
            if self.step is not None:
                spec["step"] = self.step
        if self.when:
            spec["when"] = {
                name: allowed[0] if len(allowed) == 1 else list(allowed) for name, allowed in self.when.items()
            }
        return spec


@dataclass(frozen=True)
class SearchSpace:
    """Parameters to sample (in order: conditions refer to earlier ones) and fixed CVConfig values."""

    name: str
    params: Mapping[str, Param]
    fixed: Mapping[str, Any]
    source: str
    description: str = ""
    #: Configurations a sweep tries first (CVConfig fields, optionally a ``label``): see sweeps._start.
    start: tuple[Mapping[str, Any], ...] = ()

    @property
    def define_by_run(self) -> DefineByRun:
        """A picklable define-by-run function for ``OptunaSearch(space=...)`` or an Optuna objective."""
        return DefineByRun(self)

    def to_cv_config(self, params: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> CVConfig:
        """The configuration of one trial: fixed values, then sampled ``params``, then ``overrides``.

        ``overrides`` are the command line's (limit, image_size, folds, epochs, ...) and win over
        both; an override of ``None`` means "option not given" and is skipped.
        """
        given = {key: value for key, value in (overrides or {}).items() if value is not None}
        values = {**self.fixed, **params, **given}
        where = f"search space {self.name!r} ({self.source})"
        config = CVConfig.from_dict(values, source=where)
        try:
            config.validate()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return config

    def to_dict(self) -> dict[str, Any]:
        """The space in the YAML file format, for sweep.json; ``from_dict`` reads it back."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "params": {name: param.to_dict() for name, param in self.params.items()},
            "fixed": dict(self.fixed),
            **({"start": [dict(entry) for entry in self.start]} if self.start else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "a recorded search space") -> SearchSpace:
        """Read back ``to_dict()`` output, checked exactly like a YAML file."""
        from search_spaces._yaml import parse_space_mapping

        return parse_space_mapping(data, source)


class DefineByRun:
    """Samples a space on an Optuna trial; returns the fixed values (Ray merges them into the config).

    A module-level class rather than a closure so that Ray can pickle it with its searcher.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: SuggestTrial) -> dict[str, Any]:
        sampled: dict[str, Any] = {}
        for param in self.space.params.values():
            if param.is_active(sampled):
                sampled[param.name] = param.suggest(trial)
        return dict(self.space.fixed)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DefineByRun) and other.space == self.space

    def __hash__(self) -> int:
        return hash(self.space.name)

    def __repr__(self) -> str:
        return f"DefineByRun(space={self.space.name!r})"
