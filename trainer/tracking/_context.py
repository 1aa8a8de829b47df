"""What a child run needs to find its parent: a small JSON-serialisable record.

The sweep driver makes the parent runs (``start_sweep_tracking``) and passes this record to each
trial, which may run in another process or on another machine, so it holds names and ids only:
never a client object and never a credential (tokens stay in each process's environment).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrackingContext:
    """Where a sweep's trackers log and which runs are the parents of its trials.

    ``trackers`` are the trackers the sweep opened. MLflow: the tracking URI, the experiment and the
    sweep's run id. Neptune: the mode, the project (may be None offline), the folder that holds
    ``.neptune`` and the sweep's custom run id, which each trial run records as its parent.
    """

    trackers: tuple[str, ...] = ()
    sweep_name: str = ""
    mlflow_tracking_uri: str | None = None
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None
    neptune_mode: str | None = None
    neptune_project: str | None = None
    neptune_data_dir: str | None = None
    neptune_sweep_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["trackers"] = list(self.trackers)
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrackingContext:
        values = dict(values)
        values["trackers"] = tuple(values.get("trackers", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> TrackingContext:
        return cls.from_dict(json.loads(text))
