"""Fold models: `segsweep cv --keep-models` bundles, and fold ensembles in `segsweep predict` (tiny data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reports.bundle import load_bundle
from trainer.config import CVConfig
from trainer.cv import fold_model_dir, run_cv
from trainer.data import prepare_dataset

TINY = dict(encoder="mobilenetv2", weights="none", image_size=64, folds=2, epochs=1, batch_size=2)


@pytest.fixture(scope="module")
def kept_cv(kvasir_seg_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cv-kept")
    data = prepare_dataset(kvasir_seg_dir, 64)
    run_cv(CVConfig(**TINY), data, out, keep_models=True, data_source=str(kvasir_seg_dir))
    return out


def test_cv_keeps_each_fold_model_as_a_bundle(kept_cv: Path) -> None:
    cv = json.loads((kept_cv / "cv.json").read_text())
    for fold in cv["folds"]:
        bundle = load_bundle(fold_model_dir(kept_cv, fold["fold"]))
        assert bundle.config.to_dict() == cv["config"]
        assert bundle.source["fold"] == fold["fold"] and bundle.source["n_folds"] == 2
        # The fold's training images only: its validation images are not among them.
        assert bundle.train_stems().isdisjoint(fold["val_stems"]) and len(bundle.train_stems()) == fold["n_train"]


def test_kept_fold_model_reproduces_the_fold_score(kept_cv: Path, kvasir_seg_dir: Path) -> None:
    from trainer.metrics import medai_scores
    from trainer.training import predict_probabilities

    data = prepare_dataset(kvasir_seg_dir, 64)
    fold = json.loads((kept_cv / "folds" / "fold_01.json").read_text())
    bundle = load_bundle(fold_model_dir(kept_cv, 1))
    rows = np.array(sorted(data.stems.index(s) for s in fold["val_stems"]))
    probabilities = predict_probabilities(bundle.load_model(), np.asarray(data.images[rows]), bundle.config)
    scores = medai_scores(np.asarray(data.masks[rows])[..., 0], probabilities)
    assert scores["mean_dice"] == pytest.approx(fold["dice"], abs=1e-5)
