"""Paired pruning: stop a trial once it is worse than the incumbent on the same images.

ASHA cuts a trial at a fold rung by comparing its running mean with other trials' means, each
measured on the images of the folds they happened to finish; two means a few hundredths apart on
294 images each are within each other's noise, so ASHA prunes good trials and keeps lucky ones.
Here every fold's per-image scores are in the sweep folder (trainer.results.FoldResult), and all
trials of a sweep share its folds, so after each fold a trial is compared with the incumbent (the
best trial with every fold done) on exactly the images both validated in the same fold. It is
stopped when the paired 95 % bootstrap interval of the mean Dice difference lies below zero: the
evidence module's statistic and rule (sweeps.folder._evidence), so a trial this scheduler prunes
is one the report would call worse than the incumbent. That is a one-sided test at 2.5 %; a
challenger that ties the incumbent runs on, as does every trial while no trial is complete (the
starting points, run first, usually become the first incumbent).

The mean, not the median (Wilcoxon's signed ranks), is tested because the sweep's objective is a
mean: per-image Dice differences are heavy-tailed (most images near 0, a few near +-1), and a
rank test can call a trial worse whose mean is higher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from sweeps.folder import WORSE, SweepFolder, load_sweep, paired_difference, update_trial_record
from sweeps.folder._sweep_results import TrialResult

#: Fewer paired images than this never prune: an interval from a handful of images is not evidence.
MIN_PAIRED_IMAGES = 10


def paired_prune_reason(challenger: TrialResult, incumbent: TrialResult) -> str | None:
    """Why ``challenger`` should stop (its paired interval against ``incumbent`` below 0), or None."""
    d = paired_difference(challenger, incumbent, "incumbent")
    if d.n_pairs < MIN_PAIRED_IMAGES or d.verdict != WORSE:
        return None
    return (
        f"worse than the incumbent {incumbent.label} on the same {d.n_pairs} images after "
        f"{challenger.folds_done} of {challenger.n_folds} folds: Dice {d.mean:+.3f}, 95 % interval "
        f"{d.low:+.3f} to {d.high:+.3f}"
    )


class PairedScheduler(FIFOScheduler):
    """Ray Tune scheduler: after each fold, stop a trial the incumbent beats image by image.

    The decision and its figures go into the trial's record (``pruned_by``) before the trial is
    stopped, so the driver, the trial's trackers and ``sweep status`` all give the same reason.
    """

    def __init__(self, sweep_dir: str | Path) -> None:
        super().__init__()
        self.sweep_dir = Path(sweep_dir)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        folds_done, n_folds = int(result.get("folds_done") or 0), int(result.get("n_folds") or 0)
        if not 0 < folds_done < n_folds:
            return TrialScheduler.CONTINUE
        try:
            reason = self._reason(str(trial.trial_id))
        except Exception as exc:  # a record caught mid-write: decide at the next fold, and say so
            print(
                f"[segsweep] paired pruning: cannot compare trial {trial.trial_id} after fold {folds_done} "
                f"({type(exc).__name__}: {exc}); it runs on",
                flush=True,
            )
            return TrialScheduler.CONTINUE
        if reason is None:
            return TrialScheduler.CONTINUE
        update_trial_record(SweepFolder(self.sweep_dir).trial_dir(str(trial.trial_id)), pruned_by=reason)
        return TrialScheduler.STOP

    def _reason(self, trial_id: str) -> str | None:
        sweep = load_sweep(self.sweep_dir.parent, self.sweep_dir.name)
        challenger = next((t for t in sweep.trials if t.trial_id == trial_id), None)
        incumbents = [t for t in sweep.completed() if t.trial_id != trial_id]
        if challenger is None or not incumbents:
            return None
        return paired_prune_reason(challenger, incumbents[0])

    def debug_string(self) -> str:
        return "Using PairedScheduler: a trial stops when the incumbent beats it on the same images."
