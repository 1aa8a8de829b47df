"""Say when the space is too small: a winner at the edge of a numeric range, with the evidence that the
optimum lies beyond it, the range widened, and the ``sweep run --warm-start`` command that searches it.

Two rules, each on the sweep's own records (:func:`edge_flags` is pure over them):

- **epochs at its upper bound, still improving.** The winner trained for the largest ``epochs`` the
  space allows, and in most of its folds (more than half) validation IoU was still rising at the
  end: the best ``val_iou`` of the last :data:`IMPROVING_WINDOW` epochs is above the best of the
  epochs before, with no learning-rate cut at the end of the epoch before that window or of any epoch
  in it. The window is the plateau rule's default patience (CVConfig.lr_patience, 3): it cuts the rate
  once ``val_iou`` has not improved for that long, so a fold that improved within it had not
  plateaued. A cut inside the window is excluded because the jump after a cut is the schedule's
  annealing, not evidence that more epochs at the trained rate would help.
- **any other numeric bound, with the best trials crowding toward it.** The winner lies in the
  outer :data:`AT_BOUND` (10 %) of the range on one side (on the log scale for a log parameter), and
  the best :data:`CROWD_TOP` ranked trials (the winner among them) all lie in the outer
  :data:`CROWD_SHARE` (quarter) on that side. Spread by chance, three trials fall in one given
  quarter with probability 1/64; a sweep whose best three all do there is pointing past the bound.
  Epochs' upper side is judged by the histories only (the first rule): whether more epochs would help
  is what a fold's curve shows, not where trials crowd.

A parameter the sweep's options replaced (``--epochs 1``) is not judged: its trials never ran the
space's values. The space is the one recorded in sweep.json (``space_definition``), never a file or
built-in read now: those may have changed since (a built-in widened in a later segsweep).

The widened range: epochs' upper bound doubled; another bound moved out by the range's own width
(the log-width for a log parameter), so the new range is twice the old on the scale it samples;
a positive lower bound that would reach 0 or below is halved instead. With epochs widened, the winner
itself at the widened most epochs joins the space's ``start:`` (the configuration the rising curves
point to: the warm start reruns the winner only as it was). The widened space is written by
``segsweep report`` beside the report (:data:`WIDENED_SPACE_FILE`); ``sweep status`` and the report
both print the same command for it.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segsweep.base.errors import ConfigError
from sweeps.folder._ranking import format_value, is_eligible, rank_trials
from sweeps.folder._sweep_results import SweepResults, TrialResult
from trainer.config import CVConfig

if TYPE_CHECKING:
    from search_spaces import Param, SearchSpace

#: The epochs parameter, judged by the winner's histories.
EPOCHS = "epochs"
#: Last epochs of a fold in which validation IoU must still improve: the plateau rule's default patience.
IMPROVING_WINDOW = CVConfig.lr_patience
#: The winner is at a bound when it lies within this share of the range from it.
AT_BOUND = 0.10
#: The best trials that must all lie near the same bound ...
CROWD_TOP = 3
#: ... within this share of the range from it.
CROWD_SHARE = 0.25
#: The widened space, written by ``segsweep report`` beside report.md.
WIDENED_SPACE_FILE = "widened-space.yaml"
UPPER, LOWER = "upper", "lower"


@dataclass(frozen=True)
class EdgeFlag:
    """One parameter of the winner at the edge of its range, why the optimum may lie beyond, and the range
    widened (None when segsweep's limits leave no wider valid range: ``why_not_widened`` says so)."""

    param: str
    side: str  # UPPER or LOWER
    value: float
    low: float
    high: float
    log: bool
    evidence: str
    widened: dict[str, Any] | None
    why_not_widened: str | None = None

    def sentence(self) -> str:
        """``The winner's epochs 14 is at the upper bound of the space's range 6 to 14, and ...``."""
        scale = " (log scale)" if self.log else ""
        beyond = "above" if self.side == UPPER else "below"
        bound = self.high if self.side == UPPER else self.low
        return (
            f"Space too small? The winner's {self.param} {format_value(self.value)} is at the {self.side} bound of "
            f"the space's range {format_value(self.low)} to {format_value(self.high)}{scale}, and {self.evidence}: "
            f"the best {self.param} may lie {beyond} {format_value(bound)}."
        )

    def widened_text(self) -> str:
        """``epochs: {type: int, low: 6, high: 28, step: 2}`` (or why no wider range is valid)."""
        if self.widened is None:
            return f"{self.param}: not widened ({self.why_not_widened})"
        import yaml

        # As YAML writes it, so the line can be pasted into a space file (1.0e-06: PyYAML reads 1e-06 as text).
        flow = yaml.safe_dump(self.widened, default_flow_style=True, sort_keys=False, width=1 << 16)
        return f"{self.param}: {flow.strip()}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SpaceEdges:
    """The sweep's edge flags, its space widened where it can be, and the command that searches it."""

    flags: list[EdgeFlag]
    #: The widened space in the YAML file format (None when no flag could widen its range).
    widened_space: dict[str, Any] | None
    sweep: SweepResults
    #: The winner at the widened epochs, added to the widened space's ``start:`` (None without an epochs flag).
    longer_winner: dict[str, Any] | None = None

    def command(self, space_file: Path | str) -> str:
        """``segsweep sweep run --warm-start NAME --space FILE ...``: this sweep's data, options and
        trials, in the widened space, as a new sweep beside this one."""
        from sweeps.spec import RUN_OPTION_BY_KEY

        spec = self.sweep.spec
        data = spec.data if isinstance(spec.data, str) else (spec.data or {}).get("root")
        args: list[tuple[str, Any]] = [
            ("warm_start", self.sweep.name),
            # Absolute, so the command runs from any folder (--storage and --out may have been relative).
            ("storage", self.sweep.path.parent.absolute()),
            ("space", Path(space_file).absolute()),
            ("data", data),
            ("name", new_sweep_name(self.sweep.name)),
            ("trials", spec.trials or len(self.sweep.trials)),
        ]
        # The options that decide what a trial computes, so the new sweep's trials compare with this one's.
        args += [(k, v) for k, v in spec.overrides.items() if v is not None and k in RUN_OPTION_BY_KEY]
        seed = spec.specification.get("seed")
        if isinstance(seed, int) and seed:
            args.append(("seed", seed))
        return "segsweep sweep run " + " ".join(
            f"{RUN_OPTION_BY_KEY[k].flag} {shlex.quote(str(v))}" for k, v in args if v is not None
        )

    def lines(self, space_file: Path | str, *, written: bool) -> list[str]:
        """The flags, the widened ranges and the command, as text lines for status and the report.

        ``written``: the report wrote ``space_file``; ``sweep status`` only names where the report
        writes it (status writes nothing)."""
        from sweeps._start import LABEL_KEY, WARM_START_TOP

        lines = [flag.sentence() for flag in self.flags]
        if self.widened_space is None:
            return lines
        lines.append("Widened: " + "; ".join(flag.widened_text() for flag in self.flags) + ".")
        where = f"wrote {space_file}" if written else f"`segsweep report {self.sweep.name}` writes {space_file}"
        runs_first = (
            f"its best {min(WARM_START_TOP, len(self.sweep.completed()))} trials run again first as starting points"
        )
        if self.widened_space.get("start"):
            runs_first += ", then the widened space's `start:` entries"
        if self.longer_winner is not None:
            longer = self.longer_winner
            runs_first += f", among them the winner at {longer[EPOCHS]} epochs ({longer[LABEL_KEY]})"
        lines.append(
            f"To search the widened space ({where}: this sweep's space with those ranges widened), starting "
            f"from this sweep: `{self.command(space_file)}` (add your other options, e.g. --concurrency). "
            "The widened space is another space, so the warm start cannot hand this sweep's trials to the "
            f"sampler: {runs_first}, all counted in --trials; then the sampler proposes from the wider ranges."
        )
        return lines

    def to_dict(self, space_file: Path | str) -> dict[str, Any]:
        return {
            "rule": (
                f"epochs at its upper bound with validation IoU still rising in more than half the winner's folds "
                f"(best of the last {IMPROVING_WINDOW} epochs above the best before, no learning-rate cut there); "
                f"another numeric parameter within {AT_BOUND:.0%} of a bound with the best {CROWD_TOP} trials all "
                f"within {CROWD_SHARE:.0%} of it"
            ),
            "flags": [flag.to_dict() for flag in self.flags],
            "widened_space_file": str(space_file) if self.widened_space is not None else None,
            "command": self.command(space_file) if self.widened_space is not None else None,
            "longer_winner": self.longer_winner,
        }


def new_sweep_name(name: str) -> str:
    """The widened sweep's name: this one's with ``-wide`` (within a sweep name's 100 characters)."""
    return f"{name[:95]}-wide"


def recorded_space(sweep: SweepResults) -> SearchSpace | None:
    """The space sweep.json recorded (a SearchSpace), or None for a sweep that recorded none or one that
    no longer reads (edges are then not judged)."""
    from search_spaces import SearchSpace

    definition = sweep.spec.specification.get("space_definition")
    if not isinstance(definition, dict) or not definition:
        return None
    try:
        return SearchSpace.from_dict(definition, source=f"the space of sweep {sweep.name!r}")
    except ConfigError:
        return None


def space_edges(sweep: SweepResults) -> SpaceEdges | None:
    """The sweep's edge flags with the widened space; None while nothing is flagged (or no space is recorded)."""
    space = recorded_space(sweep)
    if space is None:
        return None
    flags = edge_flags(sweep.trials, space, sweep.spec.overrides)
    if not flags:
        return None
    widened = widened_space(space, flags)
    longer = None
    if widened is not None and any(f.param == EPOCHS and f.widened is not None for f in flags):
        longer = longer_winner(widened, sweep.completed()[0], sweep.name)
        if longer is not None:
            widened["start"] = [*widened.get("start", []), longer]
    return SpaceEdges(flags, widened, sweep, longer)


def edge_flags(trials: Sequence[TrialResult], space: SearchSpace, overrides: Mapping[str, Any]) -> list[EdgeFlag]:
    """The winner's parameters at the edge of ``space``'s numeric ranges where the records say the optimum
    lies beyond (the module's two rules); [] while no trial may win."""
    ranked = [t for t in rank_trials(trials) if is_eligible(t)]
    if not ranked:
        return []
    winner = ranked[0]
    flags: list[EdgeFlag] = []
    for name, param in space.params.items():
        if param.type == "categorical" or overrides.get(name) is not None or name in winner.overridden:
            continue
        value = winner.ran_with.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # not searched for the winner (a condition left it out)
        low, high = _bounds(param)[0], _grid_top(param)
        if high <= low:
            continue
        side = _at_bound(param, value, AT_BOUND)
        if name == EPOCHS and side == UPPER:  # judged by the winner's histories only
            evidence = _still_improving(winner) if value >= high else None
        else:
            evidence = _crowding(ranked, param, side) if side is not None else None
        if side is None or evidence is None:
            continue
        widened, why_not = _widen(space, param, side)
        flags.append(EdgeFlag(name, side, float(value), low, _bounds(param)[1], param.log, evidence, widened, why_not))
    return flags


def _bounds(param: Param) -> tuple[float, float]:
    """A numeric parameter's ``low`` and ``high`` (the space loader requires both)."""
    assert param.low is not None and param.high is not None
    return float(param.low), float(param.high)


def _grid_top(param: Param) -> float:
    """The largest value an int or stepped parameter can take (``high`` unless the step overshoots it)."""
    low, high = _bounds(param)
    if param.step is None:
        return high
    return low + param.step * math.floor((high - low) / param.step + 1e-9)


def _position(param: Param, value: float) -> float:
    """Where ``value`` lies in the range, 0 at ``low`` to 1 at its top, on the scale the space samples."""
    low, high = _bounds(param)[0], _grid_top(param)
    if param.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def _at_bound(param: Param, value: float, share: float) -> str | None:
    """UPPER or LOWER when ``value`` lies within ``share`` of the range from that bound."""
    where = _position(param, value)
    return UPPER if where >= 1 - share else LOWER if where <= share else None


def _still_improving(winner: TrialResult) -> str | None:
    """Why the winner's validation IoU was still rising at its last epochs (the module's first rule), or None."""
    judged = [f for f in winner.folds if len(f.history) > IMPROVING_WINDOW]
    rising = 0
    for fold in judged:
        last = len(fold.history)
        scores = [h.val_iou for h in fold.history]
        before = [s for s in scores[: last - IMPROVING_WINDOW] if math.isfinite(s)]
        window = [s for s in scores[last - IMPROVING_WINDOW :] if math.isfinite(s)]
        cut = any(last - IMPROVING_WINDOW <= epoch <= last for epoch in fold.lr_drops)
        rising += bool(before and window and max(window) > max(before) and not cut)
    if not judged or 2 * rising <= len(judged):
        return None
    return (
        f"its validation IoU was still rising at the end in {rising} of {len(judged)} folds (the best of the last "
        f"{IMPROVING_WINDOW} epochs above the best before them, with no learning-rate cut)"
    )


def _crowding(ranked: Sequence[TrialResult], param: Param, side: str) -> str | None:
    """Why the best trials point past the bound on ``side`` (the module's second rule), or None."""
    values = [t.ran_with.get(param.name) for t in ranked[:CROWD_TOP]]
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) < CROWD_TOP or any(_at_bound(param, v, CROWD_SHARE) != side for v in numbers):
        return None
    share = "lowest" if side == LOWER else "highest"
    shown = ", ".join(format_value(v) for v in numbers)
    return f"the best {CROWD_TOP} trials all lie in the {share} quarter of it ({param.name} {shown})"


def _widen(space: SearchSpace, param: Param, side: str) -> tuple[dict[str, Any] | None, str | None]:
    """``param`` with its range widened on ``side`` (the module's rule) in the YAML format, checked as a
    space file would be; (None, why) when no wider range is valid (segsweep's limits)."""
    old_low, old_high = _bounds(param)
    low, high = old_low, old_high
    if param.name == EPOCHS and side == UPPER:
        high = 2 * old_high
    elif param.log:
        ratio = old_high / old_low
        low, high = (old_low / ratio, old_high) if side == LOWER else (old_low, old_high * ratio)
    elif side == UPPER:
        high = old_high + (old_high - old_low)
    else:
        low = old_low - (old_high - old_low)
        if old_low > 0 >= low:  # a positive parameter stays positive
            low = old_low / 2
    new_low: int | float
    new_high: int | float
    if param.type == "int":
        step = int(param.step or 1)
        # Whole steps below the old lower bound, so the new range keeps the grid the space sampled on.
        new_low = int(old_low) - step * math.ceil((old_low - low) / step)
        if new_low < 1 <= old_low:  # an int that was positive stays positive (batch size, epochs, patience)
            new_low = int(old_low) - step * ((int(old_low) - 1) // step)
        new_high = round(high)
    else:
        new_low, new_high = _three_digits(low), _three_digits(high)  # 3e-05, not 2.9999999999999997e-05
    if (new_low, new_high) == (old_low, old_high):
        return None, f"{param.name} {format_value(old_low)} is already the smallest it can be"
    widened = dataclasses.replace(param, low=new_low, high=new_high)
    candidate = {**space.to_dict(), "params": {**space.to_dict()["params"], param.name: widened.to_dict()}}
    try:
        from search_spaces import SearchSpace

        SearchSpace.from_dict(candidate, source=f"{param.name} widened")
    except ConfigError as exc:
        return None, str(exc)
    return widened.to_dict(), None


def _three_digits(value: float) -> float:
    return float(f"{value:.3g}")


def widened_space(space: SearchSpace, flags: Sequence[EdgeFlag]) -> dict[str, Any] | None:
    """``space`` in the YAML file format with each flagged range widened; None when none could be."""
    changed = {flag.param: flag.widened for flag in flags if flag.widened is not None}
    if not changed:
        return None
    values = space.to_dict()
    values.pop("source", None)
    described = ", ".join(f"{name} {v['low']} to {v['high']}" for name, v in changed.items())
    values["name"] = f"{space.name}-widened"
    values["description"] = f"{space.name} with {described} (widened by segsweep: the winner was at the edge)"
    values["params"] = {**values["params"], **changed}
    return values


def longer_winner(widened: Mapping[str, Any], winner: TrialResult, sweep_name: str) -> dict[str, Any] | None:
    """With epochs widened, the winner itself at the widened range's most epochs, as a ``start:`` entry: the
    configuration the winner's rising histories point to (the warm start reruns the winner only as it was)."""
    from search_spaces import SearchSpace
    from sweeps._start import LABEL_KEY

    param = SearchSpace.from_dict(widened).params.get(EPOCHS)
    if param is None:
        return None
    epochs = round(_grid_top(param))
    return {LABEL_KEY: f"{sweep_name}/{winner.trial_id}-{epochs}-epochs", **winner.ran_with, EPOCHS: epochs}


def widened_space_yaml(edges: SpaceEdges) -> str:
    """The widened space as a YAML file: a header that says where it came from, then the space."""
    import yaml

    assert edges.widened_space is not None
    header = [
        f"# Sweep {edges.sweep.name}'s space with the ranges its winner sat at the edge of widened "
        "(written by `segsweep report`).",
        *(f"# {line}" for flag in edges.flags for line in [flag.sentence()]),
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(edges.widened_space, sort_keys=False)


__all__ = [
    "AT_BOUND",
    "CROWD_SHARE",
    "CROWD_TOP",
    "IMPROVING_WINDOW",
    "WIDENED_SPACE_FILE",
    "EdgeFlag",
    "SpaceEdges",
    "edge_flags",
    "space_edges",
    "widened_space",
    "widened_space_yaml",
]
