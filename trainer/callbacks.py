"""The Keras callbacks of the fit loop (trainer.training.fit), in the order :func:`fit_callbacks` runs them.

Imports tf_keras at import time (the classes subclass its Callback): trainer.training imports this
module only inside ``fit``, so importing the worker's modules does not start TensorFlow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tf_keras

from trainer.config import CVConfig
from trainer.results import EpochRecord
from trainer.training import BatchCallback, EpochCallback, TrainingError

if TYPE_CHECKING:
    from trainer.checkpoint import EpochCheckpoint

#: ReduceLROnPlateau's state between epochs, which a resumed fold must carry on from.
PLATEAU_COUNTERS = ("best", "wait", "cooldown_counter")


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


class ScheduledLearningRateCuts(tf_keras.callbacks.Callback):
    """Cuts the learning rate by ``factor`` at the end of each listed epoch (from 1): a retrain's
    imitated schedule, where no validation set can drive the plateau rule."""

    def __init__(self, drop_epochs: Sequence[int], factor: float) -> None:
        super().__init__()
        self.drop_epochs = drop_epochs
        self.factor = factor

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.lr = float(tf_keras.backend.get_value(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        if epoch + 1 in self.drop_epochs:
            # From the epoch's learning rate, as it began (the plateau rule cuts first when both run).
            tf_keras.backend.set_value(self.model.optimizer.learning_rate, self.lr * self.factor)


class EpochRecorder(tf_keras.callbacks.Callback):
    """Appends each epoch to ``history`` (its number to ``lr_drops`` when the learning rate was cut
    at its end), reports it to ``on_epoch``, and stops training when the loss is not finite."""

    def __init__(
        self, history: list[EpochRecord], lr_drops: list[int], on_epoch: EpochCallback | None, n_train: int
    ) -> None:
        super().__init__()
        self.history = history
        self.lr_drops = lr_drops
        self.on_epoch = on_epoch
        self.n_train = n_train

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.started = time.perf_counter()
        self.lr = float(tf_keras.backend.get_value(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        logs = dict(logs or {})
        number = epoch + 1
        lr_after = float(tf_keras.backend.get_value(self.model.optimizer.learning_rate))
        if lr_after < self.lr * (1 - 1e-6):
            self.lr_drops.append(number)
        loss = float(logs.get("loss", float("nan")))
        if not math.isfinite(loss):
            raise TrainingError(f"the loss became {loss} in epoch {number}; lower the learning rate (now {self.lr:g})")
        record = EpochRecord(
            epoch=number,
            loss=loss,
            val_loss=float(logs.get("val_loss", float("nan"))),
            val_iou=float(logs.get("val_iou", float("nan"))),
            lr=self.lr,
        )
        self.history.append(record)
        if self.on_epoch is not None:
            seconds = time.perf_counter() - self.started
            self.on_epoch(
                number,
                {
                    "loss": record.loss,
                    "val_loss": record.val_loss,
                    "val_iou": record.val_iou,
                    "lr": record.lr,
                    "seconds": seconds,
                    "images_per_second": self.n_train / seconds if seconds > 0 else float("nan"),
                },
            )


#: Seconds between two progress reports inside an epoch (a live view redraws about this often).
BATCH_PROGRESS_EVERY_S = 1.0


class BatchProgress(tf_keras.callbacks.Callback):
    """Reports how far the running epoch is (batches, images/s) to ``on_batch``, at most every
    BATCH_PROGRESS_EVERY_S seconds.

    It reads no batch logs and says so (``_supports_tf_logs``): Keras then hands it the logs as
    tensors instead of copying the loss to the host after every batch, so training keeps its pace.
    """

    def __init__(self, on_batch: BatchCallback, n_train: int) -> None:
        super().__init__()
        self._supports_tf_logs = True
        self.on_batch = on_batch
        self.n_train = n_train
        self.epoch = 0
        self.started = self.reported = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.epoch = epoch + 1
        self.started = self.reported = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        at = time.perf_counter()
        if at - self.reported < BATCH_PROGRESS_EVERY_S:
            return
        self.reported = at
        steps = int((self.params or {}).get("steps") or 0)
        done = batch + 1
        images = self.n_train * done / steps if steps else float("nan")
        self.on_batch(self.epoch, done, steps, images / (at - self.started) if at > self.started else float("nan"))


class EpochCheckpointSaver(tf_keras.callbacks.Callback):
    """Saves the training state after each epoch (when the checkpoint is due), and puts the plateau
    rule's counters back when training resumes."""

    def __init__(
        self, checkpoint: EpochCheckpoint, plateau: Any, history: list[EpochRecord], lr_drops: list[int]
    ) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.plateau = plateau
        self.history = history
        self.lr_drops = lr_drops

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
            history=list(self.history),
            lr_drops=list(self.lr_drops),
            lr=float(tf_keras.backend.get_value(self.model.optimizer.learning_rate)),
            plateau=plateau,
            seconds=self.checkpoint.seconds(),
        )
        self.checkpoint.save(self.model, state)


def fit_callbacks(
    config: CVConfig,
    history: list[EpochRecord],
    lr_drops: list[int],
    *,
    monitor_val: bool,
    lr_drop_epochs: Sequence[int] | None,
    on_epoch: EpochCallback | None,
    n_train: int,
    on_batch: BatchCallback | None = None,
    bn_batches: Callable[[], Iterator[np.ndarray]] | None = None,
    checkpoint: EpochCheckpoint | None = None,
    seed: int | None = None,
) -> list[Any]:
    """The fit loop's callbacks, in the order they must run each epoch."""
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
    if lr_drop_epochs is not None:
        callbacks.append(ScheduledLearningRateCuts(lr_drop_epochs, config.lr_factor))
    # After the schedules, so it sees the cut learning rate.
    callbacks.append(EpochRecorder(history, lr_drops, on_epoch, n_train))
    if on_batch is not None:
        callbacks.append(BatchProgress(on_batch, n_train))
    if checkpoint is not None:
        callbacks.append(EpochCheckpointSaver(checkpoint, plateau, history, lr_drops))  # last: the epoch is complete
    return callbacks
