"""A sweep's specification, as given to ``segsweep sweep run`` and kept in SWEEP/sweep.json."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.folder import SweepFolder, read_spec_record, write_spec_record
from trainer.errors import ConfigError

SCHEDULERS = ("asha", "none")
#: Options that override the space's values for every trial (quick runs).
OVERRIDE_KEYS = ("limit", "image_size", "folds", "epochs", "dev_split")
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
    scheduler: str = "asha"
    seed: int = 0
    address: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    tracker: str | None = None
    max_failures: int = 2
    created: str | None = None
    #: How every trial's TensorFlow runs: auto/on/off, and intra-op threads (None: the trial's CPUs).
    mixed_precision: str = "auto"
    threads: int | None = None

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
        if self.max_failures < 0:
            raise ConfigError(f"max_failures must be 0 or more, got {self.max_failures}")

    def cv_overrides(self) -> dict[str, Any]:
        """Values every trial's configuration takes over the space's: the options, and the seed.

        The sweep's seed is also the cross-validation seed, so all trials split the same folds and
        their scores compare.
        """
        return {**{k: v for k, v in self.overrides.items() if v is not None}, "seed": self.seed}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SweepSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def write(self) -> None:
        """sweep.json, keeping what earlier runs recorded (``runs``) beside the specification."""
        previous = read_spec_record(self.folder) if self.folder.exists() else {}
        write_spec_record(self.folder, {**previous, **self.to_dict()})

    @classmethod
    def read(cls, storage: str | Path | None, name: str) -> SweepSpec:
        """sweep.json of STORAGE/NAME, or a one-line error listing the sweeps there."""
        folder = SweepFolder.at(storage, name)
        spec = cls.from_dict(read_spec_record(folder))
        spec.storage = str(folder.storage.resolve())
        return spec
