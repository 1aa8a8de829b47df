"""Fold models kept by a sweep (`sweep run --keep-models K`): only the best K trials keep theirs.

Each trial's cross-validation saves its fold models in ``trials/<id>/models/fold_NN/`` (bundles, as
``segsweep cv --keep-models`` writes them). At the end of every trial and at the
end of the sweep, :func:`prune_fold_models` deletes the models of trials that can no longer be among
the K best: completed trials ranked below K by mean CV Dice (the report's winner rule), and trials
that were pruned or failed. Trials still running keep theirs until they end.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from trainer.cv import MODELS_DIR

#: Trial states (trial.json) whose trial will train no more folds.
_ENDED_WITHOUT_RESULT = ("PRUNED", "FAILED")


def _trial_state(folder: Path) -> str | None:
    try:
        state = json.loads((folder / "trial.json").read_text()).get("state")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return str(state) if state else None


def _complete_mean_dice(folder: Path) -> float | None:
    """The mean Dice of a trial whose cross-validation finished every fold, else None."""
    try:
        cv = json.loads((folder / "cv.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    folds = cv.get("folds") or []
    if not cv.get("complete") or len(folds) != cv.get("n_folds"):
        return None
    values = [float(f["dice"]) for f in folds]
    mean = sum(values) / len(values)
    return None if math.isnan(mean) else mean


def prune_fold_models(sweep_dir: str | Path, keep: int, *, sweep_ended: bool = False) -> list[str]:
    """Delete the fold models of trials outside the best ``keep``; return the trial ids pruned.

    ``sweep_ended``: no trial runs any more, so incomplete trials lose theirs too.
    """
    trials = Path(sweep_dir) / "trials"
    if keep < 1 or not trials.is_dir():
        return []
    scored = {}
    for folder in trials.iterdir():
        mean = _complete_mean_dice(folder) if _trial_state(folder) not in _ENDED_WITHOUT_RESULT else None
        if mean is not None:
            scored[folder.name] = mean
    best = set(sorted(scored, key=lambda name: scored[name], reverse=True)[:keep])
    removed = []
    for folder in sorted(trials.iterdir()):
        models = folder / MODELS_DIR
        if not models.is_dir() or folder.name in best:
            continue
        ended = folder.name in scored or _trial_state(folder) in _ENDED_WITHOUT_RESULT
        if ended or sweep_ended:
            shutil.rmtree(models, ignore_errors=True)
            removed.append(folder.name)
    return removed
