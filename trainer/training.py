"""The fit loop shared by cross-validation and retraining, and batched prediction.

Batches are gathered, augmented (one of the paper's augmentations per image, or none) and
preprocessed in a generator that tf.data runs ahead of the model (prefetch), so data preparation
overlaps training instead of stalling it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from segsweep.base.errors import SegsweepError
from trainer.config import CVConfig
from trainer.models import compile_model, configure_tensorflow, preprocessing
from trainer.results import EpochRecord

if TYPE_CHECKING:
    import tf_keras

    from trainer.checkpoint import EpochCheckpoint

EpochCallback = Callable[[int, Mapping[str, float]], None]
#: ReduceLROnPlateau's state between epochs, which a resumed fold must carry on from.
PLATEAU_COUNTERS = ("best", "wait", "cooldown_counter")


class TrainingError(SegsweepError):
    """Training cannot go on (for example the loss became NaN)."""


class BatchSource:
    """Shuffled, augmented, preprocessed batches over (a subset of) a prepared data set.

    ``images`` and ``masks`` may be read-only memory maps; rows are copied out per batch, never
    written. Each epoch's order and augmentations are drawn from (seed, epoch) alone, so runs
    repeat exactly and a run resumed at any epoch (trainer.checkpoint) sees the batches an
    uninterrupted run would have.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        indices: Sequence[int] | np.ndarray,
        *,
        batch_size: int,
        encoder: str,
        augment: bool,
        seed: int,
    ) -> None:
        self.images = images
        self.masks = masks
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.preprocess = preprocessing(encoder)
        self.seed = seed
        self.transform: Any = None
        if augment:
            from trainer.augment import build_augmentation

            self.transform = build_augmentation(seed)

    @property
    def steps(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def batches(self, first_epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless epochs of batches from ``first_epoch`` (from 0): tf.data prefetches across epochs."""
        number = first_epoch
        while True:
            yield from self.epoch(number)
            number += 1

    def epoch(self, number: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Epoch ``number`` (from 0): a random order and augmentations of its own."""
        # Masked to 64 bits: SeedSequence takes non-negative entropy only, and any int is a valid seed.
        rng = np.random.default_rng([self.seed & 0xFFFF_FFFF_FFFF_FFFF, number])
        order = rng.permutation(self.indices)
        if self.transform is not None:
            self.transform.set_random_seed(int(rng.integers(2**31)))
        for start in range(0, len(order), self.batch_size):
            # Sorted gathers read the memory map sequentially.
            rows = np.sort(order[start : start + self.batch_size])
            images = self.images[rows]
            masks = self.masks[rows]
            if self.transform is not None:
                from trainer.augment import augment_batch

                images, masks = augment_batch(self.transform, images, masks)
            x = np.asarray(self.preprocess(images.astype(np.float32)), dtype=np.float32)
            yield x, masks.astype(np.float32)

    def dataset(self, image_size: int, first_epoch: int = 0) -> Any:
        import tensorflow as tf

        spec = (
            tf.TensorSpec((None, image_size, image_size, 3), tf.float32),
            tf.TensorSpec((None, image_size, image_size, 1), tf.float32),
        )
        return tf.data.Dataset.from_generator(
            lambda: self.batches(first_epoch), output_signature=spec
        ).prefetch(2)


def _validation_dataset(
    val: tuple[np.ndarray, np.ndarray], rows: np.ndarray, config: CVConfig
) -> Any:
    """The validation rows in the given order, batched and preprocessed per batch, as a tf.data set."""
    import tensorflow as tf

    prep = preprocessing(config.encoder)
    images, masks = val

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(rows), config.batch_size):
            batch = rows[start : start + config.batch_size]
            yield (
                np.asarray(prep(np.asarray(images[batch], np.float32)), np.float32),
                np.asarray(masks[batch], np.float32),
            )

    size = config.image_size
    spec = (
        tf.TensorSpec((None, size, size, 3), tf.float32),
        tf.TensorSpec((None, size, size, 1), tf.float32),
    )
    return tf.data.Dataset.from_generator(batches, output_signature=spec).prefetch(1)


def _bn_batches(
    images: np.ndarray, indices: np.ndarray, config: CVConfig, seed: int
) -> Callable[[], Iterator[np.ndarray]]:
    """Preprocessed, unaugmented batches of a fixed seeded subset of the training images.

    Full batches of ``config.batch_size`` only (a last short batch would weigh as much as a full
    one in the average), unless the subset is smaller than one batch.
    """
    from trainer.batchnorm import DEFAULT_IMAGES, reestimation_rows

    rows = reestimation_rows(indices, DEFAULT_IMAGES, seed)
    size = config.batch_size
    starts = list(range(0, max(len(rows) - size, 0) + 1, size)) if len(rows) >= size else [0]
    prep = preprocessing(config.encoder)

    def batches() -> Iterator[np.ndarray]:
        for start in starts:
            yield np.asarray(prep(np.asarray(images[rows[start : start + size]], np.float32)), np.float32)

    return batches


def _make_callbacks(
    config: CVConfig,
    history: list[EpochRecord],
    lr_drops: list[int],
    *,
    monitor_val: bool,
    lr_drop_epochs: Sequence[int] | None,
    on_epoch: EpochCallback | None,
    n_train: int,
    bn_batches: Callable[[], Iterator[np.ndarray]] | None = None,
    checkpoint: EpochCheckpoint | None = None,
    seed: int | None = None,
) -> list[Any]:
    import tf_keras

    class RandomStreamSeeder(tf_keras.callbacks.Callback):
        """Sets the model's random streams (dropout) from (seed, epoch) as each epoch begins."""

        def __init__(self, seed: int) -> None:
            super().__init__()
            self.seed = seed

        def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            from trainer.models import reseed_random_layers

            reseed_random_layers(self.model, self.seed, epoch)

    class BatchNormReestimator(tf_keras.callbacks.Callback):
        """Re-estimates BN statistics before each validation and at the end of training.

        Only when the weights changed since the last re-estimation, so the final validation's
        statistics are the ones the trained model keeps.
        """

        def __init__(self, batches: Callable[[], Iterator[np.ndarray]]) -> None:
            super().__init__()
            self.batches = batches
            # Unknown at the start: a run resumed after its last epoch trains nothing, and without
            # validation (a retrain) its checkpoint holds Keras' moving statistics, not re-estimated ones.
            self.stale = True

        def on_train_batch_end(self, batch: int, logs: Mapping[str, float] | None = None) -> None:
            self.stale = True

        def _refresh(self) -> None:
            if self.stale:
                from trainer.batchnorm import reestimate_batchnorm

                reestimate_batchnorm(self.model, self.batches())
                self.stale = False

        def on_test_begin(self, logs: Mapping[str, float] | None = None) -> None:
            self._refresh()

        def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
            self._refresh()

    class EpochRecorder(tf_keras.callbacks.Callback):
        """Records each epoch and the epochs at whose end the learning rate was cut."""

        def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            self.started = time.perf_counter()
            self.lr = float(tf_keras.backend.get_value(self.model.optimizer.learning_rate))

        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            logs = dict(logs or {})
            number = epoch + 1
            if lr_drop_epochs is not None and number in lr_drop_epochs:
                new_lr = self.lr * config.lr_factor
                tf_keras.backend.set_value(self.model.optimizer.learning_rate, new_lr)
            lr_after = float(tf_keras.backend.get_value(self.model.optimizer.learning_rate))
            if lr_after < self.lr * (1 - 1e-6):
                lr_drops.append(number)
            loss = float(logs.get("loss", float("nan")))
            if not math.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss} in epoch {number}; lower the learning rate (now {self.lr:g})"
                )
            record = EpochRecord(
                epoch=number,
                loss=loss,
                val_loss=float(logs.get("val_loss", float("nan"))),
                val_iou=float(logs.get("val_iou", float("nan"))),
                lr=self.lr,
            )
            history.append(record)
            if on_epoch is not None:
                seconds = time.perf_counter() - self.started
                on_epoch(
                    number,
                    {
                        "loss": record.loss,
                        "val_loss": record.val_loss,
                        "val_iou": record.val_iou,
                        "lr": record.lr,
                        "seconds": seconds,
                        "images_per_second": n_train / seconds if seconds > 0 else float("nan"),
                    },
                )

    class CheckpointSaver(tf_keras.callbacks.Callback):
        """Saves the training state after each epoch, and puts the plateau rule's counters back."""

        def __init__(self, checkpoint: EpochCheckpoint, plateau: Any) -> None:
            super().__init__()
            self.checkpoint = checkpoint
            self.plateau = plateau

        def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
            # After ReduceLROnPlateau's own on_train_begin, which resets its counters.
            resumed = self.checkpoint.resumed
            if resumed is not None and self.plateau is not None:
                for name, value in resumed.plateau.items():
                    if math.isnan(value):
                        continue  # best was still -inf (strict JSON keeps no infinities): keep the reset value
                    setattr(self.plateau, name, int(value) if name != "best" else value)

        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            from trainer.checkpoint import EpochState

            if not self.checkpoint.due():
                return
            plateau = {}
            if self.plateau is not None:
                plateau = {name: float(getattr(self.plateau, name)) for name in PLATEAU_COUNTERS}
            state = EpochState(
                epoch=epoch + 1,
                history=list(history),
                lr_drops=list(lr_drops),
                lr=float(tf_keras.backend.get_value(self.model.optimizer.learning_rate)),
                plateau=plateau,
                seconds=self.checkpoint.seconds(),
            )
            self.checkpoint.save(self.model, state)

    callbacks: list[Any] = []
    if seed is not None:
        callbacks.append(RandomStreamSeeder(seed))
    if bn_batches is not None:
        callbacks.append(BatchNormReestimator(bn_batches))
    plateau = None
    if monitor_val:
        # The paper: cut the learning rate 10x when validation IoU has not improved for 3 epochs.
        plateau = tf_keras.callbacks.ReduceLROnPlateau(
            monitor="val_iou",
            mode="max",
            factor=config.lr_factor,
            patience=config.lr_patience,
            min_lr=0.0,
            verbose=0,
        )
        callbacks.append(plateau)
    callbacks.append(EpochRecorder())  # after the scheduler, so it sees the cut learning rate
    if checkpoint is not None:
        callbacks.append(CheckpointSaver(checkpoint, plateau))  # last: the epoch's state is complete
    return callbacks


def fit(
    model: tf_keras.Model,
    config: CVConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    train_indices: Sequence[int] | np.ndarray | None = None,
    val_indices: Sequence[int] | np.ndarray | None = None,
    lr_drop_epochs: Sequence[int] | None = None,
    on_epoch: EpochCallback | None = None,
    seed: int | None = None,
    compile: bool = True,
    checkpoint: EpochCheckpoint | None = None,
) -> tuple[list[EpochRecord], list[int]]:
    """Compile and train ``model``; return the per-epoch history and the epochs the LR was cut after.

    ``compile=False`` trains a model that trainer.models.model_for_fold compiled and reset, keeping
    its traced training graph (tracing costs as much as several epochs of a small fold).

    With a ``checkpoint`` the state is saved there after every epoch, and a checkpoint of the same
    run found there is resumed: training goes on after its last epoch, with its history.

    ``train`` and ``val`` are (uint8 RGB images (N,S,S,3), 0/1 masks (N,S,S,1)) arrays, optionally
    restricted to ``train_indices``/``val_indices`` (so folds index one shared memory map instead
    of copying it). With a validation set the learning rate follows the paper's plateau rule; without
    one, ``lr_drop_epochs`` gives the epochs at whose end it is cut by ``config.lr_factor``.
    """
    configure_tensorflow()
    seed = config.seed if seed is None else seed
    images, masks = train
    indices = np.arange(len(images)) if train_indices is None else np.asarray(train_indices)
    if len(indices) == 0:
        raise TrainingError("no training images")
    source = BatchSource(
        images,
        masks,
        indices,
        batch_size=config.batch_size,
        encoder=config.encoder,
        augment=config.augment,
        seed=seed,
    )
    validation = None
    if val is not None:
        val_rows = np.arange(len(val[0])) if val_indices is None else np.asarray(val_indices)
        # Batches are preprocessed as they are needed: a float32 copy of the whole validation set
        # would be 4x its uint8 size per trial (half the data set, 2 folds), next to the shared data.
        validation = _validation_dataset(val, val_rows, config)
    if compile:
        compile_model(model, config)
    history: list[EpochRecord] = []
    lr_drops: list[int] = []
    first_epoch = 0
    resumed = checkpoint.load(model) if checkpoint is not None else None
    if resumed is not None:
        import tf_keras

        history, lr_drops, first_epoch = list(resumed.history), list(resumed.lr_drops), resumed.epoch
        tf_keras.backend.set_value(model.optimizer.learning_rate, resumed.lr)
    callbacks = _make_callbacks(
        config,
        history,
        lr_drops,
        monitor_val=validation is not None,
        lr_drop_epochs=lr_drop_epochs,
        on_epoch=on_epoch,
        n_train=len(indices),
        bn_batches=_bn_batches(images, indices, config, seed) if config.bn_reestimate else None,
        checkpoint=checkpoint,
        seed=seed,
    )
    model.fit(
        source.dataset(config.image_size, first_epoch),
        epochs=config.epochs,
        initial_epoch=first_epoch,
        steps_per_epoch=source.steps,
        validation_data=validation,
        callbacks=callbacks,
        verbose=0,
    )
    return history, lr_drops


def predict_probabilities(
    model: tf_keras.Model, images: np.ndarray, config: CVConfig, batch_size: int = 8
) -> np.ndarray:
    """Foreground probabilities (N, S, S) float32 for uint8 RGB images (N, S, S, 3)."""
    prep = preprocessing(config.encoder)
    out = np.empty(images.shape[:3], np.float32)
    for start in range(0, len(images), batch_size):
        x = np.asarray(prep(np.asarray(images[start : start + batch_size], np.float32)), np.float32)
        out[start : start + len(x)] = model.predict_on_batch(x)[..., 0]
    return out
