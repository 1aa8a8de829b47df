"""Fold models kept by a sweep (`sweep run --keep-models K`): only the best K trials keep theirs.

Each trial's cross-validation saves its fold models in ``trials/<id>/models/fold_NN/`` (bundles, as
``segsweep cv --keep-models`` writes them). At the end of every trial and at the end of the sweep,
:func:`prune_fold_models` deletes the models of trials that can no longer be among the K best: trials
ranked below K by the leaderboard's ranking (sweeps.folder.rank_trials), and trials that were pruned
or failed. Trials still running keep theirs until they end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sweeps.folder import FAILED, PRUNED, SweepFolder, is_eligible, load_trial, rank_trials
from trainer.results import MODELS_DIR


def prune_fold_models(sweep_dir: str | Path, keep: int, *, sweep_ended: bool = False) -> list[str]:
    """Delete the fold models of trials outside the best ``keep``; return the trial ids pruned.

    ``sweep_ended``: no trial runs any more, so incomplete trials lose theirs too.
    """
    folder = SweepFolder(Path(sweep_dir))
    if keep < 1 or not folder.trials_dir.is_dir():
        return []
    trials = rank_trials([load_trial(d) for d in folder.trial_dirs()])
    best = {t.trial_id for t in [t for t in trials if is_eligible(t)][:keep]}
    removed = []
    for trial in trials:
        assert trial.path is not None
        models = trial.path / MODELS_DIR
        if not models.is_dir() or trial.trial_id in best:
            continue
        ended = is_eligible(trial) or trial.state in (PRUNED, FAILED)
        if ended or sweep_ended:
            shutil.rmtree(models, ignore_errors=True)
            removed.append(trial.trial_id)
    return removed
