"""Fold models: `segsweep cv --keep-models` bundles, and fold ensembles in `segsweep predict` (tiny data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support import TINY_ENCODER
from trainer.bundle import load_bundle
from trainer.config import CVConfig
from trainer.cv import fold_model_dir, run_cv
from trainer.data import prepare_dataset

TINY = dict(encoder=TINY_ENCODER, weights="none", image_size=64, folds=2, epochs=1, batch_size=2)


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


def test_ensemble_averages_the_models_probabilities() -> None:
    from reports.predict import _ensemble_average

    class Constant:
        def __init__(self, value: float) -> None:
            self.value = value

        def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
            return np.full((*x.shape[:3], 1), self.value, np.float32)

    bundle = type("B", (), {"config": CVConfig(**TINY)})()
    batch = np.zeros((3, 64, 64, 3), np.uint8)
    average = _ensemble_average([Constant(0.2), Constant(0.9)], batch, bundle, 2, tta=False)  # type: ignore[arg-type]
    np.testing.assert_allclose(average, 0.55, rtol=1e-6)
    with_tta = _ensemble_average([Constant(0.2), Constant(0.9)], batch, bundle, 2, tta=True)  # type: ignore[arg-type]
    np.testing.assert_allclose(with_tta, 0.55, rtol=1e-6)


def test_predict_with_a_fold_set_and_postprocessing(kept_cv: Path, kvasir_seg_dir: Path, tmp_path: Path) -> None:
    from sweeps.cli import main

    out = tmp_path / "pred"
    images, masks = str(kvasir_seg_dir / "images"), str(kvasir_seg_dir / "masks")
    code = main(["predict", str(kept_cv), "--images", images, "--masks", masks, "--out", str(out), "--tta",
                 "--postprocess", "min-area,fill-holes"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["ensemble"]) == 2 and metrics["postprocess"] == ["min-area", "fill-holes"]
    variants = [row["variant"] for row in metrics["rows"]]
    assert variants == [
        "plain", "tta",
        "plain+min-area", "plain+fill-holes", "plain+min-area+fill-holes",
        "tta+min-area", "tta+fill-holes", "tta+min-area+fill-holes",
    ]  # fmt: skip
    assert all(row["n_images"] == 12 for row in metrics["rows"])
    assert len(list((out / "masks_postprocessed").glob("*.png"))) == 12
    # The fold models were trained on these images: predict says their scores are not test scores.
    assert metrics["overlap_with_training"]


def test_incomplete_fold_set_is_refused(kept_cv: Path, kvasir_seg_dir: Path, tmp_path: Path, capsys) -> None:
    import shutil

    from sweeps.cli import main

    partial = tmp_path / "partial"
    shutil.copytree(kept_cv, partial)
    shutil.rmtree(partial / "models" / "fold_02")
    code = main(["predict", str(partial), "--images", str(kvasir_seg_dir / "images"), "--out", str(tmp_path / "p")])
    assert code == 2
    err = capsys.readouterr().err
    assert "holds 1 fold model(s)" in err and "2 folds" in err and "Traceback" not in err
    code = main(["predict", str(tmp_path), "--images", str(kvasir_seg_dir / "images"), "--out", str(tmp_path / "q")])
    assert code == 2
    assert "neither a model bundle" in capsys.readouterr().err


def test_unknown_postprocess_option(kept_cv: Path, kvasir_seg_dir: Path, tmp_path: Path, capsys) -> None:
    from sweeps.cli import main

    code = main(["predict", str(kept_cv), "--images", str(kvasir_seg_dir / "images"), "--out", str(tmp_path / "p"),
                 "--postprocess", "min-area,smooth"])  # fmt: skip
    assert code == 2
    assert "unknown option(s) smooth" in capsys.readouterr().err


def test_retrain_a_cv_folder(kept_cv: Path, tmp_path: Path) -> None:
    from sweeps.cli import main

    code = main(["retrain", str(kept_cv), "--out", str(tmp_path / "model"), "--quiet"])
    assert code == 0
    bundle = load_bundle(tmp_path / "model")
    cv = json.loads((kept_cv / "cv.json").read_text())
    assert bundle.config.to_dict() == cv["config"]
    assert bundle.source["cv"]["n_folds"] == 2


def test_postprocess_mask_drops_specks_and_fills_holes() -> None:
    from reports.count import postprocess_mask

    mask = np.zeros((100, 100), np.uint8)
    mask[10:50, 10:50] = 1
    mask[20:30, 20:30] = 0  # a hole
    mask[80, 80] = 1  # a speck: 1e-4 of the image, below the counter's 5e-4
    dropped = postprocess_mask(mask, ["min-area"])
    assert dropped[80, 80] == 0 and dropped[20:30, 20:30].sum() == 0 and dropped[10:50, 10:50].sum() == 1600 - 100
    filled = postprocess_mask(mask, ["fill-holes"])
    assert filled[80, 80] == 1 and filled[10:50, 10:50].sum() == 1600
    both = postprocess_mask(mask, ["min-area", "fill-holes"])
    assert both.sum() == 1600
    assert np.array_equal(postprocess_mask(mask, []), mask)


def test_report_draws_the_winners_best_median_and_worst_images_with_its_fold_models(
    kept_cv: Path, tmp_path: Path
) -> None:
    """A sweep whose winner kept its fold models (`sweep run --keep-models 1`): the report predicts its
    best, median and worst out-of-fold images with the fold model that validated each (issue 23)."""
    import io
    import re
    import shutil

    from PIL import Image

    from reports import _gallery
    from reports.report import Figure, build_report, render_html
    from sweeps.folder import load_sweep
    from tests.support.fake_sweep import FakeTrial, make_sweep

    params = {"encoder": TINY_ENCODER, "weights": "none", "batch_size": 2, "lr": CVConfig(**TINY).lr}
    path = make_sweep(tmp_path, "kept", [FakeTrial(params, [0.5, 0.6])], with_study=False)
    trial_dir = path / "trials" / "trial_00000"
    shutil.rmtree(trial_dir / "folds")  # the fabricated folds give way to the real, kept ones
    for name in ("folds", "models", "cv.json"):
        copy = shutil.copytree if (kept_cv / name).is_dir() else shutil.copy
        copy(kept_cv / name, trial_dir / name)
    report = build_report(load_sweep(tmp_path, "kept"))
    [section] = [s for s in report.sections if s.title == "The winner on images"]
    [figure] = [b for b in section.blocks if isinstance(b, Figure)]
    assert figure.png is not None and figure.plot is None
    with Image.open(io.BytesIO(figure.png)) as picture:
        assert picture.size[0] >= 3 * 256  # three tiles: best, median, worst
    assert _gallery.LEGEND in section.blocks
    scores = _gallery.ranked_scores(load_sweep(tmp_path, "kept").trials[0])
    assert [p.role for p in _gallery.best_median_worst(scores)] == ["best", "median", "worst"] and len(scores) == 12
    page = re.sub(r"<script[^>]*>.*?</script>", "", render_html(report), flags=re.S)
    assert 'id="winner_images"' in page and page.count('src="data:image/png;base64,') == 1

    shutil.rmtree(trial_dir / "models" / "fold_02")  # a fold model gone: said, no picture
    report = build_report(load_sweep(tmp_path, "kept"))
    [section] = [s for s in report.sections if s.title == "The winner on images"]
    assert not any(isinstance(b, Figure) for b in section.blocks)
    said = "No images drawn: the winner's fold models are not kept (none for fold(s) 2,"
    assert any(str(b).startswith(said) for b in section.blocks)
