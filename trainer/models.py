"""Segmentation models from segmentation-models (Keras), their losses, metric and input preprocessing."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.config import CVConfig

if TYPE_CHECKING:
    import tf_keras

_configured_threads: int | None = None


def configure_tensorflow(threads: int | None = None) -> None:
    """Set TensorFlow's CPU thread pools and GPU memory growth, once per process.

    ``threads`` (or ``SEGSWEEP_THREADS``) caps intra-op parallelism, so concurrent trials on one
    machine do not each spawn a thread per core and thrash. GPUs grow memory on demand, so that
    fractional-GPU trials can share a card.
    """
    global _configured_threads
    import tensorflow as tf

    threads = threads or int(os.environ.get("SEGSWEEP_THREADS", "0") or 0) or None
    if _configured_threads is None:
        try:
            if threads:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # TensorFlow was initialised already in this process; its settings stand.
        _configured_threads = threads or 0


def preprocessing(encoder: str) -> Callable[[np.ndarray], np.ndarray]:
    """The encoder's own input preprocessing (RGB float 0..255 in), as its ImageNet weights expect.

    The paper's notebooks fed raw BGR pixels to ImageNet encoders; segsweep feeds RGB through this.
    """
    import segmentation_models as sm

    fn: Callable[[np.ndarray], np.ndarray] = sm.get_preprocessing(encoder)
    return fn


def prepare_inputs(images: np.ndarray, encoder: str) -> np.ndarray:
    """uint8 RGB images (N, S, S, 3) -> float32 model inputs, through the encoder's preprocessing."""
    return np.asarray(preprocessing(encoder)(images.astype(np.float32)), dtype=np.float32)


def build_model(config: CVConfig) -> tf_keras.Model:
    """Build the configured architecture with encoder weights per ``config.weights`` (not compiled).

    The model is built with ``encoder_weights=None`` and the weights file is loaded afterwards by
    trainer.weights, which checks the file first and fails with a clear message offline, instead of
    letting Keras download (and delete on a hash mismatch) inside segmentation-models.
    """
    import segmentation_models as sm

    builders: dict[str, Any] = {"unet": sm.Unet, "fpn": sm.FPN, "linknet": sm.Linknet}
    if mixed_precision_enabled():
        import tf_keras

        tf_keras.mixed_precision.set_global_policy("mixed_float16")
    weights_path = None
    if config.weights not in ("none", ""):
        from trainer.weights import resolve_weights

        weights_path = resolve_weights(config.encoder, config.weights)
    model = builders[config.arch](
        config.encoder,
        input_shape=(config.image_size, config.image_size, 3),
        classes=1,
        activation="sigmoid",
        encoder_weights=None,
    )
    if weights_path is not None:
        from trainer.weights import load_encoder_weights

        load_encoder_weights(model, weights_path, config.encoder)
    if mixed_precision_enabled():
        import tf_keras

        # The sigmoid ran in float16; the loss and metric get float32 (Keras' mixed-precision rule:
        # the model's output layer in float32), so the IoU loss does not lose precision near 0 and 1.
        output = tf_keras.layers.Activation("linear", dtype="float32", name="output_float32")(model.output)
        model = tf_keras.Model(model.input, output, name=model.name)
    return model


def make_loss(name: str) -> Any:
    import segmentation_models as sm

    if name == "iou":
        return sm.losses.JaccardLoss()
    if name == "dice":
        return sm.losses.DiceLoss()
    if name == "bce_dice":
        return sm.losses.BinaryCELoss() + sm.losses.DiceLoss()
    raise ValueError(f"unknown loss {name!r}")


def compile_model(model: tf_keras.Model, config: CVConfig, lr: float | None = None) -> None:
    """Adam at the configured learning rate, the configured loss, and per-image IoU at 0.5 as ``iou``.

    The Keras metric only steers the learning-rate schedule; folds are scored afterwards by
    trainer.metrics with the MedAI rules.
    """
    import segmentation_models as sm
    import tf_keras

    # Under the mixed_float16 policy Keras wraps Adam in a LossScaleOptimizer itself.
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate=lr if lr is not None else config.lr),
        loss=make_loss(config.loss),
        metrics=[sm.metrics.IOUScore(threshold=0.5, per_image=True, name="iou")],
    )


def mixed_precision_enabled() -> bool:
    """``SEGSWEEP_MIXED_PRECISION=1``: float16 compute, float32 weights and output (opt-in, for GPUs).

    On GPUs with tensor cores (V100, A100, H100...) this roughly halves activation memory and speeds
    up convolutions; on CPUs it is slower. Off by default: results then match the paper's float32.
    """
    return os.environ.get("SEGSWEEP_MIXED_PRECISION", "") == "1"


# One compiled model per process, kept between folds (and between trials of a reused sweep worker)
# while the configuration's graph stays the same: (key, model, initial weights).
_reusable: tuple[tuple[Any, ...], Any, list[np.ndarray]] | None = None


def model_for_fold(config: CVConfig) -> tf_keras.Model:
    """A compiled model of ``config`` in its initial state, ready for ``fit(..., compile=False)``.

    The first call builds and compiles it (initial weights drawn under ``config.seed``, ImageNet or
    file weights loaded); later calls with the same architecture, encoder, weights, size, loss and
    seed restore those initial weights and reset the optimizer instead, so Keras's traced training
    graph is reused rather than traced again for every fold.
    """
    global _reusable
    import tf_keras

    key = (config.arch, config.encoder, config.weights, config.image_size, config.loss, config.seed)
    if _reusable is None or _reusable[0] != key:
        _reusable = None
        tf_keras.backend.clear_session()  # drop the previous configuration's model and graphs
        tf_keras.utils.set_random_seed(config.seed)
        model = build_model(config)
        compile_model(model, config)
        _reusable = (key, model, model.get_weights())
    else:
        model = _reusable[1]
        model.set_weights(_reusable[2])
    reset_optimizer(model, config.lr)
    return model


def reset_optimizer(model: tf_keras.Model, lr: float) -> None:
    """Zero the optimizer's step counter and moment estimates and set its learning rate."""
    import tensorflow as tf
    import tf_keras

    optimizer = model.optimizer
    for variable in optimizer.variables:
        variable.assign(tf.zeros(variable.shape, variable.dtype))
    tf_keras.backend.set_value(optimizer.learning_rate, lr)
