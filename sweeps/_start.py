"""Starting points and warm starts: the configurations a sweep tries before its sampler's own.

A starting point is a configuration the user already knows (a report's best.json, a ``cv`` output's
cv.json, an entry of a YAML list, an entry of a space's ``start:``), given as CVConfig fields. It may
be partial: searched fields it leaves out are sampled, fixed ones come from the space, and the data
and fold settings (:data:`SWEEP_OWNED_FIELDS`) are always the sweep's. Every field it gives must lie
in the space: a searched value within its range or choices, any other field at the space's value.

Starting points enter the Optuna study as enqueued trials (``study.enqueue_trial``: Ray's
``points_to_evaluate`` is ignored for a define-by-run space, ray-project/ray#35319), so they are the
first trials asked for, count toward ``--trials``, and carry their label in the study's user
attribute :data:`~sweeps.folder.STUDY_START_ATTR` (and in trial.json's ``start``).

``--warm-start SWEEP`` hands an earlier sweep's scored trials to the sampler (``study.add_trials``)
when it ran on the same data, space and overrides; otherwise its best :data:`WARM_START_TOP` trials
become starting points.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segsweep.base.errors import ConfigError
from sweeps.folder import (
    OBJECTIVE,
    STUDY_START_ATTR,
    STUDY_WARM_START_ATTR,
    SweepFolder,
    load_sweep,
    read_spec_record,
)
from trainer.config import CVConfig

if TYPE_CHECKING:
    import optuna

    from search_spaces import SearchSpace
    from sweeps.spec import SweepSpec

#: Fields a starting point may give but the sweep decides: the data, the folds and their seed are
#: prepared once for all trials, so a start from another sweep's best.json runs on this sweep's.
SWEEP_OWNED_FIELDS = ("folds", "image_size", "limit", "dev_split", "val_split", "seed")
#: How many of an earlier sweep's best trials become starting points when its data or space differ.
WARM_START_TOP = 3
#: The one key of a start entry that is not a CVConfig field: its name in status and report.
LABEL_KEY = "label"


@dataclass(frozen=True)
class StartEntry:
    """A starting point as given: its label, where it came from, and the CVConfig fields it sets."""

    label: str
    source: str
    values: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StartEntry:
        return cls(label=str(values["label"]), source=str(values["source"]), values=dict(values["values"]))


@dataclass(frozen=True)
class StartPoint:
    """A starting point checked against the space: the searched parameters it fixes."""

    label: str
    source: str
    params: dict[str, Any]


def read_start_file(path: str | Path) -> list[StartEntry]:
    """The starting points of ``--start FILE``: best.json / cv.json (their ``config``), a YAML or
    JSON list of configurations (each may carry a ``label``), or one configuration mapping."""
    import yaml

    from trainer.config import yaml_error_line

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"--start {path}: cannot read it ({exc.strerror}); give a best.json, cv.json or YAML list"
        ) from None
    try:
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--start {path}, line {exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_line(f"--start {path}", exc)) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("config"), dict):  # best.json, cv.json
        if "sweep" in loaded and "trial_id" in loaded:
            label = f"{loaded['sweep']}/{loaded['trial_id']}"
        else:
            label = path.parent.name or path.stem
        return [StartEntry(label=label, source=str(path), values=dict(loaded["config"]))]
    entries = loaded if isinstance(loaded, list) else [loaded]
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(
            f"--start {path}: expected a best.json, a cv.json, or a list of configurations (mappings of "
            "configuration fields); fix the file"
        )
    return start_entries(entries, str(path))


def start_entries(entries: Sequence[Mapping[str, Any]], source: str) -> list[StartEntry]:
    """Entries of a YAML list (a ``--start`` file, a space's ``start:``), labelled ``label`` or by position."""
    result = []
    for number, entry in enumerate(entries, start=1):
        values = dict(entry)
        label = values.pop(LABEL_KEY, None)
        result.append(StartEntry(label=str(label or f"{Path(source).name}#{number}"), source=source, values=values))
    return result


def resolve_start_points(
    entries: Sequence[StartEntry], space: SearchSpace, overrides: Mapping[str, Any]
) -> list[StartPoint]:
    """Each entry as the parameters it fixes, or a one-line ConfigError naming its file and field."""
    return [_resolve(entry, space, overrides) for entry in entries]


def _resolve(entry: StartEntry, space: SearchSpace, overrides: Mapping[str, Any]) -> StartPoint:
    where = f"{entry.source}: starting point {entry.label!r}"
    # Unknown fields and wrong types: CVConfig's own check, with its list of valid keys.
    coerced = CVConfig.from_dict(entry.values, source=where).to_dict()
    given = {name: coerced[name] for name in entry.values}
    defaults = CVConfig().to_dict()
    params: dict[str, Any] = {}
    for name, value in given.items():
        if name in SWEEP_OWNED_FIELDS or overrides.get(name) is not None:
            continue  # the sweep's data, folds and command-line overrides win for every trial
        if name in space.params:
            param = space.params[name]
            if not param.contains(value):
                allowed = (
                    f"choices {list(param.choices)}"
                    if param.type == "categorical"
                    else f"range {param.low} to {param.high}" + (f" in steps of {param.step}" if param.step else "")
                )
                raise ConfigError(
                    f"{where}: {name} {value!r} lies outside the space {space.name!r} ({allowed}); change the "
                    "starting point or widen the space"
                )
            params[name] = value
            continue
        expected = space.fixed.get(name, defaults[name])
        if not _same(value, expected):
            how = "fixes" if name in space.fixed else "does not search (it runs at the default)"
            raise ConfigError(
                f"{where}: {name} {value!r} lies outside the space {space.name!r}, which {how} {name} "
                f"{expected!r}; drop {name} from the starting point or use a space that searches it"
            )
    for name in list(params):
        param = space.params[name]
        if not param.is_active(params) and not _same(params[name], defaults[name]):
            conditions = ", ".join(f"{k} in {list(v)}" for k, v in param.when.items())
            raise ConfigError(
                f"{where}: {name} {params[name]!r} is searched only when {conditions}; give those values or drop {name}"
            )
        if not param.is_active(params):
            del params[name]
    return StartPoint(label=entry.label, source=entry.source, params=params)


def _same(value: Any, expected: Any) -> bool:
    """Equal as configuration values: numbers within float rounding, a bool only to a bool."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return type(value) is type(expected) and value == expected
    if isinstance(value, int | float) and isinstance(expected, int | float):
        return math.isclose(float(value), float(expected), rel_tol=1e-9)
    return bool(value == expected)


def sweep_start_points(spec: SweepSpec, space: SearchSpace) -> list[StartPoint]:
    """The sweep's starting points in the order they run: ``--start`` files (and a warm start's
    top trials), then the space's ``start:``; checked against the space."""
    entries = [StartEntry.from_dict(e) for e in spec.start]
    entries += start_entries(space.start, space.source)
    return resolve_start_points(entries, space, spec.cv_overrides())


def enqueue_start_points(study: optuna.Study, points: Sequence[StartPoint]) -> int:
    """Enqueue the starting points the study does not hold yet; return how many were enqueued.

    A resumed sweep (or a start whose configuration a warm start already scored) finds them there:
    a starting point is skipped when a trial with its label, or with its parameters, exists in the
    study in any state but FAIL.
    """
    from optuna.trial import TrialState

    held = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]
    labels = {t.user_attrs.get(STUDY_START_ATTR) for t in held}
    enqueued = 0
    for point in points:
        fixed = [t.system_attrs.get("fixed_params", t.params) for t in held]
        if point.label in labels or any(_covers(p, point.params) for p in fixed):
            continue
        study.enqueue_trial(point.params, user_attrs={STUDY_START_ATTR: point.label})
        held = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]
        labels.add(point.label)
        enqueued += 1
    return enqueued


def _covers(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a trial's parameters equal the starting point's (on the same names)."""
    return set(existing) == set(wanted) and all(_same(wanted[k], existing[k]) for k in wanted)


# --- warm start ---------------------------------------------------------------------------------


def warm_start_folder(spec: SweepSpec) -> SweepFolder:
    """The earlier sweep ``--warm-start`` names: a sweep in --storage, or a sweep folder's path."""
    given = Path(str(spec.warm_start))
    folder = SweepFolder(given) if SweepFolder(given).exists() else SweepFolder.at(spec.storage, str(spec.warm_start))
    if not folder.exists():
        raise ConfigError(
            f"--warm-start {spec.warm_start}: no sweep there (neither a sweep folder nor a sweep in {spec.storage}); "
            "name an earlier sweep"
        )
    return folder


def space_identity(definition: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two recorded spaces the same search: their parameters and fixed values."""
    return {"params": definition.get("params", {}), "fixed": definition.get("fixed", {})}


def _recorded_spec(record: Mapping[str, Any], source: str) -> SweepSpec:
    """An earlier sweep's sweep.json as a SweepSpec (a record may lack fields a new spec needs)."""
    from sweeps.spec import SweepSpec

    return SweepSpec.from_dict({"name": "", "data": "", "space": "", "trials": 1, "storage": "", **record}, source)


def warm_start_matches(earlier: Mapping[str, Any], spec: SweepSpec, data_key: str) -> str | None:
    """None when the earlier sweep's trials can teach this sweep's sampler; else why not."""
    if earlier.get("data_key") != data_key:
        return "it ran on other data"
    if space_identity(earlier.get("space_definition") or {}) != space_identity(spec.space_definition):
        return "it searched another space"
    if _recorded_spec(earlier, "the --warm-start sweep's sweep.json").cv_overrides() != spec.cv_overrides():
        return "it ran with other overrides (image size, folds, epochs, limit, split or seed)"
    return None


def warm_start_trials(folder: SweepFolder, space: SearchSpace) -> list[optuna.trial.FrozenTrial]:
    """The earlier sweep's scored trials (every fold COMPLETE), from its records, as Optuna trials
    of ``space``: their parameters, mean Dice, and the distributions the space samples them from."""
    import optuna

    from sweeps._optuna import replayed_in_space
    from sweeps.folder import is_eligible

    trials = []
    for trial in load_sweep(folder.storage, folder.name).trials:
        if not is_eligible(trial):
            continue
        asked = replayed_in_space(space, trial.params)  # the space's distributions for these values
        trials.append(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE,
                value=trial.mean[OBJECTIVE.metric],
                params=asked.params,
                distributions=asked.distributions,
                user_attrs={STUDY_WARM_START_ATTR: f"{folder.name}/{trial.trial_id}"},
            )
        )
    return trials


def warm_start_entries(folder: SweepFolder) -> list[StartEntry]:
    """The earlier sweep's best :data:`WARM_START_TOP` trials as starting points (other data or space).

    Each gives the configuration it trained with, less the fields that sweep's options set (its
    ``--epochs 1`` was not its space's choice)."""
    earlier = load_sweep(folder.storage, folder.name)
    set_by_options = set(_recorded_spec(earlier.spec.specification, str(folder.spec_file)).cv_overrides())
    return [
        StartEntry(
            label=f"{folder.name}/{trial.trial_id}",
            source=f"--warm-start {folder.name}",
            values={k: v for k, v in trial.config.items() if k not in set_by_options},
        )
        for trial in earlier.completed()[:WARM_START_TOP]
    ]


def prepare_warm_start(spec: SweepSpec, space: SearchSpace, data_key: str) -> list[optuna.trial.FrozenTrial]:
    """Settle ``--warm-start`` for a new sweep: the trials to add to its study (same data, space and
    overrides), or none, with the earlier sweep's top trials added to ``spec.start`` instead.

    Records the outcome in ``spec.warm_start_mode`` (said by status and report)."""
    folder = warm_start_folder(spec)
    earlier = read_spec_record(folder).specification
    why_not = warm_start_matches(earlier, spec, data_key)
    if why_not is None:
        trials = warm_start_trials(folder, space)
        if spec.warm_start_mode is None:
            spec.warm_start_mode = f"{len(trials)} scored trials of sweep {folder.name!r} given to the sampler"
        return trials
    if spec.warm_start_mode is not None:  # a resumed sweep: settled on its first run
        return []
    entries = []
    for entry in warm_start_entries(folder):
        try:  # another space may not hold an earlier winner: say so, and start from the others
            _resolve(entry, space, spec.cv_overrides())
        except ConfigError as exc:
            print(f"[segsweep] --warm-start: not a starting point here: {exc}", flush=True)
            continue
        entries.append(entry)
    spec.start = [*spec.start, *(e.to_dict() for e in entries)]
    spec.warm_start_mode = f"sweep {folder.name!r} {why_not}: its best {len(entries)} trials became starting points"
    return []


def add_warm_start_trials(study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Add the earlier sweep's trials the study does not hold yet (a resumed sweep holds them)."""
    held = {t.user_attrs.get(STUDY_WARM_START_ATTR) for t in study.get_trials(deepcopy=False)}
    missing = [t for t in trials if t.user_attrs.get(STUDY_WARM_START_ATTR) not in held]
    study.add_trials(missing)
    return len(missing)
