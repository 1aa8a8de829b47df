"""The one way to read a sweep's folder: the source of truth that status and reports use.

A sweep folder (``STORAGE/NAME/``) holds::

    sweep.json                 the sweep's specification (data, space, trials, seed, overrides, ...)
    optuna.db                  Optuna RDB storage (SQLite); the study is named after the sweep
    trials/<trial_id>/
        trial.json             trial id, Optuna number, parameters, state, reason, times
        cv.json                the trainer's cross-validation result (written after every fold)
        folds/fold_NN.json     one file per finished fold, written as the fold ends
        events.jsonl           one line per attempt and per fold (node, pid, times)
    ray/                       Ray Tune's experiment state (for resume)
    report/                    `segsweep report` output (report.html, report.md, figures/, best.json)
    predictions/<key>.json     test-set scores `segsweep predict` recorded for a bundle retrained from a
                               trial (reports.scored; read by the report's Table 2)
    mlflow.db, mlartifacts/    MLflow sink (when enabled); .neptune/ Neptune offline sink

Trackers are sinks and are never read here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import SegsweepError
from trainer.results import CVResult, FoldResult, summarise

#: Trial states as written to trial.json.
RUNNING, COMPLETE, PRUNED, FAILED = "RUNNING", "COMPLETE", "PRUNED", "FAILED"
TRIAL_STATES = (RUNNING, COMPLETE, PRUNED, FAILED)


@dataclass
class TrialResult:
    """One trial as the sweep folder records it."""

    trial_id: str
    number: int | None
    params: dict[str, Any]
    state: str
    reason: str | None
    config: dict[str, Any]
    n_folds: int
    folds: list[FoldResult] = field(default_factory=list)
    started: str | None = None
    ended: str | None = None
    path: Path | None = None

    @property
    def folds_done(self) -> int:
        return len(self.folds)

    @property
    def all_folds_done(self) -> bool:
        return self.n_folds > 0 and self.folds_done >= self.n_folds

    @property
    def mean(self) -> dict[str, float]:
        return summarise(self.folds)[0]

    @property
    def std(self) -> dict[str, float]:
        return summarise(self.folds)[1]


@dataclass
class SweepResults:
    name: str
    path: Path
    spec: dict[str, Any]
    trials: list[TrialResult]

    @property
    def optuna_storage_url(self) -> str:
        return f"sqlite:///{(self.path / 'optuna.db').resolve()}"

    def completed(self) -> list[TrialResult]:
        """Trials that finished every fold, best mean Dice first."""
        done = [t for t in self.trials if t.all_folds_done and t.state == COMPLETE]
        return sorted(done, key=lambda t: t.mean["dice"], reverse=True)


def sweep_dir(storage: str | Path, name: str) -> Path:
    return Path(storage) / name


def load_sweep(storage: str | Path, name: str) -> SweepResults:
    """Read a sweep folder, or raise with what exists and how to name it."""
    path = sweep_dir(storage, name)
    spec_path = path / "sweep.json"
    if not spec_path.is_file():
        storage = Path(storage)
        names = sorted(p.parent.name for p in storage.glob("*/sweep.json")) if storage.is_dir() else []
        raise SegsweepError(
            f"no sweep named {name!r} in {storage} ({spec_path} missing); "
            + (f"sweeps there: {', '.join(names)}" if names else "pass --storage with the folder given to `sweep run`")
        )
    spec = json.loads(spec_path.read_text())
    trials = [load_trial(d) for d in sorted((path / "trials").glob("*")) if (d / "trial.json").is_file()]
    trials.sort(key=lambda t: (t.number if t.number is not None else 1 << 30, t.trial_id))
    return SweepResults(name=name, path=path, spec=spec, trials=trials)


def load_trial(trial_dir: Path) -> TrialResult:
    """A trial from its folder; folds come from folds/*.json (written as each fold ends)."""
    info = json.loads((trial_dir / "trial.json").read_text())
    folds = []
    for fold_file in sorted((trial_dir / "folds").glob("fold_*.json")):
        try:
            folds.append(FoldResult.from_dict(json.loads(fold_file.read_text())))
        except (json.JSONDecodeError, TypeError, KeyError):
            continue  # a fold file from an interrupted write is ignored; the fold reruns on resume
    folds.sort(key=lambda f: f.fold)
    config = info.get("config", {})
    cv_path = trial_dir / "cv.json"
    n_folds = int(info.get("n_folds") or 0)
    if cv_path.is_file():
        try:
            cv = CVResult.load(cv_path)
            config = config or cv.config
            n_folds = n_folds or cv.n_folds
        except (json.JSONDecodeError, TypeError, KeyError):
            pass
    return TrialResult(
        trial_id=str(info["trial_id"]),
        number=info.get("number"),
        params=info.get("params", {}),
        state=info.get("state", RUNNING),
        reason=info.get("reason"),
        config=config,
        n_folds=n_folds,
        folds=folds,
        started=info.get("started"),
        ended=info.get("ended"),
        path=trial_dir,
    )
