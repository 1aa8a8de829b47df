"""What a child run needs to find its parent: a small JSON-serialisable record.

The sweep driver makes the parent runs (``start_sweep_tracking``) and passes this record to each
trial, which may run in another process or on another machine, so it holds names and ids only:
never a client object and never a credential (tokens stay in each process's environment).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrackingContext:
    """Where a sweep's trackers log and which runs are the parents of its trials.

    ``trackers`` are the trackers the sweep opened; ``parts`` holds each one's part, as its backend's
    ``start_sweep`` returned it (e.g. MLflow's tracking URI, experiment and sweep run id). In JSON each
    part's keys are prefixed with the tracker's key (``mlflow_tracking_uri``), the format
    ``tracking.json`` has had since before trackers had a registry, so older sweeps resume as they were.
    """

    trackers: tuple[str, ...] = ()
    sweep_name: str = ""
    parts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def part(self, tracker: str) -> Mapping[str, Any] | None:
        """Tracker ``tracker``'s part, None when the sweep did not start it."""
        return self.parts.get(tracker) if tracker in self.trackers else None

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"trackers": list(self.trackers), "sweep_name": self.sweep_name}
        for tracker, part in self.parts.items():
            values.update({f"{tracker}_{key}": value for key, value in part.items()})
        values["extra"] = dict(self.extra)
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrackingContext:
        trackers = tuple(values.get("trackers", ()))
        parts: dict[str, dict[str, Any]] = {}
        for tracker in trackers:
            prefix = f"{tracker}_"
            parts[tracker] = {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}
        return cls(
            trackers=trackers,
            sweep_name=str(values.get("sweep_name", "")),
            parts=parts,
            extra=dict(values.get("extra") or {}),
        )

    @classmethod
    def from_json(cls, text: str) -> TrackingContext:
        return cls.from_dict(json.loads(text))
