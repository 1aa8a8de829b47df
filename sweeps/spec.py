"""A sweep's specification, as given to ``segsweep sweep run`` and kept in SWEEP/sweep.json."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_spaces import BUILTIN_SPACES
from segsweep.base.errors import ConfigError
from sweeps.folder import SweepFolder, SweepRecord, read_spec_record, storage_help, write_spec_record
from trainer.config import coerce_value, name_unknown, unknown_keys_error, yaml_error_line

if TYPE_CHECKING:
    from search_spaces import SearchSpace

SCHEDULERS = ("paired", "asha", "none")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class SweepSpec:
    """What a sweep searches, on which data, with which budget and resources.

    ``space`` is what the user named (``paper``, ``quick`` or a file); ``space_definition`` is the
    space itself, so that a resumed sweep samples the same space even if the file changed.
    """

    name: str
    data: str
    space: str
    trials: int
    storage: str
    space_definition: dict[str, Any] = field(default_factory=dict)
    concurrency: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    scheduler: str = "paired"
    seed: int = 0
    address: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    tracker: str | None = None
    #: Ray's retries of one failed trial (out of memory, a lost node); a fatal error is not retried.
    trial_retries: int = 2
    #: End this run of the sweep cleanly after this many seconds (``--time-budget``; per run).
    time_budget_s: float | None = None
    #: End this run of the sweep cleanly once this many trials failed (``--max-failures``).
    max_failed_trials: int | None = None
    created: str | None = None
    skip_bad: bool = False  # leave out pairs whose files are cut short, undecodable or not masks
    #: Keep the fold models of the best this many trials (0: keep none).
    keep_models: int = 0
    #: How every trial's TensorFlow runs: auto/on/off, and intra-op threads (None: the trial's CPUs).
    mixed_precision: str = "auto"
    threads: int | None = None
    #: The prepared data's content digest (trainer.data's cache key) when the sweep first ran; a
    #: resume on data that changed since is refused: its trials would be ranked against other images.
    data_key: str | None = None
    #: Starting points of ``--start`` files (and of a warm start from other data or space), as
    #: sweeps._start.StartEntry dicts; the space's own ``start:`` comes with the space.
    start: list[dict[str, Any]] = field(default_factory=list)
    #: ``--warm-start``: an earlier sweep (name in --storage, or its folder) to learn from.
    warm_start: str | None = None
    #: What the warm start did (trials given to the sampler, or starting points), set on the first run.
    warm_start_mode: str | None = None

    @property
    def folder(self) -> SweepFolder:
        return SweepFolder.at(self.storage, self.name)

    @property
    def sweep_dir(self) -> Path:
        return self.folder.path

    def validate(self) -> None:
        """Raise ConfigError for the first option that cannot be used, saying what to use."""
        if not _NAME.match(self.name):
            raise ConfigError(
                f"sweep name {self.name!r} is not usable as a folder and study name; use letters, digits, "
                "'.', '_' and '-' (at most 100, starting with a letter or digit)"
            )
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if not self.cpus_per_trial > 0:
            raise ConfigError(f"--cpus-per-trial must be positive, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial must be 0 or more, got {self.gpus_per_trial}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ConfigError(
                f"--gpus-per-trial {self.gpus_per_trial}: above 1 a trial takes whole GPUs; "
                f"use {int(self.gpus_per_trial)} or {int(self.gpus_per_trial) + 1}"
            )
        from trainer.config import check_seed

        check_seed(self.seed, "--seed")  # before the sampler, which takes the same 32-bit seed
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        if self.address is not None and not re.match(r"^(auto|[A-Za-z0-9.\-\[\]:]+:\d+)$", self.address):
            raise ConfigError(
                f"--address {self.address!r} is not HOST:PORT; give the head node's GCS address as printed "
                "by `ray start --head` (e.g. 10.0.0.5:6379), or `auto` for the cluster of this machine"
            )
        unknown = set(self.overrides) - {*OVERRIDE_KEYS, "seed"}
        if unknown:
            raise ConfigError(f"unknown override(s) {', '.join(sorted(unknown))}")
        from trainer.models import check_mixed_precision, check_threads

        self.mixed_precision = check_mixed_precision(self.mixed_precision)
        check_threads(self.threads)
        if self.keep_models < 0:
            raise ConfigError(f"--keep-models must be 0 or more (the number of best trials), got {self.keep_models}")
        if self.trial_retries < 0:
            raise ConfigError(f"trial_retries must be 0 or more, got {self.trial_retries}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ConfigError(f"--time-budget must be positive, got {self.time_budget_s:g} s")
        if self.max_failed_trials is not None and self.max_failed_trials < 1:
            raise ConfigError(f"--max-failures must be at least 1, got {self.max_failed_trials}")

    def cv_overrides(self) -> dict[str, Any]:
        """Values every trial's configuration takes over the space's: the options, and the seed.

        The sweep's seed is also the cross-validation seed, so all trials split the same folds and
        their scores compare.
        """
        from search_spaces._space import SWEEP_WIDE_FIELDS

        sweep_wide = {name: getattr(self, name) for name in SWEEP_WIDE_FIELDS}
        return {**{k: v for k, v in self.overrides.items() if v is not None}, **sweep_wide}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "sweep specification") -> SweepSpec:
        """Build from sweep.json's mapping (or ``sweep run``'s merged options); a key that is neither a
        field nor sweep.json's own (format, runs) is refused in one line naming ``source``."""
        values = dict(values)
        if "format" not in values and "max_failures" in values:  # sweep.json before format 1
            values["trial_retries"] = values.pop("max_failures")
        for key in SPEC_RECORD_KEYS:
            values.pop(key, None)
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields}
        unknown = sorted(set(values) - known)
        if unknown:
            raise unknown_keys_error(source, unknown, known)
        required = [f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]  # fmt: skip
        missing = [name for name in required if name not in values]
        if missing:
            raise ConfigError(
                f"{source}: missing key(s) {', '.join(missing)}; a sweep specification needs {', '.join(required)}"
            )
        return cls(**values)

    def load_space(self) -> SearchSpace:
        """The space recorded in the specification, else the one ``space`` names (built-in or file)."""
        from search_spaces import SearchSpace, load_space

        if self.space_definition:
            return SearchSpace.from_dict(self.space_definition, source=f"the space of sweep {self.name!r}")
        return load_space(self.space)

    def write(self) -> None:
        """sweep.json, keeping what earlier runs recorded (``runs``) beside the specification."""
        previous = read_spec_record(self.folder) if self.folder.exists() else SweepRecord()
        write_spec_record(self.folder, SweepRecord({**previous.specification, **self.to_dict()}, previous.runs))

    @classmethod
    def read(cls, storage: str | Path | None, name: str) -> SweepSpec:
        """sweep.json of STORAGE/NAME, or a one-line error listing the sweeps there."""
        folder = SweepFolder.at(storage, name)
        # The storage is where the folder is now, whatever sweep.json says (a sweep folder can be moved).
        record = {**read_spec_record(folder).specification, "storage": str(folder.storage.resolve())}
        return cls.from_dict(record, source=str(folder.spec_file))


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``45m``, ``2h``, ``1h30m`` or ``1d``; ConfigError otherwise."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"--time-budget {text!r} is not a duration; write e.g. 90m, 2h, 1h30m or 3600 (seconds)")
    scale = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(float(n) * scale[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """``2h``, ``1h30m``, ``45m``, ``20s``: the short form a user would type."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"


#: Where an override option's value goes: ``SweepSpec.overrides``, which every trial takes over its space.
OVERRIDES = "overrides"


@dataclass(frozen=True)
class RunOption:
    """One ``sweep run`` option: its flag, its --config key and the SweepSpec field it sets.

    ``key`` is both the --config key and argparse's dest; the flag is ``key`` with ``-`` for ``_``.
    ``spec_field`` is the SweepSpec field its value goes to (default ``key``; ``overrides``: an entry of
    ``SweepSpec.overrides``).
    ``convert`` turns a given value (command line or file) into the field's (a duration into seconds).
    ``runtime`` options are declared by ``trainer.cli.add_runtime_options`` (shared with ``cv``).
    """

    key: str
    help: str | Callable[[], str] = ""
    spec_field: str = ""
    value_type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    action: str | None = None
    metavar: str | None = None
    required: bool = False
    convert: Callable[[Any], Any] | None = None
    runtime: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def target(self) -> str:
        return self.spec_field or self.key

    def add_to(self, parser: Any) -> None:
        """Add the option to an argparse parser; its default is None (unset), so --config can fill it."""
        help_text = self.help() if callable(self.help) else self.help
        kwargs: dict[str, Any] = {"default": None, "help": help_text}
        if self.value_type is not None:
            kwargs["type"] = self.value_type
        for name in ("choices", "action", "metavar"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        parser.add_argument(self.flag, **kwargs)


def _budget_seconds(value: Any) -> float | None:
    return None if value is None else parse_duration(str(value))


_DEFAULTS = SweepSpec(name="", data="", space="", trials=0, storage="")


def _tracker_help() -> str:
    """The registered trackers say their own names and default (read when the parser is built)."""
    from trainer.tracking import tracker_help

    return tracker_help(" for every trial")


#: ``sweep run``'s options, in --help order: the one declaration the parser, --config and the spec derive from.
RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption("data", "data set folder with images/ and masks/ (required)", required=True),
    RunOption("space", f"search space: {', '.join(BUILTIN_SPACES)}, or a YAML file (required)", required=True),
    RunOption("trials", "number of configurations to try (required)", value_type=int, required=True),
    RunOption("name", "sweep name (folder and Optuna study name; required)", required=True),
    RunOption("storage", storage_help()),
    RunOption("concurrency", "trials at a time (default: as many as the CPUs/GPUs hold)", value_type=int),
    RunOption("cpus_per_trial", f"CPUs per trial (default {_DEFAULTS.cpus_per_trial:g})", value_type=float),
    RunOption("gpus_per_trial", "GPUs per trial, fractions allowed (0.5: two trials share a card; "
              f"default {_DEFAULTS.gpus_per_trial:g})", value_type=float),
    RunOption("scheduler", "paired stops a trial once the best complete trial beats it on the same images "
              "(paired 95 %% interval below 0); asha stops trials outside the top third of the running means "
              f"at each fold rung; none runs all folds (default {_DEFAULTS.scheduler})", choices=SCHEDULERS),
    RunOption("seed", f"seed of the sampler and of every trial's folds (default {_DEFAULTS.seed})", value_type=int),
    RunOption("address", "HOST:PORT of a running Ray cluster's head (default: start Ray on this machine)"),
    RunOption("limit", "use only the first N pairs (quick runs)", OVERRIDES, value_type=int),
    RunOption("image_size", "override the space's image size", OVERRIDES, value_type=int),
    RunOption("folds", "override the space's number of folds", OVERRIDES, value_type=int),
    RunOption("epochs", "override the space's epochs", OVERRIDES, value_type=int),
    RunOption("dev_split", "split file (or its name in the data set, e.g. medico2020_train) listing the "
              "development stems; keep a test set out of the sweep (default: every pair)", OVERRIDES),
    RunOption("tracker", _tracker_help),
    RunOption("keep_models", "keep each fold's model for the best K trials (fold ensembles for `segsweep predict "
              "TRIAL_FOLDER`); other trials' models are deleted as they fall out (default 0: none)",
              value_type=int, metavar="K"),
    RunOption("skip_bad", "leave out pairs whose image or mask is cut short, undecodable or not a binary mask "
              "(listed, and recorded in each trial's cv.json); default: stop naming the file", action="store_true"),
    # On the command line --start names files (their entries join the config's); in a --config file or a
    # sweep.json, `start:` holds the entries themselves (sweeps.cli.spec_from_args reads the files).
    RunOption("start", "run this configuration first (repeatable): a report's best.json, a cv output's "
              "cv.json, or a YAML list of configurations; partial ones take the space's values",
              action="append", metavar="FILE"),
    RunOption("warm_start", "learn from an earlier sweep (name in --storage, or its folder): its scored trials "
              "go to the sampler on the same data and space, else its best 3 become starting points",
              metavar="SWEEP"),
    RunOption("time_budget", "end this run cleanly after this long (e.g. 90m, 2h, 1h30m): no new trials, running "
              "trials stop at the end of their fold; `sweep resume` continues with a new budget",
              "time_budget_s", convert=_budget_seconds),
    RunOption("max_failures", "end this run cleanly once this many trials have failed", "max_failed_trials",
              value_type=int),
    RunOption("mixed_precision", runtime=True),  # --mixed-precision, --threads: trainer.cli.add_runtime_options
    RunOption("threads", runtime=True),
)  # fmt: skip
RUN_OPTION_BY_KEY = {option.key: option for option in RUN_OPTIONS}
#: Options that override the space's values for every trial (quick runs).
OVERRIDE_KEYS = tuple(option.key for option in RUN_OPTIONS if option.spec_field == OVERRIDES)
#: Options that end one run of a sweep (``sweep resume`` takes them too, counting from then).
LIMIT_KEYS = ("time_budget", "max_failures")
#: sweep.json keys beside SweepSpec's fields: its format version, and what each run of it recorded.
SPEC_RECORD_KEYS = ("format", "runs")
#: SweepSpec fields a run records about itself; a sweep.json used as --config starts a new sweep without them.
_RECORDED_BY_THE_RUN = ("created", "data_key", "warm_start_mode")


def config_keys() -> list[str]:
    """The keys a --config file may hold: every option's (``RUN_OPTIONS``), and SweepSpec's fields, which
    a sweep's sweep.json holds (it re-runs that sweep)."""
    return sorted({*RUN_OPTION_BY_KEY, *(f.name for f in dataclasses.fields(SweepSpec)), *SPEC_RECORD_KEYS})


def read_sweep_config(path: str | Path) -> dict[str, Any]:
    """A sweep configuration file (YAML or JSON): ``sweep run``'s options as keys, values as given.

    Keys are the options' names with ``_`` for ``-`` (``cpus_per_trial``, ``time_budget: 2h``,
    ``max_failures``); ``space`` is a name, a path (relative to the file) or an inline space;
    ``limit``/``image_size``/``folds``/``epochs``/``dev_split`` may stand flat or under
    ``overrides``. A sweep's own sweep.json is such a file too: it re-runs that sweep.
    """
    import yaml

    from search_spaces._yaml import parse_space_mapping

    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read sweep configuration {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_line(path, exc)) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of `sweep run` options (data:, space:, trials:, ...)")
    values = dict(loaded)
    if "max_failures" in values and "space_definition" in values and "format" not in values:
        values["trial_retries"] = values.pop("max_failures")  # a sweep.json before format 1: Ray's retries
    overrides = dict(values.pop(OVERRIDES, None) or {})
    for key in [k for k in values if k in RUN_OPTION_BY_KEY]:  # an option's key: its value to its field
        option, value = RUN_OPTION_BY_KEY[key], values.pop(key)
        value = option.convert(value) if option.convert is not None else value
        if option.spec_field == OVERRIDES:
            overrides[key] = value
        else:
            values[option.target] = value
    if overrides:
        values[OVERRIDES] = overrides
    space = values.get("space")
    if isinstance(space, dict):
        parsed = parse_space_mapping(space, source=f"{path} (space)")
        values["space"], values["space_definition"] = f"inline in {path.name}", parsed.to_dict()
    elif isinstance(space, str) and not values.get("space_definition") and (path.parent / space).is_file():
        values["space"] = str(path.parent / space)
    for transient in (*SPEC_RECORD_KEYS, *_RECORDED_BY_THE_RUN):
        values.pop(transient, None)
    known = {f.name: f.type for f in dataclasses.fields(SweepSpec)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{path}: unknown option(s) {name_unknown(unknown, config_keys())}; use the names of "
            "`segsweep sweep run --help` with _ for -"
        )

    # `trials: 2.5` or `skip_bad: "no"` (a quoted string, truthy) would run otherwise than written.
    numbers = {k for k, annotation in known.items() if str(annotation).startswith(("int", "float", "bool"))}
    return {k: coerce_value(k, v, known[k], str(path)) if k in numbers else v for k, v in values.items()}
