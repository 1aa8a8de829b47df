"""Batch-norm statistics re-estimated on training images (trainer.batchnorm), on tiny real models."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.batchnorm import batchnorm_layers, reestimate_batchnorm, reestimation_rows
from trainer.config import CVConfig
from trainer.models import model_for_fold
from trainer.training import fit

TINY = dict(encoder="mobilenetv2", weights="none", image_size=64, folds=2, epochs=1, batch_size=2, loss="bce_dice")


def test_reestimated_statistics_are_the_batch_statistics_averaged() -> None:
    import tf_keras

    inputs = tf_keras.Input((4, 4, 2))
    bn = tf_keras.layers.BatchNormalization(momentum=0.999)
    model = tf_keras.Model(inputs, bn(inputs))
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc, 2.0, (3, 4, 4, 2)).astype(np.float32) for loc in (1.0, 5.0)]

    assert reestimate_batchnorm(model, iter(batches)) == 2

    means = [b.mean(axis=(0, 1, 2)) for b in batches]
    variances = [b.var(axis=(0, 1, 2)) for b in batches]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-4)
    # Keras keeps the unbiased variance of each batch (48 values per channel here).
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean(variances, axis=0) * 48 / 47, rtol=1e-3)
    assert bn.momentum == pytest.approx(0.999)  # put back


def test_a_run_resumed_after_its_last_epoch_still_ends_with_reestimated_statistics() -> None:
    # A retrain stopped after its final epoch's checkpoint trains no batch when resumed; its
    # checkpoint (no validation, so no re-estimation yet) held Keras' moving statistics, and the
    # bundle was saved with them: the batch-norm trap again, silently.
    import tf_keras

    from trainer.callbacks import fit_callbacks

    inputs = tf_keras.Input((4, 4, 2))
    bn = tf_keras.layers.BatchNormalization(momentum=0.999)
    model = tf_keras.Model(inputs, bn(inputs))
    batch = np.random.default_rng(0).normal(5.0, 2.0, (3, 4, 4, 2)).astype(np.float32)
    callbacks = fit_callbacks(CVConfig(), [], [], monitor_val=False, lr_drop_epochs=[], on_epoch=None,
                              n_train=3, bn_batches=lambda: iter([batch]))  # fmt: skip
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    for callback in callbacks:  # no epoch in between: fit(initial_epoch=epochs)
        callback.on_train_end()
    np.testing.assert_allclose(bn.moving_mean.numpy(), batch.mean(axis=(0, 1, 2)), rtol=1e-4)


def test_no_batches_leave_the_model_unchanged() -> None:
    model = model_for_fold(CVConfig(**TINY))
    before = [w.copy() for w in model.get_weights()]
    assert reestimate_batchnorm(model, iter([])) == 0
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert {round(float(layer.momentum), 4) for layer in batchnorm_layers(model)} == {0.999, 0.99}


def test_fit_reestimates_only_the_statistics(kvasir_seg_dir) -> None:
    """After fit the moving statistics match training-mode statistics; trainable weights are those trained."""
    from trainer.data import prepare_dataset

    data = prepare_dataset(kvasir_seg_dir, 64)
    results = {}
    for flag in (False, True):
        config = CVConfig(**TINY, bn_reestimate=flag)
        model = model_for_fold(config)
        import tf_keras

        tf_keras.utils.set_random_seed(3)
        fit(model, config, (data.images, data.masks), train_indices=np.arange(6), seed=3, compile=False)
        results[flag] = (
            [w.numpy() for w in model.trainable_weights],
            [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in batchnorm_layers(model)],
        )
    for a, b in zip(results[False][0], results[True][0], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # same training, statistics aside
    moved = [not np.allclose(a[0], b[0]) for a, b in zip(results[False][1], results[True][1], strict=True)]
    assert any(moved)


def test_reestimation_rows_are_a_seeded_subset() -> None:
    rows = np.arange(10, 30)
    assert np.array_equal(reestimation_rows(rows, 100, seed=0), rows)
    subset = reestimation_rows(rows, 5, seed=1)
    assert len(subset) == 5 and set(subset) <= set(rows) and np.all(np.diff(subset) > 0)
    assert np.array_equal(subset, reestimation_rows(rows, 5, seed=1))
