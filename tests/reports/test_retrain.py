"""segsweep retrain: it trains on the pairs the cross-validation scored, or refuses (no training here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sweeps.cli import main
from tests.support import TINY_ENCODER
from trainer.config import CVConfig
from trainer.data import prepare_dataset
from trainer.files import write_json_atomic
from trainer.results import CV_FILE, CVResult, FoldResult


def _fabricated_cv(out: Path, data: Path) -> None:
    """cv.json of a finished 2-fold cross-validation of ``data`` as it is now."""
    prepared = prepare_dataset(data, 64)
    config = CVConfig(encoder=TINY_ENCODER, weights="none", image_size=64, folds=2, epochs=1, batch_size=2)
    folds = [FoldResult(fold=i, n_train=6, n_val=6, dice=0.6, iou=0.5, epochs_run=1, lr_drops=[], history=[],
                        seconds=1.0) for i in (1, 2)]  # fmt: skip
    info = {"path": str(data), "n_pairs": len(prepared), "image_size": 64, "cache_key": prepared.key}
    cv = CVResult(config=config.to_dict(), data=info, n_folds=2, folds=folds, seconds=2.0, complete=True)
    write_json_atomic(out / CV_FILE, cv.to_dict())


def test_retrain_refuses_a_data_set_changed_since_the_cross_validation(
    kvasir_seg_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Pairs added to the data folder after `cv` were silently trained on: the bundle's model card
    # quoted the cross-validation of 12 pairs for a model trained on 14.
    data = tmp_path / "data"
    shutil.copytree(kvasir_seg_dir, data)
    cv = tmp_path / "cv"
    cv.mkdir()
    _fabricated_cv(cv, data)
    for sub in ("images", "masks"):
        shutil.copy(data / sub / "case000.jpg", data / sub / "added.jpg")
    out = tmp_path / "model"
    assert main(["retrain", str(cv), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert f"the data set {data} changed since trial cv was cross-validated on it (12 pairs then, 13 now" in err[0]
    assert not out.exists()


def test_model_card_of_a_trial_with_unfinished_folds_says_so() -> None:
    # `retrain --trial N` of a pruned trial (1 of 2 folds) wrote "Cross-validation of this
    # configuration (2 folds, ...): Dice 0.9000 ± 0.0000": one fold's score as a 2-fold mean.
    from reports.retrain import SCHEDULE_RULE, _model_card
    from trainer.bundle import bundle_meta

    config = CVConfig(encoder=TINY_ENCODER, weights="none", image_size=64, folds=2, epochs=1)
    cv = {"n_folds": 2, "folds_done": 1, "state": "PRUNED", "mean": {"dice": 0.9, "iou": 0.8},
          "std": {"dice": 0.0, "iou": 0.0}}  # fmt: skip
    meta = bundle_meta(config, data={}, source={"sweep": "s", "trial": "trial_00001", "cv": cv}, seconds=1.0)
    schedule = {"drop_epochs": [], "rule": SCHEDULE_RULE, "fold_drops": [[]]}
    card = _model_card(meta, [], schedule)
    assert "Cross-validation of this configuration (only 1 of its 2 folds finished, trial PRUNED: not " in card
    assert "(2 folds, development set)" not in card
    meta["source"]["cv"] = {**cv, "folds_done": 2, "state": "COMPLETE"}
    assert "Cross-validation of this configuration (2 folds, development set)" in _model_card(meta, [], schedule)
