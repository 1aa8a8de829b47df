"""The cross-validation worker end to end on tiny synthetic data (tests.support.TINY_ENCODER, untrained, 64 px)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from segsweep.base.errors import ConfigError
from tests.support import TINY_ENCODER, checkpoint_every_epoch
from tests.support.synth import make_dataset
from trainer.config import SEED_MAX, CVConfig
from trainer.cv import fold_seed, make_folds, run_cv
from trainer.data import prepare_dataset
from trainer.reporter import FoldPreview, Reporter
from trainer.results import CVResult, FoldResult

TINY = dict(encoder=TINY_ENCODER, weights="none", image_size=64, folds=2, epochs=1, batch_size=2)


class Recorder(Reporter):
    def __init__(self, stop_in: tuple[int, int] | None = None) -> None:
        self.events: list[tuple] = []
        self.stop_in = stop_in  # (fold, epoch): stop as that epoch ends, before its checkpoint is saved

    def on_fold_start(self, fold: int, n_train: int, n_val: int) -> None:
        self.events.append(("fold_start", fold))

    def on_epoch(self, fold: int, epoch: int, metrics: Mapping[str, float]) -> None:
        self.events.append(("epoch", fold, epoch, dict(metrics)))
        if self.stop_in == (fold, epoch):
            raise KeyboardInterrupt

    def on_fold_resumed(self, fold: int, history: list) -> None:
        self.events.append(("resumed", fold, [h.epoch for h in history]))

    def on_fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None:
        self.events.append(("fold_end", result.fold, len(completed), preview))

    def on_cv_end(self, result: CVResult) -> None:
        self.events.append(("cv_end", result.complete))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory):
    root = make_dataset(tmp_path_factory.mktemp("cvdata"), 8)
    return root, prepare_dataset(root, 64, cache_dir=tmp_path_factory.mktemp("cache"))


def test_cv_writes_results_and_calls_reporter(tiny_data, tmp_path: Path) -> None:
    _, data = tiny_data
    recorder = Recorder()
    result = run_cv(CVConfig(**TINY), data, tmp_path, recorder)

    written = json.loads((tmp_path / "cv.json").read_text())
    assert written["complete"] is True
    assert {"config", "folds", "mean", "std", "seconds"} <= set(written)
    assert set(written["mean"]) == {"dice", "iou"} and set(written["std"]) == {"dice", "iou"}
    assert len(written["folds"]) == 2
    for fold in written["folds"]:
        assert {"fold", "n_train", "n_val", "dice", "iou", "epochs_run", "lr_drops", "history"} <= set(fold)
        assert fold["n_train"] + fold["n_val"] == 8
        assert set(fold["history"][0]) >= {"loss", "val_loss", "val_iou", "lr"}
        assert 0.0 <= fold["dice"] <= 1.0
    assert sorted(p.name for p in (tmp_path / "folds").iterdir()) == ["fold_01.json", "fold_02.json"]
    kinds = [e[0] for e in recorder.events]
    assert kinds == ["fold_start", "epoch", "fold_end", "fold_start", "epoch", "fold_end", "cv_end"]
    preview = recorder.events[2][3]
    assert preview.images.dtype == np.uint8 and preview.probabilities.shape == preview.true_masks.shape
    assert result.mean["dice"] == pytest.approx(np.mean([f.dice for f in result.folds]))


def test_every_fold_records_its_per_image_scores_whose_mean_is_the_fold_score(tiny_data, tmp_path: Path) -> None:
    from sweeps.folder import load_trial

    _, data = tiny_data
    run_cv(CVConfig(**TINY), data, tmp_path)
    written = json.loads((tmp_path / "cv.json").read_text())
    for fold in written["folds"]:
        assert len(fold["val_dice"]) == len(fold["val_iou"]) == len(fold["val_stems"]) == fold["n_val"]
        assert np.mean(fold["val_dice"]) == pytest.approx(fold["dice"], abs=1e-12)
        assert np.mean(fold["val_iou"]) == pytest.approx(fold["iou"], abs=1e-12)
    # The sweep folder's reader: every image once, out of fold, keyed by stem, from the fold files.
    scores = load_trial(tmp_path).image_scores()
    assert sorted(scores) == sorted(data.stems)
    for fold in written["folds"]:
        mine = [scores[stem] for stem in fold["val_stems"]]
        assert {s.fold for s in mine} == {fold["fold"]}
        assert np.mean([s.dice for s in mine]) == pytest.approx(fold["dice"], abs=1e-12)


def test_rerun_resumes_at_the_first_unfinished_fold_after_its_last_finished_epoch(
    tiny_data, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data = tiny_data
    checkpoint_every_epoch(monkeypatch)
    from trainer.training import BatchSource

    starts: list[int] = []  # the first epoch of each stream of batches Keras asked for
    batches = BatchSource.batches
    monkeypatch.setattr(BatchSource, "batches", lambda self, first=0: starts.append(first) or batches(self, first))
    # Patience 1: the plateau rule acts within 3 epochs (its counters' restore alone: test_checkpoint.py).
    config = CVConfig(**{**TINY, "epochs": 3, "lr_patience": 1})
    whole = run_cv(config, data, tmp_path / "whole")
    assert not (tmp_path / "whole" / "checkpoints").exists()  # each removed as its fold ends, then the folder
    # One stream per fold: Keras keeps its iterator across epochs, so every epoch draws its own order
    # (a stream restarted each epoch would repeat epoch 1's shuffle and augmentations).
    assert starts == [0, 0]

    with pytest.raises(KeyboardInterrupt):
        run_cv(config, data, tmp_path / "cut", Recorder(stop_in=(2, 3)))
    assert (tmp_path / "cut" / "checkpoints" / "fold_02.npz").is_file()
    partial = json.loads((tmp_path / "cut" / "cv.json").read_text())
    assert partial["complete"] is False and [f["fold"] for f in partial["folds"]] == [1]
    first = (tmp_path / "cut" / "folds" / "fold_01.json").read_bytes()
    recorder = Recorder()
    resumed = run_cv(config, data, tmp_path / "cut", recorder)

    assert [e[1] for e in recorder.events if e[0] == "fold_start"] == [2]  # fold 1 not trained again
    assert (tmp_path / "cut" / "folds" / "fold_01.json").read_bytes() == first
    assert resumed.complete and [f.fold for f in resumed.folds] == [1, 2]

    assert [e for e in recorder.events if e[0] == "resumed"] == [("resumed", 2, [1, 2])]
    assert starts[-1] == 2  # the resumed fold's batches begin at epoch 3's draws
    assert [e[1:3] for e in recorder.events if e[0] == "epoch"] == [(2, 3)]
    assert "resuming" in capsys.readouterr().err
    # Folds reuse one compiled model (trainer.models.model_for_fold): fold 1 of the second run, trained
    # after the first run's folds, starts from the same weights, BN statistics and a reset optimizer.
    from trainer.models import model_for_fold

    assert resumed.folds[0].dice == pytest.approx(whole.folds[0].dice, abs=1e-5)
    np.testing.assert_allclose([h.loss for h in resumed.folds[0].history],
                               [h.loss for h in whole.folds[0].history], rtol=1e-5)  # fmt: skip
    assert all(float(abs(v.numpy()).sum()) == 0.0 for v in model_for_fold(config).optimizer.variables)
    one, two = whole.folds[1], resumed.folds[1]
    assert [h.epoch for h in two.history] == [1, 2, 3]
    assert two.lr_drops == one.lr_drops
    np.testing.assert_allclose([h.loss for h in two.history], [h.loss for h in one.history], rtol=1e-5)
    np.testing.assert_allclose([h.lr for h in two.history], [h.lr for h in one.history])
    np.testing.assert_allclose([h.val_iou for h in two.history], [h.val_iou for h in one.history], atol=1e-5)
    assert two.dice == pytest.approx(one.dice, abs=1e-5) and two.iou == pytest.approx(one.iou, abs=1e-5)
    assert not (tmp_path / "cut" / "checkpoints").exists()


class StopAtFold(Reporter):
    """Stops the run as fold ``fold`` starts: a cut at the fold boundary."""

    def __init__(self, fold: int) -> None:
        self.fold = fold

    def on_fold_start(self, fold: int, n_train: int, n_val: int) -> None:
        if fold == self.fold:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_a_fold_resumed_at_the_fold_boundary_in_a_fresh_state_equals_the_uninterrupted_fold(
    tiny_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fold 2 does not depend on whether fold 1 ran before it in the same process (issue 21, case 4)."""
    import tf_keras

    from trainer import models

    build = models.build_model

    def with_dropout(config: CVConfig, **kwargs: object) -> tf_keras.Model:
        # The tiny encoder has no dropout (efficientnets, the default encoders, do): add one, so the
        # model draws random numbers in every training step.
        model = build(config, **kwargs)  # type: ignore[arg-type]
        return tf_keras.Model(model.input, tf_keras.layers.Dropout(0.5)(model.output))

    monkeypatch.setattr(models, "build_model", with_dropout)
    monkeypatch.setattr(models, "_reusable", None)  # an earlier test's model (without dropout)
    config = CVConfig(**{**TINY, "epochs": 2})
    whole = run_cv(config, data := tiny_data[1], tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run_cv(config, data, tmp_path / "cut", StopAtFold(2))
    # What a fresh process has: no compiled model, no traced training graph, no random state of fold 1.
    monkeypatch.setattr(models, "_reusable", None)
    resumed = run_cv(config, data, tmp_path / "cut")

    one, two = whole.folds[1], resumed.folds[1]
    assert resumed.folds[0].history == whole.folds[0].history
    assert [(h.loss, h.val_loss, h.val_iou) for h in two.history] == [
        (h.loss, h.val_loss, h.val_iou) for h in one.history
    ]
    assert (two.dice, two.iou) == (one.dice, one.iou)


def test_rerun_with_other_configuration_is_refused(tiny_data, tmp_path: Path) -> None:
    _, data = tiny_data
    run_cv(CVConfig(**TINY), data, tmp_path)
    with pytest.raises(ConfigError, match="another configuration"):
        run_cv(CVConfig(**{**TINY, "lr": 1e-2}), data, tmp_path)


def test_folds_are_seeded_and_disjoint() -> None:
    stems = [f"s{i}" for i in range(10)]
    a = make_folds(stems, CVConfig(folds=5, seed=3))
    b = make_folds(stems, CVConfig(folds=5, seed=3))
    assert all((x[1] == y[1]).all() for x, y in zip(a, b, strict=True))
    assert sorted(np.concatenate([val for _, val in a]).tolist()) == list(range(10))
    given = make_folds(stems, CVConfig(val_split="v"), val_stems=["s1", "s4"])
    assert len(given) == 1 and given[0][1].tolist() == [1, 4]


def test_the_largest_seed_seeds_every_fold() -> None:
    # A fold's seed was seed * 1000 + fold: past 2**32 for any seed above 4,294,967, which NumPy's
    # global seed (tf_keras.utils.set_random_seed) refuses with a traceback.
    assert fold_seed(7, 3) == 7003  # unchanged for the seeds in use
    folds = make_folds([f"s{i}" for i in range(12)], CVConfig(folds=3, seed=SEED_MAX))
    assert len(folds) == 3
    for number in range(1, 11):
        np.random.seed(fold_seed(SEED_MAX, number))
    assert len({fold_seed(SEED_MAX, n) for n in range(1, 11)}) == 10


def test_batch_size_larger_than_training_fold(tiny_data, tmp_path: Path) -> None:
    _, data = tiny_data
    with pytest.raises(ConfigError, match="larger than a training fold"):
        run_cv(CVConfig(**{**TINY, "batch_size": 5}), data, tmp_path)


def test_model_input_is_rgb_through_encoder_preprocessing(tiny_data) -> None:
    """The paper fed raw BGR pixels to ImageNet encoders; ours are RGB and preprocessed per encoder."""
    import segmentation_models as sm

    from trainer.training import BatchSource

    red = np.zeros((1, 64, 64, 3), np.uint8)
    red[..., 0] = 255  # pure red in RGB
    masks = np.zeros((1, 64, 64, 1), np.uint8)
    source = BatchSource(red, masks, [0], batch_size=1, encoder="vgg16", augment=False, seed=0)
    x, _ = next(source.epoch())
    expected = sm.get_preprocessing("vgg16")(red.astype(np.float32))
    np.testing.assert_allclose(x, expected)
    # vgg16 ('caffe' mode) flips RGB to BGR and subtracts the ImageNet mean: red lands in channel 2.
    assert x[0, 0, 0, 2] == pytest.approx(255 - 123.68, abs=1e-3)


def test_explicit_lr_schedule_and_drop_record(tiny_data) -> None:
    import tf_keras

    from trainer.models import build_model
    from trainer.training import fit

    _, data = tiny_data
    config = CVConfig(**{**TINY, "epochs": 3, "augment": False})
    tf_keras.backend.clear_session()
    history, drops = fit(build_model(config), config, (data.images, data.masks), lr_drop_epochs=[1])
    assert drops == [1]
    assert [h.lr for h in history] == pytest.approx([1e-3, 1e-4, 1e-4])


def test_plateau_drops_are_recorded_consistently(tiny_data) -> None:
    import tf_keras

    from trainer.models import build_model
    from trainer.training import fit

    _, data = tiny_data
    config = CVConfig(**{**TINY, "epochs": 4, "augment": False, "lr_patience": 1, "lr": 1e-7})
    tf_keras.backend.clear_session()
    rows = np.arange(len(data))
    history, drops = fit(
        build_model(config),
        config,
        (data.images, data.masks),
        (data.images, data.masks),
        train_indices=rows[:6],
        val_indices=rows[6:],
    )
    # Every recorded drop shows as a 10x smaller learning rate in the next epoch, and only then.
    for before, after in itertools.pairwise(history):
        if before.epoch in drops:
            assert after.lr == pytest.approx(before.lr * 0.1)
        else:
            assert after.lr == pytest.approx(before.lr)


def _segsweep(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if args[0] == "cv" and "--tracker" not in args:
        args = (*args, "--tracker", "none")  # trackers have their own tests; keep these fast
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--encoder", "resnet9"], "unknown encoder 'resnet9'; did you mean 'resnet50'? choose one of: vgg16"),
        (["--image-size", "100"], "not a multiple of 32"),
        (["--folds", "1"], "folds must be at least 2"),
        (["--folds", "20"], "20 folds need at least 20 images"),
        (["--batch-size", "30"], "larger than a training fold"),
    ],
)
def test_cli_bad_options_exit_2_with_one_line(kvasir_seg_dir: Path, tmp_path: Path, extra, message) -> None:
    proc = _segsweep(
        "cv",
        "--data",
        str(kvasir_seg_dir),
        "--out",
        str(tmp_path / "o"),
        "--weights",
        "none",
        "--image-size",
        "64",
        *extra,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_interrupts_cv_as_ctrl_c_does(
    kvasir_seg_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """scancel, a Slurm time limit or `kill` (SIGTERM) end `segsweep cv` with the same resume line as Ctrl-C
    (test_faults' Ctrl-C test covers what the interruption does to cv.json and the tracker), and SIGTERM's
    handler is put back after."""
    import os
    import signal
    import time

    import trainer.cv
    from sweeps.cli import main

    def terminated(*args: object, **kwargs: object) -> int:
        # Without segsweep's handler SIGTERM would end the test session itself: check first.
        assert signal.getsignal(signal.SIGTERM) is not before, "no SIGTERM handler while cv runs"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # Python runs the handler at its next step: this sleep never ends
        raise AssertionError("SIGTERM did not interrupt the run")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(trainer.cv, "run_cv_command", terminated)
    out = tmp_path / "out"
    assert main(["cv", "--data", str(kvasir_seg_dir), "--out", str(out), "--weights", "none"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        f"segsweep: interrupted; finished folds and epochs are kept in {out}; resume with `segsweep cv "
    )
    assert signal.getsignal(signal.SIGTERM) is before


def test_cli_bad_folders_exit_2(kvasir_seg_dir: Path, tmp_path: Path) -> None:
    proc = _segsweep("cv", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--weights", "none")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    proc = _segsweep("cv", "--data", str(empty), "--out", str(tmp_path / "o"), "--weights", "none")
    assert proc.returncode == 2 and "no image files" in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = _segsweep(
        "cv", "--data", str(kvasir_seg_dir), "--out", str(blocker / "out"), "--weights", "none", "--image-size", "64"
    )
    assert proc.returncode == 2 and "cannot write to output folder" in proc.stderr


def test_cli_config_file_and_option_override(kvasir_seg_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data: {kvasir_seg_dir}\nencoder: {TINY_ENCODER}\nweights: none\nimage_size: 64\n"
        "folds: 2\nepochs: 1\nbatch_size: 30\nlimit: 6\n"
    )
    proc = _segsweep("cv", "--config", str(config), "--batch-size", "2", "--out", str(tmp_path / "o"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "o" / "cv.json").read_text())
    assert written["config"]["batch_size"] == 2 and written["data"]["n_pairs"] == 6
    bad = tmp_path / "bad.yaml"
    bad.write_text("encodr: mobilenetv2\n")
    proc = _segsweep("cv", "--config", str(bad), "--data", str(kvasir_seg_dir), "--out", str(tmp_path / "o2"))
    assert proc.returncode == 2 and "unknown key(s) encodr" in proc.stderr


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.long
def test_cv_on_real_kvasir_seg(real_kvasir_seg: Path, tmp_path: Path) -> None:
    proc = _segsweep(
        "cv",
        "--data",
        str(real_kvasir_seg),
        "--limit",
        "40",
        "--image-size",
        "64",
        "--encoder",
        TINY_ENCODER,
        "--weights",
        "none",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "cv.json").read_text())
    assert result["complete"] and len(result["folds"]) == 2
    assert result["data"]["n_pairs"] == 40
    assert "mean ± std over 2 folds" in proc.stdout


def test_a_running_epoch_reports_its_batches_and_speed_to_the_reporter(
    tiny_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.callbacks

    monkeypatch.setattr(trainer.callbacks, "BATCH_PROGRESS_EVERY_S", 0.0)  # every batch, for the test
    batches: list[tuple[int, int, int, int, float]] = []

    class BatchRecorder(Reporter):
        def on_batch(self, fold: int, epoch: int, batch: int, batches_: int, images_per_second: float) -> None:
            batches.append((fold, epoch, batch, batches_, images_per_second))

    run_cv(CVConfig(**{**TINY, "folds": 2, "epochs": 1}), tiny_data[1], tmp_path, BatchRecorder())
    per_fold = {fold: [b for b in batches if b[0] == fold] for fold in (1, 2)}
    for fold, seen in per_fold.items():
        assert seen, f"fold {fold} reported no batch"
        steps = seen[0][3]
        assert steps == 2 and [b[2] for b in seen] == list(range(1, steps + 1))  # 4 training images, batch 2
        assert all(b[1] == 1 and b[4] > 0 for b in seen)
    # It reads no batch logs: Keras must not copy the loss to the host after every batch for it.
    assert trainer.callbacks.BatchProgress(lambda *a: None, 4)._supports_tf_logs


def test_missing_imagenet_weights_fail_before_the_data_is_prepared_and_leave_no_out(
    tmp_path: Path, kvasir_seg_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `cv --weights imagenet` without the file spent ~14 s preparing the data, and left an empty --out.
    import dataclasses

    from sweeps.cli import main
    from trainer import cv, weights

    encoder = "mobilenetv2"
    unreachable = dataclasses.replace(  # port 9 (discard): nothing listens, the connection is refused at once
        weights.IMAGENET_WEIGHTS[encoder], url="http://127.0.0.1:9/" + weights.IMAGENET_WEIGHTS[encoder].file_name
    )
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, encoder, unreachable)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))

    def prepare_dataset(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was prepared before the weights were checked")

    monkeypatch.setattr(cv, "prepare_dataset", prepare_dataset)
    out = tmp_path / "out"
    argv = ["cv", "--data", str(kvasir_seg_dir), "--out", str(out), "--encoder", encoder, "--weights", "imagenet",
            "--image-size", "64", "--tracker", "none", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"segsweep: error: ImageNet weights of encoder '{encoder}' are not"), err
    assert not out.exists()
