"""Search spaces: which CVConfig fields a sweep samples, over which values, and what stays fixed.

A space is a YAML file (the built-ins in ``builtin/`` use the same format as users' files; see
``search_spaces._yaml`` for it). ``load_space`` reads a built-in by name or a file by path and
checks it against CVConfig, naming the file and line of any problem. ``SearchSpace.define_by_run``
samples it on an Optuna trial and pickles (Ray checkpoints it with its searcher);
``SearchSpace.to_cv_config`` turns one trial's values into the configuration the worker runs.
"""

import segsweep.base.env  # noqa: F401, I001  (first: sets the Keras environment before anything imports it)

from importlib import resources
from pathlib import Path

from search_spaces._space import PARAM_TYPES, DefineByRun, Param, SearchSpace
from search_spaces._yaml import load_space_file
from segsweep.base.errors import ConfigError
from segsweep.base.suggest import did_you_mean

#: Built-in spaces by name: ``paper`` (Tzavara & Singstad 2021), ``quick`` (minutes on a CPU) and
#: ``cpu`` (a real search on 2 cores, untrained light encoders at 128 px; 10 trials take hours:
#: its header has the measured times).
BUILTIN_SPACES: tuple[str, ...] = ("paper", "quick", "cpu")


def builtin_space_path(name: str) -> Path:
    """The YAML file of a built-in space."""
    if name not in BUILTIN_SPACES:
        raise ConfigError(
            f"unknown built-in search space {name!r}; {did_you_mean(name, BUILTIN_SPACES)}"
            f"choose one of: {', '.join(BUILTIN_SPACES)}"
        )
    return Path(str(resources.files("search_spaces") / "builtin" / f"{name}.yaml"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A built-in space by name (``paper``, ``quick``, ``cpu``) or a user's space from a YAML file."""
    text = str(name_or_path)
    if not isinstance(name_or_path, Path) and text in BUILTIN_SPACES:
        return load_space_file(builtin_space_path(text))
    path = Path(name_or_path)
    if not path.exists() and path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        raise ConfigError(
            f"unknown search space {text!r}; {did_you_mean(text, BUILTIN_SPACES)}"
            f"use a built-in ({', '.join(BUILTIN_SPACES)}) or the path of a YAML file"
        )
    return load_space_file(path)


__all__ = [
    "BUILTIN_SPACES",
    "PARAM_TYPES",
    "DefineByRun",
    "Param",
    "SearchSpace",
    "builtin_space_path",
    "load_space",
]
