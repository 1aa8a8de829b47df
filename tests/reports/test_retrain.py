"""segsweep retrain: it trains on the pairs the cross-validation scored, or refuses; stopped, it resumes
after its last epoch (tiny data, hand-written cv folders)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segsweep.base.files import write_json_atomic
from sweeps.cli import main
from tests.support import TINY_ENCODER, checkpoint_every_epoch
from trainer.bundle import CARD_FILE, CONFIG_FILE, load_bundle, retrain_checkpoint_path
from trainer.config import CVConfig
from trainer.data import prepare_dataset
from trainer.results import CV_FILE, CVResult, EpochRecord, FoldResult


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


CONFIG = CVConfig(encoder=TINY_ENCODER, weights="none", image_size=64, folds=2, epochs=2, batch_size=2)


@pytest.fixture()
def cv_folder(kvasir_seg_dir: Path, tmp_path: Path) -> Path:
    """A finished cross-validation whose folds cut the learning rate after epoch 1."""
    folder = tmp_path / "cv"
    history = [EpochRecord(e, 1.0, 1.0, 0.1, 1e-3) for e in (1, 2)]
    folds = [FoldResult(n, 6, 6, 0.5, 0.4, 2, [1], history, 1.0) for n in (1, 2)]
    result = CVResult(config=CONFIG.to_dict(), data={"path": str(kvasir_seg_dir)}, n_folds=2, folds=folds,
                      seconds=2.0, complete=True)  # fmt: skip
    write_json_atomic(folder / "cv.json", result.to_dict())
    return folder


def test_retrain_stopped_after_an_epoch_resumes_there_and_ends_as_if_never_stopped(
    cv_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.checkpoint import EpochCheckpoint

    checkpoint_every_epoch(monkeypatch)
    assert main(["retrain", str(cv_folder), "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    capsys.readouterr()

    save = EpochCheckpoint.save

    def save_then_stop(self: EpochCheckpoint, model: object, state: object) -> None:
        save(self, model, state)  # type: ignore[arg-type]
        if state.epoch == 1:  # type: ignore[attr-defined]
            raise KeyboardInterrupt  # Ctrl-C (or SIGTERM: a Slurm time limit) just after epoch 1

    out = tmp_path / "cut"
    with monkeypatch.context() as patch:
        patch.setattr(EpochCheckpoint, "save", save_then_stop)
        assert main(["retrain", str(cv_folder), "--out", str(out), "--quiet"]) == 130
    checkpoint = retrain_checkpoint_path(out)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"segsweep: interrupted; finished epochs are kept in {checkpoint}; "
        f"resume with `segsweep retrain {cv_folder} --out {out} --quiet`"
    )
    assert checkpoint.is_file() and not out.exists()

    assert main(["retrain", str(cv_folder), "--out", str(out), "--quiet"]) == 0
    assert f"resuming {checkpoint} after epoch 1" in capsys.readouterr().err
    assert not checkpoint.exists()
    whole, resumed = load_bundle(tmp_path / "whole"), load_bundle(out)
    history = [json.loads((b.path / "history.json").read_text()) for b in (whole, resumed)]
    assert [h["epoch"] for h in history[1]] == [1, 2]
    assert [h["lr"] for h in history[1]] == [h["lr"] for h in history[0]] == pytest.approx([1e-3, 1e-4])
    np.testing.assert_allclose([h["loss"] for h in history[1]], [h["loss"] for h in history[0]], rtol=1e-5)
    for a, b in zip(whole.load_model().get_weights(), resumed.load_model().get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_retrain_with_another_seed_records_the_seed_it_trained_with_and_the_trials(
    cv_folder: Path, tmp_path: Path
) -> None:
    assert CONFIG.seed != 7
    assert main(["retrain", str(cv_folder), "--out", str(tmp_path / "seed7"), "--seed", "7", "--quiet"]) == 0
    bundle = load_bundle(tmp_path / "seed7")
    meta = json.loads((bundle.path / CONFIG_FILE).read_text())
    assert bundle.config.seed == 7 and meta["source"]["trial_seed"] == CONFIG.seed
    card = (bundle.path / CARD_FILE).read_text()
    assert f"seed 7 (the trial's was {CONFIG.seed}: retrained with --seed)" in card


def test_a_second_retrain_into_the_same_out_stops_before_training(
    cv_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two `retrain --out X` at once: the second trained fully, then died in write_bundle with
    # "OSError: Directory not empty" (a traceback). A live writer holds an flock on .X.lock (its pid).
    out = tmp_path / "model"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write(f'{os.getpid()}\\n'); f.flush()\n"
         "print('locked', flush=True); time.sleep(120)", str(tmp_path / ".model.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert main(["retrain", str(cv_folder), "--out", str(out), "--quiet"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0] == f"segsweep: error: {out} is being written by pid {holder.pid}; wait for it to finish, or pass " \
                     "another --out"  # fmt: skip
    assert not out.exists() and not retrain_checkpoint_path(out).exists()  # refused before any training


def test_a_killed_retrains_staging_folder_is_removed_by_the_next(
    cv_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A retrain killed in write_bundle left .X.XXXXXXXX (~40 MB of weights) beside X forever.
    out = tmp_path / "model"
    stale = tmp_path / ".model.k1lled_0"
    stale.mkdir()
    (stale / "weights.h5").write_bytes(b"\0" * 1024)
    kept = [tmp_path / ".model.checkpoint.npz.unused", tmp_path / ".model.notes"]  # not staging folders
    kept[0].write_bytes(b"x")
    kept[1].mkdir()
    assert main(["retrain", str(cv_folder), "--out", str(out), "--quiet"]) == 0
    assert not stale.exists() and all(p.exists() for p in kept)
    assert f"removed {stale}, left by an earlier run writing {out}" in capsys.readouterr().err
    assert load_bundle(out).path == out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".model")) == sorted(p.name for p in kept)


def test_retrain_interrupted_before_its_first_epoch_prints_the_command_to_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Stopped before a checkpoint existed, retrain said only "segsweep: interrupted".
    import importlib

    retrain_module = importlib.import_module("reports.retrain")  # `reports.retrain` is also a function

    def stopped(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(retrain_module, "run_retrain_command", stopped)
    out = tmp_path / "my model"
    argv = ["retrain", "s1", "--storage", str(tmp_path / "sweeps"), "--out", str(out), "--trial", "trial_00002",
            "--threads", "2", "--mixed-precision", "off"]  # fmt: skip
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"segsweep: interrupted; resume with `segsweep retrain s1 --storage {tmp_path / 'sweeps'} --out '{out}' "
        "--trial trial_00002 --threads 2 --mixed-precision off`"
    ]


def test_retrain_and_a_cv_fold_train_through_the_same_function(
    cv_folder: Path, kvasir_seg_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Retrain had its own seeding, model building, fit and checkpoint: two ways to train one model.
    from reports.retrain import cv_folder_as_sweep, retrain
    from trainer import training
    from trainer.checkpoint import RETRAIN_FOLD
    from trainer.cv import fold_seed, run_cv

    class Trained(Exception):
        pass

    calls: list[dict[str, object]] = []

    def record(config: CVConfig, data: object, train_rows: np.ndarray, val_rows: object = None, **how: object):
        calls.append({"n_train": len(train_rows), "validated": val_rows is not None, **how})
        raise Trained  # what it would train is all this test needs

    monkeypatch.setattr(training, "train_one_model", record)
    with pytest.raises(Trained):
        run_cv(CONFIG, prepare_dataset(kvasir_seg_dir, 64), tmp_path / "fold")
    with pytest.raises(Trained):
        retrain(cv_folder_as_sweep(cv_folder), tmp_path / "model", verbose=False)
    fold, whole = calls
    assert (fold["fold"], fold["seed"], fold["validated"], fold.get("lr_drop_epochs")) == (
        1, fold_seed(CONFIG.seed, 1), True, None,
    )  # fmt: skip
    assert (whole["fold"], whole["seed"], whole["validated"], whole["lr_drop_epochs"]) == (
        RETRAIN_FOLD, CONFIG.seed, False, [1],
    )  # fmt: skip
    assert whole["n_train"] == len(prepare_dataset(kvasir_seg_dir, 64)) and fold["n_train"] < whole["n_train"]
    assert whole["checkpoint_path"] == retrain_checkpoint_path(tmp_path / "model")
