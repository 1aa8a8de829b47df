"""Epoch checkpoints on a tiny Keras model: what is restored, and what is never resumed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.checkpoint import EpochCheckpoint, EpochState, run_identity
from trainer.results import EpochRecord

IDENTITY = run_identity({"encoder": "vgg16", "lr": 1e-3}, "data-key", 1, np.arange(6))


def _trained_model(seed: int = 0):  # type: ignore[no-untyped-def]
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(4), tf_keras.layers.BatchNormalization(),
                                 tf_keras.layers.Dense(1)])  # fmt: skip
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(seed)
    model.fit(rng.normal(size=(8, 3)), rng.normal(size=(8, 1)), epochs=2, verbose=0)
    return model


def _fresh_model():  # type: ignore[no-untyped-def]
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(4), tf_keras.layers.BatchNormalization(),
                                 tf_keras.layers.Dense(1)])  # fmt: skip
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-2), loss="mse")
    return model


STATE = EpochState(
    epoch=2,
    history=[EpochRecord(1, 0.9, 0.8, 0.1, 1e-2), EpochRecord(2, 0.7, float("nan"), 0.2, 1e-2)],
    lr_drops=[2],
    lr=1e-3,
    plateau={"best": 0.2, "wait": 0.0, "cooldown_counter": 0.0},
    seconds=12.5,
)


def test_a_fresh_model_gets_weights_optimizer_and_state_back(tmp_path: Path) -> None:
    trained = _trained_model()
    EpochCheckpoint(tmp_path / "fold_01.npz", IDENTITY).save(trained, STATE)

    fresh = _fresh_model()  # its optimizer has made no moments yet
    checkpoint = EpochCheckpoint(tmp_path / "fold_01.npz", IDENTITY)
    state = checkpoint.load(fresh)

    assert state is not None and checkpoint.resumed == state
    assert state.epoch == 2 and state.lr_drops == [2] and state.lr == 1e-3 and state.seconds == 12.5
    assert np.isnan(state.history[1].val_loss) and state.history[0] == STATE.history[0]
    for a, b in zip(fresh.get_weights(), trained.get_weights(), strict=True):  # BN moving statistics too
        np.testing.assert_array_equal(a, b)
    assert len(fresh.optimizer.variables) == len(trained.optimizer.variables) > 1
    for a, b in zip(fresh.optimizer.variables, trained.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert checkpoint.seconds() >= 12.5


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert EpochCheckpoint(tmp_path / "fold_01.npz", IDENTITY).load(_fresh_model()) is None


@pytest.mark.parametrize(
    ("identity", "why"),
    [
        (run_identity({"encoder": "vgg16", "lr": 1e-2}, "data-key", 1, np.arange(6)), "config differ"),
        (run_identity({"encoder": "vgg16", "lr": 1e-3}, "other-data", 1, np.arange(6)), "data_key differ"),
        (run_identity({"encoder": "vgg16", "lr": 1e-3}, "data-key", 1, np.arange(1, 7)), "train_rows differ"),
    ],
)
def test_a_checkpoint_of_another_run_is_set_aside_not_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], identity: dict, why: str
) -> None:
    EpochCheckpoint(tmp_path / "fold_01.npz", IDENTITY).save(_trained_model(), STATE)
    fresh = _fresh_model()
    before = [w.copy() for w in fresh.get_weights()]

    assert EpochCheckpoint(tmp_path / "fold_01.npz", identity).load(fresh) is None

    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err and "starts from its first epoch" in err
    assert not (tmp_path / "fold_01.npz").exists() and (tmp_path / "fold_01.npz.unused").is_file()  # kept
    for a, b in zip(fresh.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_cut_checkpoint_is_set_aside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fold_01.npz"
    EpochCheckpoint(path, IDENTITY).save(_trained_model(), STATE)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    assert EpochCheckpoint(path, IDENTITY).load(_fresh_model()) is None
    assert "unreadable" in capsys.readouterr().err and (tmp_path / "fold_01.npz.unused").is_file()


def test_a_checkpoint_of_another_model_shape_is_set_aside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tf_keras

    EpochCheckpoint(tmp_path / "fold_01.npz", IDENTITY).save(_trained_model(), STATE)
    other = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    other.compile(optimizer="adam", loss="mse")

    assert EpochCheckpoint(tmp_path / "fold_01.npz", IDENTITY).load(other) is None
    assert "do not fit this model" in capsys.readouterr().err


def test_saving_is_skipped_while_it_would_protect_too_little_or_cost_too_much(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setattr("trainer.checkpoint.MAX_OVERHEAD", 0.02)
    monkeypatch.setattr("trainer.checkpoint.MIN_PROTECTED_SECONDS", 60.0)
    checkpoint = EpochCheckpoint(tmp_path / "fold_01.npz", IDENTITY)
    assert not checkpoint.due()  # a fold's first minute is not worth a checkpoint
    checkpoint.started -= 60.0
    assert checkpoint.due()
    checkpoint.save(_trained_model(), STATE)
    took = checkpoint._last_save[1]  # type: ignore[index]
    assert not checkpoint.due()  # the next one waits for a minute, and for 50x its cost of training
    checkpoint._last_save = (time.perf_counter() - 60.0, took)
    assert checkpoint.due() == (took <= 60.0 * 0.02)
    checkpoint._last_save = (time.perf_counter() - max(60.0, took / 0.02) - 0.1, took)
    assert checkpoint.due()


def test_the_plateau_rule_goes_on_with_its_counters(tmp_path: Path) -> None:
    # Reset, the rule would take the first resumed epoch as its best and cut a step late.
    import tf_keras

    from trainer.callbacks import fit_callbacks
    from trainer.config import CVConfig

    checkpoint = EpochCheckpoint(tmp_path / "fold_01.npz", IDENTITY)
    checkpoint.resumed = EpochState(epoch=2, history=[], lr_drops=[], lr=1e-3,
                                    plateau={"best": 0.5, "wait": 1.0, "cooldown_counter": 0.0})  # fmt: skip
    callbacks = fit_callbacks(CVConfig(), [], [], monitor_val=True, lr_drop_epochs=None, on_epoch=None, n_train=4,
                              checkpoint=checkpoint)  # fmt: skip
    for callback in callbacks:  # in Keras' order: the plateau rule resets itself first
        callback.on_train_begin()
    (plateau,) = [c for c in callbacks if isinstance(c, tf_keras.callbacks.ReduceLROnPlateau)]
    assert plateau.best == 0.5 and plateau.wait == 1 and plateau.cooldown_counter == 0

    checkpoint.resumed.plateau["best"] = float("nan")  # -inf before any epoch, null in strict JSON
    for callback in callbacks:
        callback.on_train_begin()
    assert plateau.best == float("-inf") and plateau.wait == 1


def test_a_checkpoint_says_the_precision_its_epochs_ran_in(tmp_path: Path) -> None:
    path = tmp_path / "fold_01.npz"
    assert EpochCheckpoint(path, IDENTITY).recorded_precision() is None  # nothing saved yet
    EpochCheckpoint(path, IDENTITY, precision="mixed_bfloat16").save(_trained_model(), STATE)
    assert EpochCheckpoint(path, IDENTITY).recorded_precision() == "mixed_bfloat16"
    other = run_identity({"encoder": "vgg16", "lr": 2e-3}, "data-key", 1, np.arange(6))
    assert EpochCheckpoint(path, other).recorded_precision() is None  # another run's: load() sets it aside
    EpochCheckpoint(path, IDENTITY).save(_trained_model(), STATE)  # precision not given (not known)
    assert EpochCheckpoint(path, IDENTITY).recorded_precision() is None
    assert EpochCheckpoint(path, IDENTITY).load(_fresh_model()) is not None  # the precision is no part of the identity
