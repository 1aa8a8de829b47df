"""Reading a search space from YAML, with errors that name the file, the line and the fix.

The file is composed into PyYAML's node tree (not loaded straight to dicts) so that every key and
value keeps its line. Format::

    name: my-space              # optional; defaults to the file's stem
    description: free text      # optional
    params:                     # CVConfig fields to search, in order
      encoder: {type: categorical, choices: [mobilenetv2, resnet18]}
      weights: {type: categorical, choices: [imagenet, none]}
      lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      epochs: {type: int, low: 10, high: 40, step: 5}
      lr_factor: {type: float, low: 0.1, high: 0.5, when: {weights: imagenet}}
    fixed:                      # CVConfig fields held constant
      image_size: 256
      folds: 10
    start:                      # optional: configurations the sweep tries first (sweeps._start)
      - {label: known-good, encoder: resnet18, weights: none, lr: 1.0e-3}
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from search_spaces._space import PARAM_TYPES, SWEEP_WIDE_FIELDS, Choice, Param, ParamType, SearchSpace
from segsweep.base.errors import ConfigError
from segsweep.base.secrets import MASK, redact_params
from trainer.config import CVConfig, did_you_mean, yaml_error_line

TOP_KEYS = ("name", "description", "params", "fixed", "start")
PARAM_KEYS = ("type", "choices", "low", "high", "log", "step", "when")
#: Int ranges up to this many values are checked value by value against CVConfig.validate().
_MAX_CHECKED_VALUES = 10_000


@dataclass(frozen=True)
class _FieldKind:
    """A CVConfig field's type, read from its annotation (``int``, ``str | None``, ...)."""

    base: str
    optional: bool

    def describe(self) -> str:
        words = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
        text = words.get(self.base, f"a {self.base}")
        return f"{text} or null" if self.optional else text


def _field_kinds() -> dict[str, _FieldKind]:
    kinds = {}
    for f in dataclasses.fields(CVConfig):
        parts = [part.strip() for part in str(f.type).split("|")]
        base = parts[0].split("[")[0]
        kinds[f.name] = _FieldKind(base=base, optional="None" in parts[1:])
    return kinds


FIELD_KINDS: dict[str, _FieldKind] = _field_kinds()
#: Fields a space may search: everything but the free-form ``extra`` mapping.
SEARCHABLE = tuple(name for name, kind in FIELD_KINDS.items() if kind.base != "dict")


class _Reader:
    """Walks one composed YAML document, raising ConfigError at the first problem."""

    def __init__(self, loader: yaml.SafeLoader, source: str, show_lines: bool) -> None:
        self.loader = loader
        self.source = source
        self.show_lines = show_lines

    # -- locating and constructing ---------------------------------------------------------------

    def at(self, node: yaml.Node) -> str:
        if not self.show_lines:
            return self.source
        return f"{self.source}, line {node.start_mark.line + 1}"

    def fail(self, node: yaml.Node, message: str) -> ConfigError:
        return ConfigError(f"{self.at(node)}: {message}")

    def value(self, node: yaml.Node) -> Any:
        return self.loader.construct_object(node, deep=True)

    def scalar(self, node: yaml.Node, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value, not a list or mapping")
        return self.value(node)

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The entries of a mapping node by key, rejecting duplicate keys (PyYAML keeps the last)."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping of names to values (`key: value` lines)")
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str):
                raise self.fail(key_node, f"{what}: keys must be names, got {key!r}")
            if key in entries:
                first = entries[key][0].start_mark.line + 1
                raise self.fail(key_node, f"{what}: {key!r} appears twice (first on line {first}); keep one")
            entries[key] = (key_node, value_node)
        return entries

    def items(self, node: yaml.Node) -> Iterator[yaml.Node]:
        """A sequence node's items, or a lone scalar as a one-item sequence."""
        if isinstance(node, yaml.SequenceNode):
            yield from node.value
        else:
            yield node

    # -- the document ------------------------------------------------------------------------------

    def space(self, root: yaml.Node | None, default_name: str) -> SearchSpace:
        if root is None:
            raise ConfigError(
                f"{self.source}: the file is empty; write a `params:` mapping of CVConfig fields to search "
                "(see search_spaces/builtin/paper.yaml)"
            )
        top = self.mapping(root, "a search space")
        for key, (key_node, _) in top.items():
            if key not in TOP_KEYS:
                raise self.fail(
                    key_node,
                    f"unknown key {key!r}; {did_you_mean(key, TOP_KEYS)}a search space file has {', '.join(TOP_KEYS)}",
                )
        name = default_name
        if "name" in top:
            name = self.scalar(top["name"][1], "name")
            if not isinstance(name, str) or not name:
                raise self.fail(top["name"][1], f"name must be a non-empty string, got {name!r}")
        description = ""
        if "description" in top:
            description = self.scalar(top["description"][1], "description")
            if not isinstance(description, str):
                raise self.fail(top["description"][1], "description must be text")
        fixed = self.fixed(top["fixed"][1]) if "fixed" in top else {}
        if "params" not in top:
            raise self.fail(root, "no `params:` mapping; add the CVConfig fields to search under `params:`")
        params = self.params(top["params"][1], fixed)
        start = self.start(top["start"][1]) if "start" in top else ()
        return SearchSpace(
            name=name, params=params, fixed=fixed, source=self.source, description=description, start=start
        )

    def start(self, node: yaml.Node) -> tuple[dict[str, Any], ...]:
        """The space's starting points: a list of mappings of CVConfig fields (and a ``label``).

        Checked against the space when a sweep starts (sweeps._start), with the sweep's overrides."""
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, "start must be a list of configurations (`- {encoder: resnet18, lr: 1.0e-3}`)")
        entries = []
        for item in node.value:
            fields = self.mapping(item, "a starting point")
            entries.append({key: self.value(value) for key, (_, value) in fields.items()})
        return tuple(entries)

    def fixed(self, node: yaml.Node) -> dict[str, Any]:
        fixed: dict[str, Any] = {}
        if isinstance(node, yaml.ScalarNode) and self.value(node) is None:
            return fixed
        for key, (key_node, value_node) in self.mapping(node, "fixed").items():
            self.check_field(key_node, key, "fixed", allow_extra=True)
            value = self.coerce(value_node, key, self.value(value_node))
            fixed[key] = value
            # Each value is checked on top of those before it, so a problem is pinned to its line.
            # The value is shown without secret-like keys: the message must not carry a token it refuses.
            shown = redact_params({key: value}).get(key, MASK)
            self.check_config(value_node, fixed, f"fixed {key}: {shown!r} cannot be used")
        return fixed

    def params(self, node: yaml.Node, fixed: dict[str, Any]) -> dict[str, Param]:
        entries = self.mapping(node, "params")
        if not entries:
            raise self.fail(node, "params is empty; list at least one CVConfig field to search")
        order = list(entries)
        params: dict[str, Param] = {}
        for name, (key_node, spec_node) in entries.items():
            self.check_field(key_node, name, "params", allow_extra=False)
            if name in fixed:
                raise self.fail(
                    key_node,
                    f"{name!r} is both searched and fixed; remove it from `params:` or from `fixed:`",
                )
            params[name] = self.param(name, key_node, spec_node, params, order, fixed)
        return params

    # -- one parameter -----------------------------------------------------------------------------

    def param(
        self,
        name: str,
        key_node: yaml.Node,
        node: yaml.Node,
        earlier: dict[str, Param],
        order: list[str],
        fixed: dict[str, Any],
    ) -> Param:
        spec = self.mapping(node, f"parameter {name!r}")
        for key, (spec_key_node, _) in spec.items():
            if key not in PARAM_KEYS:
                raise self.fail(
                    spec_key_node,
                    f"parameter {name!r}: unknown key {key!r}; {did_you_mean(key, PARAM_KEYS)}"
                    f"a parameter has {', '.join(PARAM_KEYS)}",
                )
        if "type" not in spec:
            raise self.fail(key_node, f"parameter {name!r} has no type; add `type: categorical|int|float`")
        type_node = spec["type"][1]
        param_type = self.scalar(type_node, "type")
        if param_type not in PARAM_TYPES:
            raise self.fail(
                type_node,
                f"parameter {name!r}: unknown type {param_type!r}; use one of {', '.join(PARAM_TYPES)}",
            )
        kind = FIELD_KINDS[name]
        if param_type == "categorical":
            param = self.categorical(name, key_node, spec, fixed)
        else:
            param = self.numeric(name, key_node, param_type, kind, spec, fixed)
        when = self.conditions(name, spec["when"][1], earlier, order, fixed) if "when" in spec else {}
        return dataclasses.replace(param, when=when)

    def categorical(
        self,
        name: str,
        key_node: yaml.Node,
        spec: dict[str, tuple[yaml.Node, yaml.Node]],
        fixed: dict[str, Any],
    ) -> Param:
        for key in ("low", "high", "log", "step"):
            if key in spec:
                raise self.fail(
                    spec[key][0],
                    f"parameter {name!r}: {key} belongs to type int or float; a categorical parameter "
                    "takes `choices: [...]`",
                )
        if "choices" not in spec:
            raise self.fail(key_node, f"parameter {name!r}: add `choices: [...]` (the values to try)")
        choices_node = spec["choices"][1]
        if not isinstance(choices_node, yaml.SequenceNode):
            raise self.fail(choices_node, f"parameter {name!r}: choices must be a list, e.g. `choices: [a, b]`")
        if not choices_node.value:
            raise self.fail(choices_node, f"parameter {name!r}: choices is empty; list at least one value")
        choices: list[Choice] = []
        for item in choices_node.value:
            value = self.coerce(item, name, self.scalar(item, f"a choice of {name!r}"))
            if value in choices:
                raise self.fail(item, f"parameter {name!r}: choice {value!r} is listed twice; keep one")
            self.check_config(item, {**fixed, name: value}, f"parameter {name!r}: choice {value!r} cannot be used")
            choices.append(value)
        return Param(name=name, type="categorical", choices=tuple(choices), line=key_node.start_mark.line + 1)

    def numeric(
        self,
        name: str,
        key_node: yaml.Node,
        param_type: ParamType,
        kind: _FieldKind,
        spec: dict[str, tuple[yaml.Node, yaml.Node]],
        fixed: dict[str, Any],
    ) -> Param:
        if "choices" in spec:
            raise self.fail(
                spec["choices"][0],
                f"parameter {name!r}: choices belong to `type: categorical`; type {param_type} takes low and high",
            )
        if kind.base != param_type:
            fix = "type: categorical with `choices: [...]`" if kind.base in ("str", "bool") else f"type: {kind.base}"
            raise self.fail(spec["type"][1], f"parameter {name!r} takes {kind.describe()}; use {fix}")
        for key in ("low", "high"):
            if key not in spec:
                raise self.fail(key_node, f"parameter {name!r}: type {param_type} needs `{key}:`")
        low = self.number(spec["low"][1], name, "low", param_type)
        high = self.number(spec["high"][1], name, "high", param_type)
        if low > high:
            raise self.fail(spec["low"][1], f"parameter {name!r}: low {low} is greater than high {high}; swap them")
        log = False
        if "log" in spec:
            log = self.scalar(spec["log"][1], "log")
            if not isinstance(log, bool):
                raise self.fail(spec["log"][1], f"parameter {name!r}: log must be true or false, got {log!r}")
        if log and low <= 0:
            raise self.fail(
                spec["low"][1],
                f"parameter {name!r}: a log scale needs low > 0, got {low}; raise low "
                "(e.g. 1.0e-4) or drop `log: true`",
            )
        step = self.step(spec, name, param_type, low, high, log)
        param = Param(
            name=name,
            type=param_type,
            low=low,
            high=high,
            log=log,
            step=step,
            line=key_node.start_mark.line + 1,
        )
        self.check_range(spec, param, fixed)
        return param

    def number(self, node: yaml.Node, name: str, key: str, param_type: ParamType) -> int | float:
        value = self.scalar(node, key)
        if param_type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(node, f"parameter {name!r}: {key} must be an integer, got {value!r}")
            return value
        # PyYAML reads `1e-4` (no dot) as a string; accept it as the number it plainly is.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(node, f"parameter {name!r}: {key} must be a number, got {value!r}")
        return float(value)

    def step(
        self,
        spec: dict[str, tuple[yaml.Node, yaml.Node]],
        name: str,
        param_type: ParamType,
        low: int | float,
        high: int | float,
        log: bool,
    ) -> int | float | None:
        if "step" not in spec:
            return None
        node = spec["step"][1]
        step = self.number(node, name, "step", param_type)
        if step <= 0:
            raise self.fail(node, f"parameter {name!r}: step must be positive, got {step}")
        if log and (param_type == "float" or step != 1):
            raise self.fail(
                node, f"parameter {name!r}: Optuna cannot combine a log scale with a step; drop one of them"
            )
        if param_type == "int" and (high - low) % step:
            top = low + (high - low) // step * step
            raise self.fail(
                node,
                f"parameter {name!r}: high {high} is not low {low} plus a multiple of step {step}; "
                f"use high: {top} or high: {top + step}",
            )
        return step

    def check_range(self, spec: dict[str, tuple[yaml.Node, yaml.Node]], param: Param, fixed: dict[str, Any]) -> None:
        """Both ends, then every value of an int range (unless there are very many), must be valid.

        The ends first: a bound (trainer.config's EPOCHS_MAX, IMAGE_SIZE_MAX, ...) is then reported at
        the end that crosses it, with no word about the values in between.
        """
        assert param.low is not None and param.high is not None
        values: list[int | float] = [param.low, param.high]
        if param.type == "int":
            step = int(param.step or 1)
            # Counted, not len(range): a range of more values than a C integer holds has no len().
            if (int(param.high) - int(param.low)) // step + 1 <= _MAX_CHECKED_VALUES:
                values += range(int(param.low) + step, int(param.high), step)
        for value in values:
            node = spec["high"][1] if value == param.high else spec["low"][1]
            fix = ""
            if param.type == "int" and value not in (param.low, param.high):
                grid = " (for image_size: low a multiple of 32 and `step: 32`)" if param.name == "image_size" else ""
                fix = f"; set low and step so that every value in the range is usable{grid}"
            self.check_config(
                node,
                {**fixed, param.name: value},
                f"parameter {param.name!r}: value {value} in {param.low}..{param.high} cannot be used",
                fix,
            )

    def conditions(
        self,
        name: str,
        node: yaml.Node,
        earlier: dict[str, Param],
        order: list[str],
        fixed: dict[str, Any],
    ) -> dict[str, tuple[Choice, ...]]:
        when: dict[str, tuple[Choice, ...]] = {}
        entries = self.mapping(node, f"parameter {name!r}: when")
        if not entries:
            raise self.fail(node, f"parameter {name!r}: `when:` is empty; name an earlier parameter and its values")
        for other, (key_node, values_node) in entries.items():
            if other == name:
                raise self.fail(key_node, f"parameter {name!r} cannot depend on itself")
            if other not in earlier:
                if other in order:
                    fix = f"move {other!r} above {name!r} under `params:`"
                    problem = f"depends on {other!r}, which is defined after it"
                elif other in fixed:
                    fix = "drop the condition or make it a parameter"
                    problem = f"depends on {other!r}, which is fixed (the condition is always true or always false)"
                else:
                    fix = f"{did_you_mean(other, list(earlier))}conditions name earlier parameters"
                    if earlier:
                        fix += f" ({', '.join(earlier)})"
                    problem = f"depends on {other!r}, which is not a parameter of this space"
                raise self.fail(key_node, f"parameter {name!r} {problem}; {fix}")
            target = earlier[other]
            if target.type == "float":
                raise self.fail(
                    key_node,
                    f"parameter {name!r} depends on float parameter {other!r}, which never takes an exact "
                    "value; condition on a categorical or int parameter",
                )
            allowed: list[Choice] = []
            for item in self.items(values_node):
                value = self.coerce(item, other, self.scalar(item, f"a value of {other!r}"))
                if not target.contains(value):
                    offered = (
                        ", ".join(map(repr, target.choices))
                        if target.type == "categorical"
                        else f"{target.low}..{target.high}"
                    )
                    raise self.fail(
                        item,
                        f"parameter {name!r}: condition {other}: {value!r} never holds; {other!r} takes {offered}",
                    )
                allowed.append(value)
            when[other] = tuple(allowed)
        return when

    # -- checks against CVConfig -------------------------------------------------------------------

    def check_field(self, node: yaml.Node, name: str, section: str, allow_extra: bool) -> None:
        if name in SWEEP_WIDE_FIELDS:
            option = SWEEP_WIDE_FIELDS[name]
            raise self.fail(
                node,
                f"{section}: {name!r} is the sweep's, not the space's (every trial trains with the sweep's "
                f"{name}, so that all trials split the same folds); remove it from the space and pass "
                f"{option} to `segsweep sweep run`",
            )
        fields = tuple(FIELD_KINDS) if allow_extra else SEARCHABLE
        if name not in fields:
            if name == "extra":
                raise self.fail(node, "'extra' is a free-form mapping and cannot be searched; put it under `fixed:`")
            raise self.fail(
                node,
                f"{section}: {name!r} is not a CVConfig field; {did_you_mean(name, fields)}"
                f"use one of {', '.join(fields)}",
            )

    def coerce(self, node: yaml.Node, name: str, value: Any) -> Any:
        """``value`` as the type of CVConfig field ``name``, or an error saying what it takes."""
        kind = FIELD_KINDS[name]
        if value is None:
            if kind.optional:
                return None
        elif kind.base == "float":
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            elif isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        elif kind.base == "int":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif kind.base == "str":
            if isinstance(value, str):
                return value
        elif kind.base == "bool":
            if isinstance(value, bool):
                return value
        elif kind.base == "dict" and isinstance(value, dict):
            return value
        raise self.fail(node, f"{name} takes {kind.describe()}, got {value!r}")

    def check_config(self, node: yaml.Node, values: dict[str, Any], context: str, fix: str = "") -> None:
        """Raise at ``node`` when ``values`` (over CVConfig's defaults) do not pass CVConfig.validate()."""
        try:
            CVConfig(**values).validate()
        except ConfigError as exc:
            raise self.fail(node, f"{context}: {exc}{fix}") from None


def _compose(text: str, source: str) -> tuple[yaml.SafeLoader, yaml.Node | None]:
    loader = yaml.SafeLoader(text)
    try:
        return loader, loader.get_single_node()
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_line(source, exc)) from None


def parse_space_text(text: str, source: str, default_name: str) -> SearchSpace:
    """A space from YAML text; errors name ``source`` and the line."""
    loader, root = _compose(text, source)
    try:
        return _Reader(loader, source, show_lines=True).space(root, default_name)
    finally:
        loader.dispose()


def load_space_file(path: Path, source: str | None = None) -> SearchSpace:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read search space file {path}: {exc.strerror}; give a built-in space name or a YAML path"
        ) from None
    return parse_space_text(text, source or str(path), default_name=path.stem)


def parse_space_mapping(data: Mapping[str, Any], source: str) -> SearchSpace:
    """A space from ``SearchSpace.to_dict()`` output (e.g. in sweep.json), checked like a file."""
    values = dict(data)
    original = values.pop("source", None)
    text = yaml.safe_dump(values, sort_keys=False)
    loader, root = _compose(text, source)
    try:
        # Lines would point into a YAML rendering the user never saw, so messages name the source only.
        space = _Reader(loader, source, show_lines=False).space(root, default_name=str(values.get("name", "space")))
    finally:
        loader.dispose()
    return dataclasses.replace(space, source=original) if isinstance(original, str) else space
