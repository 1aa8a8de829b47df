"""Epoch checkpoints: a fold (or a retrain) stopped mid-training resumes after its last finished epoch.

A fold of a CPU sweep trains for tens of minutes to hours; a Slurm time limit, a preempted node, a
killed driver or Ctrl-C would otherwise throw all of it away (folds are kept only once finished).
After every epoch the fold's whole training state goes into one file, replaced atomically: the
model's weights, the optimizer's variables (Adam's step count and moments), the learning rate, the
plateau rule's counters and the history so far. Resuming restores all of it and continues at the
next epoch; each epoch's shuffle, augmentations and dropout masks are drawn from (seed, epoch), so
the resumed epochs see the batches an uninterrupted run would have.

The file names the run it belongs to (configuration, data, fold, its training rows): a checkpoint of
anything else, or one that cannot be read, is set aside with a warning and the fold starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segsweep.base.files import atomic_path, dumps_strict
from trainer.results import EpochRecord

if TYPE_CHECKING:
    import tf_keras

#: Bumped when the file's content changes meaning; other formats are set aside, not read.
FORMAT = 1
#: Largest share of training time spent writing checkpoints. An epoch's checkpoint is skipped when
#: the last one was written too recently for that (short epochs on a fast GPU, a slow shared file
#: system); then a stop loses the epochs since, at most about save time / MAX_OVERHEAD of training.
#: A 92 MiB checkpoint takes ~0.4 s here (benchmarks/bench_training_path.py): every epoch longer
#: than ~20 s is saved.
MAX_OVERHEAD = 0.02
#: No checkpoint protects less training than this: a stop within the first minute of a fold (or of
#: the minute since the last save) loses at most that minute. Without it every short fold (a smoke
#: run, CI's tiny images) would write its whole state once to delete it seconds later: 285 MB for
#: a VGG16 U-Net with Adam's moments, on every fold.
MIN_PROTECTED_SECONDS = 60.0
#: The fold number in a retrain's identity: it trains on every development image, no fold of them.
RETRAIN_FOLD = 0


@dataclass
class EpochState:
    """Where training stood after ``epoch`` epochs (counted from 1)."""

    epoch: int
    history: list[EpochRecord]
    lr_drops: list[int]
    lr: float
    #: ReduceLROnPlateau's counters: best, wait, cooldown_counter (empty without validation).
    plateau: dict[str, float] = field(default_factory=dict)
    #: Training seconds spent on this fold so far, over every attempt.
    seconds: float = 0.0


def run_identity(
    config: Mapping[str, Any], data_key: str, fold: int, train_rows: np.ndarray, **more: Any
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: configuration, data, fold (RETRAIN_FOLD: a retrain), its
    training rows, and ``more`` (a retrain's learning-rate schedule)."""
    rows = np.ascontiguousarray(np.sort(np.asarray(train_rows, dtype=np.int64)))
    return {
        "config": dict(config),
        "data_key": data_key,
        "fold": fold,
        "train_rows": hashlib.sha256(rows.tobytes()).hexdigest(),
        **more,
    }


class EpochCheckpoint:
    """One fold's checkpoint file: saved after each epoch, read once when the fold starts."""

    def __init__(self, path: Path, identity: Mapping[str, Any], precision: str | None = None) -> None:
        self.path = Path(path)
        self.identity = json.loads(dumps_strict(identity))  # as it reads back from the file
        #: The Keras policy the epochs train under, written beside the identity (not part of it: a
        #: resumed run follows it under ``--mixed-precision auto``, trainer.training.train_one_model).
        self.precision = precision
        self.started = time.perf_counter()
        self._last_save: tuple[float, float] | None = None  # (when it ended, how long it took)
        #: The state this attempt resumed from (None: it started the fold from its first epoch).
        self.resumed: EpochState | None = None

    def seconds(self) -> float:
        """This fold's training seconds: earlier attempts' plus this one's."""
        before = self.resumed.seconds if self.resumed is not None else 0.0
        return before + time.perf_counter() - self.started

    def due(self) -> bool:
        """Whether saving now protects at least MIN_PROTECTED_SECONDS of training and keeps
        checkpoints within MAX_OVERHEAD of the training time."""
        ended, took = self._last_save if self._last_save is not None else (self.started, 0.0)
        unprotected = time.perf_counter() - ended
        return unprotected >= MIN_PROTECTED_SECONDS and unprotected * MAX_OVERHEAD >= took

    def save(self, model: tf_keras.Model, state: EpochState) -> None:
        started = time.perf_counter()
        optimizer = model.optimizer
        arrays: dict[str, np.ndarray] = {
            "meta": np.frombuffer(
                dumps_strict(
                    {"format": FORMAT, "identity": self.identity, "precision": self.precision, "state": asdict(state)}
                ).encode(),
                dtype=np.uint8,
            )
        }
        arrays.update({f"weight_{i}": w for i, w in enumerate(model.get_weights())})
        arrays.update({f"optimizer_{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
        with atomic_path(self.path) as partial:
            with open(partial, "wb") as handle:  # a file object: np.savez would add ".npz" to a path
                np.savez(handle, **arrays)  # type: ignore[arg-type]
            os.chmod(partial, _created_file_mode())
        ended = time.perf_counter()
        self._last_save = (ended, ended - started)

    def recorded_precision(self) -> str | None:
        """The policy the checkpoint's epochs trained under, when it is this run's and says (None: no
        checkpoint, another run's, unreadable, or written before precisions were recorded)."""
        if self.resumed is not None or not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                meta = json.loads(stored["meta"].tobytes().decode())  # the weights stay unread
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            return None  # load() sets it aside, saying why
        if meta.get("format") != FORMAT or meta.get("identity") != self.identity:
            return None
        precision = meta.get("precision")
        return precision if isinstance(precision, str) else None

    def load(self, model: tf_keras.Model) -> EpochState | None:
        """Restore ``model`` (weights and optimizer) from the checkpoint and return its state.

        None, leaving ``model`` untouched, when there is no checkpoint or it cannot be used (then it
        is renamed ``*.unused`` with a one-line warning, never silently trained on). Called again
        once it resumed, it returns the same state without reading the file again.
        """
        if self.resumed is not None:  # loaded already (the model holds its state)
            return self.resumed
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            meta = json.loads(arrays.pop("meta").tobytes().decode())
            if meta.get("format") != FORMAT:
                self._set_aside(f"format {meta.get('format')}, expected {FORMAT}")
                return None
            if meta.get("identity") != self.identity:
                self._set_aside(_difference(meta.get("identity") or {}, self.identity))
                return None
            raw = meta["state"]
            state = EpochState(
                epoch=int(raw["epoch"]),
                history=[EpochRecord(**_nan_for_null(h)) for h in raw["history"]],
                lr_drops=[int(e) for e in raw["lr_drops"]],
                lr=float(raw["lr"]),
                plateau={k: _float(v) for k, v in raw.get("plateau", {}).items()},
                seconds=float(raw.get("seconds", 0.0)),
            )
            weights = _numbered(arrays, "weight_")
            optimizer_values = _numbered(arrays, "optimizer_")
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            self._set_aside(f"unreadable: {type(exc).__name__}")
            return None
        expected = [w.shape for w in model.get_weights()]
        if [w.shape for w in weights] != expected:
            self._set_aside("its weights do not fit this model")
            return None
        optimizer = model.optimizer
        if len(optimizer.variables) != len(optimizer_values):
            optimizer.build(model.trainable_variables)  # a fresh optimizer makes its moments on first use
        if [tuple(v.shape) for v in optimizer.variables] != [v.shape for v in optimizer_values]:
            self._set_aside("its optimizer state does not fit this model")
            return None
        model.set_weights(weights)
        for variable, value in zip(optimizer.variables, optimizer_values, strict=True):
            variable.assign(value)
        self.resumed = state
        print(f"segsweep: resuming {self.path} after epoch {state.epoch}", file=sys.stderr, flush=True)
        return state

    def discard(self) -> None:
        """The training finished: its checkpoint has served."""
        self.path.unlink(missing_ok=True)

    def _set_aside(self, why: str) -> None:
        aside = self.path.with_name(self.path.name + ".unused")
        os.replace(self.path, aside)
        print(
            f"segsweep: warning: checkpoint {self.path} not resumed ({why}); moved to {aside.name}, "
            "the fold starts from its first epoch",
            file=sys.stderr,
        )


def _numbered(arrays: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    count = sum(1 for name in arrays if name.startswith(prefix))
    return [arrays[f"{prefix}{i}"] for i in range(count)]


def _difference(found: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    differing = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
    return f"it belongs to another run: {', '.join(differing)} differ"


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _nan_for_null(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (float("nan") if v is None else v) for k, v in values.items()}


def _created_file_mode() -> int:
    from segsweep.base.env import created_file_mode

    return created_file_mode()
