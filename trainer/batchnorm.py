"""Batch-normalisation statistics re-estimated on training images before a model is scored or saved.

Keras' BatchNormalization layers keep exponential moving averages of the batch statistics and use
them in inference mode. An untrained encoder changes its features quickly, so the averages lag
behind the weights, and with MobileNetV2's momentum of 0.999 (keras_applications; every other
segmentation-models encoder and decoder uses 0.99) they are still about half-way from their initial
values after 660 steps: validation in inference mode then scores ~0 while the same weights in
training mode segment well. Re-estimating the statistics from the current weights (a forward pass
over training images in training mode, averaging each layer's batch mean and variance, as
PyTorch's ``torch.optim.swa_utils.update_bn`` and "precise BN" do) makes inference mode match the
weights whatever the momentum and the number of steps, for pretrained encoders as well.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tf_keras

#: Training images used per re-estimation (a seeded subset of the training rows, unaugmented).
DEFAULT_IMAGES = 128


def batchnorm_layers(model: tf_keras.Model) -> list[Any]:
    """Every BatchNormalization layer of ``model``, nested models included."""
    import tf_keras

    found: list[Any] = []

    def walk(layer: Any) -> None:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            found.append(layer)
        for inner in getattr(layer, "layers", ()):
            walk(inner)

    for layer in model.layers:
        walk(layer)
    return found


def reestimate_batchnorm(model: tf_keras.Model, batches: Iterable[np.ndarray]) -> int:
    """Set every BN layer's moving mean and variance to its batch statistics averaged over ``batches``.

    ``batches`` are preprocessed model inputs. Each batch is passed in training mode with the
    layers' momentum at 0 (the moving statistics become that batch's statistics), read back, and
    averaged; the trainable weights are untouched and the layers' momentum is restored. Returns the
    number of batches used (0 leaves the model as it was).
    """
    import tensorflow as tf

    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [(layer.momentum, layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
    sums: list[list[np.ndarray]] | None = None
    count = 0
    try:
        for layer in layers:
            layer.momentum = 0.0
        # Traced once per model with momentum 0: the traced graph keeps the constant it saw, and
        # training's own graph (traced with the real momentum) is a different function.
        forward = getattr(model, "_segsweep_bn_forward", None)
        if forward is None:
            forward = tf.function(lambda x: model(x, training=True), reduce_retracing=True)
            model._segsweep_bn_forward = forward
        for x in batches:
            forward(tf.convert_to_tensor(x))
            stats = [[layer.moving_mean.numpy(), layer.moving_variance.numpy()] for layer in layers]
            if sums is None:
                sums = stats
            else:
                for total, new in zip(sums, stats, strict=True):
                    total[0] += new[0]
                    total[1] += new[1]
            count += 1
    finally:
        for layer, (momentum, mean, variance) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            if sums is None:
                layer.moving_mean.assign(mean)
                layer.moving_variance.assign(variance)
    if sums is not None:
        for layer, (mean_sum, variance_sum) in zip(layers, sums, strict=True):
            layer.moving_mean.assign(mean_sum / count)
            layer.moving_variance.assign(variance_sum / count)
    return count


def reestimation_rows(train_rows: np.ndarray, n_images: int, seed: int) -> np.ndarray:
    """The training rows (a seeded subset of at most ``n_images``, sorted) re-estimation reads."""
    rows = np.asarray(train_rows, dtype=np.int64)
    if len(rows) > n_images:
        rows = np.random.default_rng(seed).choice(rows, size=n_images, replace=False)
    return np.sort(rows)
