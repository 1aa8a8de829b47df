"""`sweep run --keep-models K`: only the best K trials keep their fold models (sweeps._kept_models)."""

from __future__ import annotations

from pathlib import Path

from segsweep.base.files import write_json_atomic
from sweeps._kept_models import prune_fold_models
from sweeps.folder import SweepFolder, update_trial_record
from sweeps.spec import SweepSpec
from trainer.results import MODELS_DIR, FoldResult, fold_model_dir, fold_path


def _trial(sweep: Path, trial_id: str, state: str, dice: list[float], n_folds: int = 2) -> Path:
    folder = SweepFolder(sweep).trial_dir(trial_id)
    for fold in range(1, len(dice) + 1):
        fold_model_dir(folder, fold).mkdir(parents=True)
        (fold_model_dir(folder, fold) / "weights.h5").write_text("w")
    update_trial_record(folder, trial_id=trial_id, state=state, n_folds=n_folds)
    for fold, value in enumerate(dice, start=1):
        result = FoldResult(
            fold=fold, n_train=4, n_val=2, dice=value, iou=value, epochs_run=1, lr_drops=[], history=[], seconds=1.0
        )
        write_json_atomic(fold_path(folder, fold), result.to_dict())
    return folder


def _kept(sweep: Path) -> set[str]:
    return {d.name for d in SweepFolder(sweep).trial_dirs() if (d / MODELS_DIR).is_dir()}


def test_only_the_best_complete_trials_keep_their_models(tmp_path: Path) -> None:
    _trial(tmp_path, "a", "COMPLETE", [0.5, 0.6])
    _trial(tmp_path, "b", "COMPLETE", [0.7, 0.7])
    _trial(tmp_path, "c", "COMPLETE", [0.2, 0.3])
    _trial(tmp_path, "d", "PRUNED", [0.9])  # stopped by ASHA after one fold: never a winner
    _trial(tmp_path, "e", "RUNNING", [0.1])  # may still finish
    _trial(tmp_path, "f", "FAILED", [0.95, 0.95])

    removed = prune_fold_models(tmp_path, 2)

    assert sorted(removed) == ["c", "d", "f"]
    assert _kept(tmp_path) == {"a", "b", "e"}
    # At the sweep's end nothing runs any more: the unfinished trial's models go too.
    assert prune_fold_models(tmp_path, 2, sweep_ended=True) == ["e"]
    assert _kept(tmp_path) == {"a", "b"}


def test_keep_zero_deletes_nothing(tmp_path: Path) -> None:
    _trial(tmp_path, "a", "COMPLETE", [0.5, 0.6])
    assert prune_fold_models(tmp_path, 0, sweep_ended=True) == []
    assert _kept(tmp_path) == {"a"}


def test_negative_keep_models_is_refused() -> None:
    import pytest

    from segsweep.base.errors import ConfigError

    spec = SweepSpec(name="s", data="d", space="quick", trials=1, storage="x", keep_models=-1)
    with pytest.raises(ConfigError, match="--keep-models must be 0 or more"):
        spec.validate()
