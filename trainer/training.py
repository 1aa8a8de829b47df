"""Training one model (a fold, a fold kept for an ensemble, a retrain), its fit loop, and batched prediction.

Batches are gathered, augmented (one of the paper's augmentations per image, or none) and
preprocessed in a generator that tf.data runs ahead of the model (prefetch), so data preparation
overlaps training instead of stalling it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segsweep.base.errors import SegsweepError
from trainer.checkpoint import EpochCheckpoint, run_identity
from trainer.config import CVConfig
from trainer.models import (
    compile_model,
    configure_tensorflow,
    follow_recorded_precision,
    mixed_precision_policy,
    model_for_fold,
    precision_label,
    preprocessing,
)
from trainer.results import EpochRecord

if TYPE_CHECKING:
    import tf_keras

    from trainer.data import PreparedData

#: Called after each epoch with its number (from 1) and its metrics (loss, val_loss, val_iou, lr, seconds, ...).
EpochCallback = Callable[[int, Mapping[str, float]], None]
#: Called during an epoch, at most every BATCH_PROGRESS_EVERY_S seconds: epoch (from 1), batches done,
#: batches per epoch, training images per second so far in the epoch.
BatchCallback = Callable[[int, int, int, float], None]


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
        return tf.data.Dataset.from_generator(lambda: self.batches(first_epoch), output_signature=spec).prefetch(2)


def _validation_dataset(val: tuple[np.ndarray, np.ndarray], rows: np.ndarray, config: CVConfig) -> Any:
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


@dataclass
class TrainedModel:
    """What :func:`train_one_model` trained, and how the training went."""

    model: tf_keras.Model
    history: list[EpochRecord]
    #: The epochs (from 1) at whose end the learning rate was cut.
    lr_drops: list[int]
    #: Its epoch checkpoint: ``seconds()`` counts the training over every attempt; ``discard()`` it once
    #: what was trained is kept (a fold's result, a bundle), not before: a stop in between resumes.
    checkpoint: EpochCheckpoint


def train_one_model(
    config: CVConfig,
    data: PreparedData,
    train_rows: np.ndarray,
    val_rows: np.ndarray | None = None,
    *,
    fold: int,
    seed: int,
    checkpoint_path: Path,
    lr_drop_epochs: Sequence[int] | None = None,
    on_epoch: EpochCallback | None = None,
    on_resumed: Callable[[list[EpochRecord]], None] | None = None,
    on_batch: BatchCallback | None = None,
) -> TrainedModel:
    """Train one model of ``config`` on ``data``'s ``train_rows``: a cross-validation fold (kept for an
    ensemble or not) or a retrain on every development image (``fold`` RETRAIN_FOLD); cv and retrain both.

    The model starts from the configuration's initial weights (trainer.models.model_for_fold: built once
    per process and reused, its optimizer reset); ``seed`` (a fold's, never what the process ran before)
    then drives shuffling, augmentation and dropout, per epoch. With ``val_rows`` the learning rate
    follows the paper's plateau rule on validation IoU; without, ``lr_drop_epochs`` (a retrain's imitated
    schedule) cuts it at the end of those epochs, and is part of the run's identity.

    After epochs the training state is saved at ``checkpoint_path`` (trainer.checkpoint); a checkpoint
    found there of the same run (configuration, data, ``fold``, ``train_rows``, schedule) is resumed after
    its last epoch, ``on_resumed`` hearing its history before training goes on.
    """
    import tf_keras

    schedule = {} if lr_drop_epochs is None else {"drop_epochs": list(lr_drop_epochs)}
    identity = run_identity(config.to_dict(), data.key, fold, train_rows, **schedule)
    recorded = EpochCheckpoint(checkpoint_path, identity).recorded_precision()
    if recorded is not None and recorded != mixed_precision_policy():
        # Resuming mid-way: under auto the epochs to come keep the precision the earlier ones ran in.
        record = {"mixed_precision_policy": recorded}
        if follow_recorded_precision(record).mixed_precision_policy == recorded:
            print(f"segsweep: mixed precision {precision_label(record)} (auto), as the interrupted training ran",
                  file=sys.stderr, flush=True)  # fmt: skip
    checkpoint = EpochCheckpoint(checkpoint_path, identity, precision=mixed_precision_policy())
    model = model_for_fold(config)
    tf_keras.utils.set_random_seed(seed)
    resumed = checkpoint.load(model)
    if resumed is not None and on_resumed is not None:
        on_resumed(list(resumed.history))
    arrays = (data.images, data.masks)
    history, lr_drops = fit(
        model,
        config,
        arrays,
        arrays if val_rows is not None else None,
        train_indices=train_rows,
        val_indices=val_rows,
        lr_drop_epochs=lr_drop_epochs,
        on_epoch=on_epoch,
        on_batch=on_batch,
        seed=seed,
        compile=False,
        checkpoint=checkpoint,
    )
    return TrainedModel(model, history, lr_drops, checkpoint)


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
    on_batch: BatchCallback | None = None,
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
    from trainer.callbacks import fit_callbacks

    callbacks = fit_callbacks(
        config,
        history,
        lr_drops,
        monitor_val=validation is not None,
        lr_drop_epochs=lr_drop_epochs,
        on_epoch=on_epoch,
        on_batch=on_batch,
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
