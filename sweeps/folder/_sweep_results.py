"""A sweep folder read as results: trials with their folds, states and the values they ran with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sweeps.folder._layout import EVENTS_FILE, TRIAL_FILE, SweepFolder
from sweeps.folder._records import attempt_spans, read_spec_record, read_trial_record
from sweeps.folder._schema import SweepRecord
from trainer.reporter import COMPLETE, FAILED, PRUNED, RUNNING
from trainer.results import CV_FILE, FoldResult, read_cv_result, read_fold_files, summarise

#: Trial states as written to trial.json: the trackers' run states (trainer.reporter), so both agree.
TRIAL_STATES = (RUNNING, COMPLETE, PRUNED, FAILED)


@dataclass
class TrialResult:
    """One trial as the sweep folder records it.

    ``params`` are what Optuna proposed; ``config`` is the configuration the trial trained with,
    after the sweep's overrides (``--epochs 1`` wins over a proposed 2): :attr:`ran_with` and
    :attr:`overridden` tell the two apart.
    """

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
    #: What the reader had to repair or skip to read this trial (damaged files), one line each.
    warnings: list[str] = field(default_factory=list)
    #: The label of the starting point this trial ran (``--start``, the space's ``start:``), or None.
    start: str | None = None

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

    @property
    def ran_with(self) -> dict[str, Any]:
        """Each searched parameter with the value the trial trained with (the configuration's)."""
        return {name: self.config.get(name, value) for name, value in self.params.items()}

    @property
    def overridden(self) -> dict[str, tuple[Any, Any]]:
        """Parameters whose proposed value was replaced by the sweep's: name -> (proposed, ran with)."""
        return {
            name: (value, self.config[name])
            for name, value in self.params.items()
            if name in self.config and self.config[name] != value
        }

    def end_time(self) -> float | None:
        """When the trial ended, in POSIX seconds (None while it runs or if unrecorded)."""
        return _timestamp(self.ended)

    @property
    def label(self) -> str:
        return f"#{self.number} ({self.trial_id})" if self.number is not None else self.trial_id

    @property
    def seconds(self) -> float:
        return sum(f.seconds for f in self.folds)

    def image_scores(self) -> dict[str, ImageScore]:
        """The out-of-fold score of every validation image of the folds this trial finished, by stem.

        K-fold validates each image in exactly one fold, so two trials of one sweep (same seed, same
        folds) can be paired image by image (:func:`pair_image_scores`). Folds recorded before
        per-image scores were kept contribute nothing.
        """
        scores: dict[str, ImageScore] = {}
        for fold in self.folds:
            for stem, (dice, iou) in fold.image_scores().items():
                scores[stem] = ImageScore(stem=stem, fold=fold.fold, dice=dice, iou=iou)
        return scores


@dataclass(frozen=True)
class ImageScore:
    """One validation image's MedAI scores in the fold that validated it."""

    stem: str
    fold: int
    dice: float
    iou: float


def pair_image_scores(first: TrialResult, second: TrialResult) -> dict[str, tuple[ImageScore, ImageScore]]:
    """The images both trials scored out of fold, by stem: (first's score, second's score).

    Only images validated in the same fold of both are paired: on other folds an image's score
    comes from models trained on other images, and the pair would not be like for like.
    """
    theirs = second.image_scores()
    return {
        stem: (mine, theirs[stem])
        for stem, mine in first.image_scores().items()
        if stem in theirs and theirs[stem].fold == mine.fold
    }


@dataclass
class SweepResults:
    """A sweep: its specification (sweep.json) and its trials in Optuna-number order."""

    name: str
    path: Path
    spec: SweepRecord
    trials: list[TrialResult]
    #: Damaged records the reader repaired or skipped, one line each (shown by status and report).
    warnings: list[str] = field(default_factory=list)

    @property
    def folder(self) -> SweepFolder:
        return SweepFolder(self.path)

    @property
    def optuna_storage_url(self) -> str:
        return self.folder.optuna_url

    def completed(self) -> list[TrialResult]:
        """Trials eligible to win (every fold done, COMPLETE), best mean Dice first."""
        from sweeps.folder._ranking import is_eligible, rank_trials

        return [t for t in rank_trials(self.trials) if is_eligible(t)]

    def running_spans(self) -> list[tuple[float, float]]:
        """When the sweep ran, in POSIX seconds: the union of its trials' attempts, sorted, merged.

        Each attempt runs from its ``attempt`` event to its last event (a trial without events from its
        start to its end), so the pauses between a stop and a resume (a night, a session, a Slurm queue)
        are left out. The trials' own events count, not the driver's run records: a driver killed with
        its machine records no run, and its trials' events are still there.
        """
        spans = sorted(span for trial in self.trials for span in _trial_spans(trial))
        merged: list[tuple[float, float]] = []
        for begin, end in spans:
            if merged and begin <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((begin, end))
        return merged

    def running_seconds(self, until: float | None = None, spans: list[tuple[float, float]] | None = None) -> float:
        """How long the sweep had run by ``until`` (POSIX seconds; default: all of it). ``spans``: its
        ``running_spans()``, read once by a caller asking at many times (each read opens every trial's events)."""
        end = math.inf if until is None else until
        spans = self.running_spans() if spans is None else spans
        return sum(max(0.0, min(stop, end) - start) for start, stop in spans)


def _timestamp(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if isinstance(text, str) and text else None
    except ValueError:
        return None


def _trial_spans(trial: TrialResult) -> list[tuple[float, float]]:
    """When the trial ran: one (start, end) per attempt, from its events; else its start to its end."""
    spans = attempt_spans(trial.path) if trial.path is not None else []
    if not spans:
        begin, end = _timestamp(trial.started), _timestamp(trial.ended)
        if begin is not None and end is not None and end >= begin:
            spans.append((begin, end))
    return spans


def load_sweep(storage: str | Path | None, name: str) -> SweepResults:
    """Read ``STORAGE/NAME`` (the default storage when None), or say what is there instead."""
    folder = SweepFolder.at(storage, name)
    spec = read_spec_record(folder)
    warnings: list[str] = []
    trials = [load_trial(d, warnings) for d in folder.trial_dirs() if _has_records(d)]
    trials.sort(key=lambda t: (t.number if t.number is not None else 1 << 30, t.trial_id))
    return SweepResults(name=name, path=folder.path, spec=spec, trials=trials, warnings=warnings)


def _has_records(trial_dir: Path) -> bool:
    """False for a trial folder caught between its creation and its first record."""
    return any((trial_dir / name).exists() for name in (TRIAL_FILE, CV_FILE, EVENTS_FILE))


def load_trial(trial_dir: Path, warnings: list[str] | None = None) -> TrialResult:
    """A trial from its folder, repairing what the other records can repair.

    Folds come from folds/*.json (written as each fold ends); a fold file that does not parse is
    taken from cv.json where cv.json holds that fold, so ``status``, ``report`` and a resumed
    trial agree on which folds are done.
    """
    notes: list[str] = []
    info = read_trial_record(trial_dir, notes)
    folds, damaged = read_fold_files(trial_dir)
    cv = read_cv_result(trial_dir)
    if damaged:
        have = {f.fold for f in folds}
        from_cv = [f for f in (cv.folds if cv else []) if f.fold not in have]
        folds = sorted([*folds, *from_cv], key=lambda f: f.fold)
        recovered = ", ".join(str(f.fold) for f in from_cv)
        notes.append(
            f"{', '.join(str(p) for p in damaged)} damaged; "
            + (f"fold(s) {recovered} read from cv.json" if from_cv else "that fold runs again on `sweep resume`")
        )
    config = info.config or (cv.config if cv else {})
    n_folds = int(info.n_folds or (cv.n_folds if cv else 0))
    if warnings is not None:
        warnings.extend(notes)
    return TrialResult(
        trial_id=info.trial_id or trial_dir.name,
        number=info.number,
        params=info.params or {},
        state=info.state or RUNNING,
        reason=info.reason,
        config=config,
        n_folds=n_folds,
        folds=folds,
        started=info.started,
        ended=info.ended,
        path=trial_dir,
        warnings=notes,
        start=info.start,
    )
