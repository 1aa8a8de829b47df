"""retrain -> model bundle -> predict, on small synthetic data; bundle errors; the real-data run."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sweeps.cli import main
from sweeps.folder import load_sweep
from tests.support import TINY_ENCODER
from tests.support.fake_sweep import FakeTrial, make_sweep, read_json
from tests.support.synth import make_exif_turned_pair
from trainer.bundle import BundleError, load_bundle

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    assert image is not None, f"cannot read {path}"
    return np.asarray(image)


PARAMS = {"encoder": TINY_ENCODER, "weights": "none", "batch_size": 4, "lr": 1e-3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, kvasir_seg_dir: Path) -> tuple[Path, Path]:
    """(storage, bundle): a fabricated sweep on the synthetic data set, its winner retrained."""
    root = tmp_path_factory.mktemp("retrain")
    trials = [
        FakeTrial(PARAMS, [0.7, 0.6], epochs=3, lr_drops=[[1], [2]]),
        FakeTrial({**PARAMS, "lr": 1e-2}, [0.5, 0.6], epochs=3),
    ]
    make_sweep(root / "sweeps", "s", trials, data=kvasir_seg_dir, limit=None)
    bundle = root / "model"
    code = main(["retrain", "s", "--storage", str(root / "sweeps"), "--out", str(bundle), "--quiet"])
    assert code == 0
    return root / "sweeps", bundle


@pytest.fixture(scope="module")
def test_set(tmp_path_factory: pytest.TempPathFactory, kvasir_seg_dir: Path) -> Path:
    """The synthetic pairs at another, non-square size (96 wide, 80 high), plus one unreadable image."""
    root = tmp_path_factory.mktemp("test-set")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
        for path in sorted((kvasir_seg_dir / sub).glob("*.jpg")):
            image = _read(path, cv2.IMREAD_COLOR)
            interpolation = cv2.INTER_LINEAR if sub == "images" else cv2.INTER_NEAREST
            cv2.imwrite(str(root / sub / f"{path.stem}.{'jpg' if sub == 'images' else 'png'}"),
                        cv2.resize(image, (96, 80), interpolation=interpolation))  # fmt: skip
    (root / "images" / "truncated.jpg").write_bytes((root / "images" / "case000.jpg").read_bytes()[:40])
    cv2.imwrite(str(root / "masks" / "truncated.png"), np.zeros((80, 96), np.uint8))
    return root


@pytest.mark.slow
def test_retrain_writes_a_bundle_with_the_imitated_schedule(trained: tuple[Path, Path]) -> None:
    _, bundle = trained
    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["README.md", "config.json", "history.json", "schedule.json", "train_stems.txt", "weights.h5"]
    meta = read_json(bundle / "config.json")
    assert meta["bundle_format"] == 1 and meta["segsweep_version"]
    assert meta["source"]["trial"] == "trial_00000" and meta["preprocessing"]["encoder"] == TINY_ENCODER
    assert meta["data"]["n_images"] == 12
    schedule = read_json(bundle / "schedule.json")
    assert schedule["fold_drops"] == [[1], [2]]
    assert schedule["drop_epochs"] == [2] == schedule["applied_drops"]  # median 1.5 rounds up
    history = read_json(bundle / "history.json")
    assert [h["lr"] for h in history] == pytest.approx([1e-3, 1e-3, 1e-4])
    card = (bundle / "README.md").read_text()
    assert "median, over all cross-validation folds" in card and "trial_00000" in card
    assert len((bundle / "train_stems.txt").read_text().split()) == 12


@pytest.mark.slow
def test_bundle_loads_in_a_fresh_process(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = trained
    from trainer.training import predict_probabilities

    loaded = load_bundle(bundle)
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    here = predict_probabilities(loaded.load_model(), images, loaded.config)
    script = (
        "import sys, numpy as np\n"
        "from trainer.bundle import load_bundle\n"
        "from trainer.training import predict_probabilities\n"
        "b = load_bundle(sys.argv[1])\n"
        "np.save(sys.argv[3], predict_probabilities(b.load_model(), np.load(sys.argv[2]), b.config))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(bundle), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True, timeout=300, cwd=Path(__file__).parents[2])  # fmt: skip
    assert np.allclose(np.load(tmp_path / "y.npy"), here, atol=1e-5)


@pytest.mark.slow
def test_predict_writes_original_size_png_masks_metrics_counts(
    trained: tuple[Path, Path], test_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, bundle = trained
    out = tmp_path / "pred"
    args = ["predict", str(bundle), "--images", str(test_set / "images"), "--masks", str(test_set / "masks"),
            "--out", str(out), "--tta"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "truncated.jpg" in err and "were among the model's training images" in err
    # Where the test scores went (the source sweep's folder) is said, not left to be found.
    recorded = re.search(r"^recorded the test scores for the sweep's report in (\S+)$", captured.out, re.M)
    assert recorded and Path(recorded.group(1)).parent == storage.resolve() / "s" / "predictions"
    assert read_json(Path(recorded.group(1)))["out"] == str(out.resolve())
    assert read_json(out / "prediction.json")["state"] == "complete"
    stems = [f"case{i:03d}" for i in range(12)]
    for sub in ("masks", "masks_tta", "overlays"):
        assert sorted(p.stem for p in (out / sub).glob("*.png")) == stems
    for path in [*(out / "masks").glob("*.png"), *(out / "masks_tta").glob("*.png")]:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        mask = _read(path)
        assert mask.shape == (80, 96) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
    assert _read(out / "overlays" / "case000.png").shape == (80, 96, 3)

    metrics = read_json(out / "metrics.json")
    assert [r["variant"] for r in metrics["rows"]] == ["plain", "tta"]
    assert all(r["n_images"] == 12 for r in metrics["rows"])
    assert len(metrics["per_image"]) == 12
    first = metrics["per_image"][0]
    assert {"image", "dice", "iou", "dice_tta", "iou_tta", "count", "true_count"} <= set(first)
    assert metrics["rows"][0]["dice_mean"] == pytest.approx(np.mean([p["dice"] for p in metrics["per_image"]]))
    assert metrics["skipped"][0]["file"].endswith("truncated.jpg")
    assert metrics["count_agreement"]["n_images"] == 12
    assert len(metrics["overlap_with_training"]) == 12
    # The model's configuration travels with its scores: `report --test-prediction` pairs by it.
    assert metrics["config"] == load_bundle(bundle).config.to_dict() and metrics["source"]["trial"] == "trial_00000"

    # The scores of a predicted mask file are the scores in metrics.json (lossless, original size).
    from trainer.metrics import dice_score

    predicted = _read(out / "masks" / "case003.png", cv2.IMREAD_GRAYSCALE) > 127
    truth = _read(test_set / "masks" / "case003.png", cv2.IMREAD_GRAYSCALE) > 127
    assert dice_score(truth[None], predicted[None]) == pytest.approx(metrics["per_image"][3]["dice"])

    rows = list(csv.DictReader((out / "counts.csv").open()))
    assert list(dict.fromkeys(r["image"] for r in rows)) == stems  # one row per object, every image
    assert {r["true_count"] for r in rows} <= {"1", "2"}
    from reports.count import read_counts_csv

    assert read_counts_csv(out / "counts.csv") == {r["image"]: r["count"] for r in metrics["per_image"]}
    assert (out / "skipped.txt").read_text().startswith(str(test_set / "images" / "truncated.jpg"))

    # The winner's test scores reach the report's Table 2, flagged as training images.
    assert main(["report", "s", "--storage", str(storage), "--format", "md"]) == 0
    table2 = (storage / "s" / "report" / "report.md").read_text().split("## Table 2")[1].split("## Leaderboard")[0]
    assert f"| Test set {test_set / 'images'} (12 images; mean ± std over images [95 % interval of the mean]; " \
           "WARNING: 12 of them were training images) |" in table2  # fmt: skip
    assert "| Dice (flip test-time augmentation) |" in table2  # TTA is a column of the test set's row


@pytest.mark.slow
def test_predict_into_the_data_set_is_refused_and_the_true_masks_kept(
    trained: tuple[Path, Path], test_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `predict --out D` with D/masks as --masks wrote the predictions over the true PNG masks, scored
    # them against themselves (Dice 1.0000 ± 0.0000) and the next report published that row.
    _, bundle = trained
    data = tmp_path / "D"
    shutil.copytree(test_set, data)
    before = {p.name: p.read_bytes() for p in (data / "masks").iterdir()}
    args = ["predict", str(bundle), "--images", str(data / "images"), "--masks", str(data / "masks"), "--out"]
    assert main([*args, str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {data} is the data set folder {data}" in err[0]
    assert {p.name: p.read_bytes() for p in (data / "masks").iterdir()} == before
    assert sorted(p.name for p in data.iterdir()) == ["images", "masks"]


@pytest.mark.slow
def test_a_second_prediction_replaces_its_own_whole_and_never_mixes_with_another(
    trained: tuple[Path, Path], test_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A second predict into an --out holding an earlier prediction kept the earlier masks beside the
    # new ones, and `count` then counted both.
    _, bundle = trained
    out = tmp_path / "pred"
    args = ["predict", str(bundle), "--images", str(test_set / "images"), "--out", str(out)]
    assert main(args) == 0
    first = read_json(out / "prediction.json")
    assert first["state"] == "complete" and first["model"] == str(bundle.resolve()) and first["n_images"] == 12
    assert not (out / "masks_tta").exists()
    stale = tmp_path / ".pred.k1lled_0"  # a prediction killed before its rename
    (stale / "masks").mkdir(parents=True)
    capsys.readouterr()

    # The same model on the same images: replaced whole (a rerun with --tta).
    assert main([*args, "--tta"]) == 0
    assert "(replacing its earlier prediction of the same model and images)" in capsys.readouterr().out
    assert (out / "masks_tta").is_dir() and read_json(out / "prediction.json")["tta"] is True
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]  # no staging folder, no lock file left

    # Other images: refused, the earlier prediction untouched.
    subset = tmp_path / "subset"
    subset.mkdir()
    for path in sorted((test_set / "images").glob("case00[0-3].jpg")):
        shutil.copy(path, subset / path.name)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["predict", str(bundle), "--images", str(subset), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {out} holds a prediction of {bundle.resolve()} on " in err[0]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert main(["count", str(out / "masks")]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.strip().splitlines()))  # one row per object
    objects = [(r["image"], r["object"]) for r in rows]
    assert len(objects) == len(set(objects)) and len({r["image"] for r in rows}) == 12  # the 12 images, once


@pytest.mark.slow
def test_predict_without_masks(trained: tuple[Path, Path], test_set: Path, tmp_path: Path) -> None:
    _, bundle = trained
    out = tmp_path / "pred"
    assert main(["predict", str(bundle), "--images", str(test_set / "images"), "--out", str(out)]) == 0
    assert not (out / "metrics.json").exists()
    assert len(list((out / "masks").glob("*.png"))) == 12
    assert "true_count" not in (out / "counts.csv").read_text().splitlines()[0]


def _bundle_description(root: Path) -> Path:
    """A bundle's description without a model: enough for what predict checks before loading it."""
    from trainer.bundle import bundle_meta
    from trainer.config import CVConfig

    bundle = root / "model"
    bundle.mkdir()
    config = CVConfig(encoder=TINY_ENCODER, weights="none", image_size=64, folds=2)
    (bundle / "config.json").write_text(json.dumps(bundle_meta(config, data={}, source={}, seconds=0.0)))
    (bundle / "weights.h5").write_bytes(b"")
    return bundle


def test_masks_that_are_not_binary_are_one_line_saying_so_first(
    test_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was "masks do not match images: .../case003.png: is not binary: ... (masks must be 0/255, or 0/1;
    # .../case004.png: ..." over five files, with unbalanced parentheses.
    masks = Path(shutil.copytree(test_set / "masks", tmp_path / "masks"))
    for stem in ("case003", "case004", "case005"):
        cv2.imwrite(str(masks / f"{stem}.png"), np.tile(np.linspace(0, 255, 96), (80, 1)).astype(np.uint8))
    out = tmp_path / "pred"
    args = ["predict", str(_bundle_description(tmp_path)), "--images", str(test_set / "images"), "--masks",
            str(masks), "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        f"segsweep: error: 3 of the 13 masks in {masks} cannot be used as binary masks, e.g. {masks / 'case003.png'}: "
        "is not binary: "
    ), err[0]
    assert err[0].endswith("; or predict without --masks") and err[0].count("(") == err[0].count(")")
    assert not out.exists()


def test_anti_aliased_masks_are_scored_binarised_with_one_warning(
    test_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reports.predict import _check_masks, _files_by_stem
    from tests.support.synth import anti_aliased

    masks = Path(shutil.copytree(test_set / "masks", tmp_path / "masks"))
    for path in sorted(masks.glob("case*.png"))[:4]:
        cv2.imwrite(str(path), anti_aliased((_read(path) >= 128).astype(np.uint8)))
    images, _ = _files_by_stem(test_set / "images", "images")
    found, _ = _files_by_stem(masks, "masks")
    _check_masks(images, found, masks)  # refused before: "masks do not match images: ... is not binary"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segsweep: warning: 4 mask(s) have anti-aliased edges"), err


@pytest.mark.slow
def test_masks_not_matching_images(
    trained: tuple[Path, Path], test_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, bundle = trained
    masks = tmp_path / "masks"
    shutil.copytree(test_set / "masks", masks)
    (masks / "case001.png").unlink()
    (masks / "stray.png").write_bytes((masks / "case002.png").read_bytes())
    args = ["predict", str(bundle), "--images", str(test_set / "images"), "--masks", str(masks), "--out",
            str(tmp_path / "p")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 image(s) have no mask" in err and "case001" in err and "stray" in err
    (masks / "stray.png").unlink()
    cv2.imwrite(str(masks / "case001.png"), np.zeros((10, 10), np.uint8))
    assert main(args) == 2
    assert "case001.jpg is 96x80 but its mask" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # nothing predicted before the check


def test_image_turned_by_exif_against_an_untagged_mask_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # OpenCV decodes the image turned upright, the PNG mask as stored: a square pair passed the size
    # check and was scored rotated (synthetic pairs: Dice 0.002 instead of 0.77); a non-square one
    # ended in a ValueError traceback from the metrics.
    from trainer.bundle import bundle_meta
    from trainer.config import CVConfig

    bundle = tmp_path / "model"  # a bundle's description is enough: the check comes before the model loads
    bundle.mkdir()
    config = CVConfig(encoder=TINY_ENCODER, weights="none", image_size=64, folds=2)
    (bundle / "config.json").write_text(json.dumps(bundle_meta(config, data={}, source={}, seconds=0.0)))
    (bundle / "weights.h5").write_bytes(b"")
    make_exif_turned_pair(tmp_path / "test")
    out = tmp_path / "pred"
    args = ["predict", str(bundle), "--images", str(tmp_path / "test" / "images"), "--masks",
            str(tmp_path / "test" / "masks"), "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "a.jpg has EXIF orientation 6 (turned 90 degrees clockwise) but its mask" in err[0]
    assert "mogrify -auto-orient" in err[0]
    assert not out.exists()


@pytest.mark.slow
def test_bundle_errors(trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, bundle = trained
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nothing")
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    meta = read_json(copy / "config.json")
    (copy / "config.json").write_text(json.dumps({**meta, "bundle_format": 99, "segsweep_version": "9.0"}))
    with pytest.raises(BundleError, match=r"format 99 made by segsweep 9.0.*reads format 1"):
        load_bundle(copy)
    (copy / "weights.h5").unlink()
    assert main(["predict", str(copy), "--images", str(tmp_path), "--out", str(tmp_path / "p")]) == 2
    assert "weights.h5 missing" in capsys.readouterr().err


@pytest.mark.slow
def test_retrain_bad_input(trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage, bundle = trained
    assert main(["retrain", "s", "--storage", str(storage), "--out", str(bundle)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["retrain", "s", "--storage", str(storage), "--out", str(tmp_path / "m"), "--trial", "x"]) == 2
    assert "no trial 'x'" in capsys.readouterr().err
    make_sweep(tmp_path / "sw", "gone", [FakeTrial(PARAMS, [0.5, 0.5])], data=tmp_path / "missing-data")
    assert main(["retrain", "gone", "--storage", str(tmp_path / "sw"), "--out", str(tmp_path / "m")]) == 2
    assert "missing-data is not there" in capsys.readouterr().err
    assert load_sweep(storage, "s").trials[0].trial_id == "trial_00000"


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.long
def test_real_kvasir_seg_retrain_and_predict_medico_val(real_kvasir_seg: Path, tmp_path: Path) -> None:
    """Done-when of the reports issue, on a sweep folder made by real cross-validations.

    Two configurations are cross-validated by the trainer (as a sweep's trials would be) on 40
    development images from Medico 2020's training split; the winner is reported, retrained and
    predicts the 120 images of splits/medico2020_val.txt, given as a folder of symlinks.
    """
    import optuna

    from segsweep.base.files import write_json_atomic
    from trainer.config import CVConfig
    from trainer.cv import run_cv
    from trainer.data import prepare_dataset, read_split

    storage = tmp_path / "sweeps"
    sweep = storage / "real"
    dev_split = str(real_kvasir_seg / "splits" / "medico2020_train.txt")
    write_json_atomic(sweep / "sweep.json", {"name": "real", "data": str(real_kvasir_seg), "space": "quick"})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="real", storage=f"sqlite:///{sweep / 'optuna.db'}", direction="maximize")
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    }
    for number, lr in enumerate((1e-3, 3e-3)):
        config = CVConfig(encoder=TINY_ENCODER, weights="none", batch_size=8, epochs=2, lr=lr, folds=2,
                          image_size=64, limit=40, dev_split=dev_split)  # fmt: skip
        data = prepare_dataset(real_kvasir_seg, 64, split=dev_split, limit=40)
        trial_dir = sweep / "trials" / f"trial_{number:05d}"
        result = run_cv(config, data, trial_dir, data_source=str(real_kvasir_seg))
        info = {"trial_id": trial_dir.name, "number": number, "params": {"lr": lr}, "state": "COMPLETE",
                "config": config.to_dict(), "n_folds": 2}  # fmt: skip
        write_json_atomic(trial_dir / "trial.json", info)
        study.add_trial(optuna.trial.create_trial(value=result.mean["dice"], params={"lr": lr},
                                                  distributions=distributions))  # fmt: skip

    assert main(["report", "real", "--storage", str(storage)]) == 0
    for name in ("report.html", "report.md", "best.json"):
        assert (sweep / "report" / name).is_file()
    bundle = tmp_path / "model"
    assert main(["retrain", "real", "--storage", str(storage), "--out", str(bundle), "--quiet"]) == 0

    val = read_split(real_kvasir_seg, "medico2020_val.txt")
    assert len(val) == 120
    test_set = tmp_path / "medico-val"
    for sub in ("images", "masks"):
        (test_set / sub).mkdir(parents=True)
        for stem in val:
            (test_set / sub / f"{stem}.jpg").symlink_to(real_kvasir_seg / sub / f"{stem}.jpg")
    out = tmp_path / "pred"
    args = ["predict", str(bundle), "--images", str(test_set / "images"), "--masks", str(test_set / "masks"),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 120
    for path in masks:
        original = _read(real_kvasir_seg / "images" / f"{path.stem}.jpg", cv2.IMREAD_COLOR)
        mask = _read(path)
        assert mask.shape == original.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
    metrics = read_json(out / "metrics.json")
    assert metrics["rows"][0]["n_images"] == 120 and metrics["overlap_with_training"] == []
    assert len({r["image"] for r in csv.DictReader((out / "counts.csv").open())}) == 120
    print(json.dumps({"rows": metrics["rows"], "count_agreement": metrics["count_agreement"]}), file=sys.stderr)
    assert os.environ.get("SEGSWEEP_CACHE")  # the run used the test's own cache


def test_images_in_subfolders_are_listed_as_skipped_not_dropped_silently(tmp_path: Path) -> None:
    # A test set partly moved into a subfolder was scored on fewer images without a word.
    from reports.predict import _files_by_stem

    images = tmp_path / "images"
    (images / "batch2" / "deeper").mkdir(parents=True)
    for path in (images / "a.jpg", images / "batch2" / "b.jpg", images / "batch2" / "deeper" / "c.png"):
        cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    (images / "batch2" / "notes.txt").write_text("not an image")
    found, skipped = _files_by_stem(images, "images")
    assert list(found) == ["a"]
    assert [(Path(f).name, why.split(":")[0]) for f, why in skipped] == [
        ("b.jpg", f"in a subfolder of {images}"),
        ("c.png", f"in a subfolder of {images}"),
    ]


def test_hidden_images_are_listed_as_skipped_not_dropped_silently(tmp_path: Path) -> None:
    # An image named .x.jpg was left out of the prediction without a word.
    from reports.predict import _files_by_stem

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", ".b.jpg"):
        cv2.imwrite(str(images / name), np.zeros((8, 8, 3), np.uint8))
    found, skipped = _files_by_stem(images, "images")
    assert list(found) == ["a"]
    why = "a hidden file (its name starts with a dot): rename it without the dot"
    assert skipped == [(str(images / ".b.jpg"), why)]
