"""``sweep status --json|--csv`` and ``sweep list --json``: the same tables as the text views, for programs.

The trial table is the Python API's (``Sweep.trials()``: one row per trial, leaderboard order), so the
command line, a notebook and a script read the same columns; README.md ("Machine-readable output")
documents the fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from sweeps.folder import (
    DamagedRecord,
    SweepFolder,
    SweepResults,
    SweepSummary,
    load_sweep,
    report_test_sets,
    summarise_sweep,
    sweep_names,
    winner_evidence,
)

#: The version of the JSON documents below; bumped when a field changes meaning or goes away.
JSON_FORMAT = 1


def _plain(value: Any) -> Any:
    """A JSON value: NaN and pandas' missing values as null, numpy scalars as Python numbers."""
    import pandas as pd

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def trial_table(folder: SweepFolder) -> Any:
    """The sweep's trial table (a pandas DataFrame): ``Sweep.trials()``."""
    from sweeps.api import Sweep

    return Sweep(folder.require()).trials()


def status_document(folder: SweepFolder) -> dict[str, Any]:
    """``sweep status --json``: the sweep's state and counts, and one object per trial."""
    from sweeps.api import trial_frame

    summary = summarise_sweep(folder.require())
    results = load_sweep(folder.storage, folder.name)  # read once: the trial table and the evidence
    trials = trial_frame(results)
    states = [str(state) for state in trials["state"]] if not trials.empty else []
    return {
        "format": JSON_FORMAT,
        **_summary_fields(summary),
        "counts": {state: states.count(state) for state in sorted(set(states))},
        "trials": [{str(k): _plain(v) for k, v in row.items()} for row in trials.to_dict(orient="records")],
        "evidence": _evidence(results),
    }


def _evidence(sweep: SweepResults) -> dict[str, Any] | None:
    """The winner's paired evidence as the report's best.json gives it (None while no trial may win), with
    the report's test-set comparisons while its winner is the sweep's (``sweep status`` says the same)."""
    evidence = winner_evidence(sweep)
    if evidence is None:
        return None
    tests, note = report_test_sets(sweep, evidence.winner)
    return _plain({**evidence.to_dict(), "test_sets": tests, "test_sets_note": note})


def list_document(storage: Path, warnings: list[str]) -> dict[str, Any]:
    """``sweep list --json``: one object per sweep in ``storage`` (a damaged one is a line in ``warnings``)."""
    sweeps = []
    for name in sweep_names(storage):
        try:
            sweeps.append(_summary_fields(summarise_sweep(SweepFolder.at(storage, name))))
        except DamagedRecord as exc:
            warnings.append(str(exc))
    return {"format": JSON_FORMAT, "storage": str(storage), "sweeps": sweeps}


def _summary_fields(summary: SweepSummary) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in dataclasses.asdict(summary).items()}


def dumps(document: dict[str, Any]) -> str:
    """Strict JSON (no NaN), indented for a person who reads it too."""
    return json.dumps(document, indent=2, allow_nan=False)
