"""What a cross-validation produces, and its output folder: ``cv.json`` and ``folds/fold_NN.json``.

This module owns the layout of a cross-validation's output folder (``segsweep cv --out`` and each
trial folder of a sweep): the file names, the writers and the tolerant readers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The cross-validation's result (written after every fold; ``complete`` once the last fold ends).
CV_FILE = "cv.json"
#: One file per finished fold, written as the fold ends: ``folds/fold_01.json``, ...
FOLDS_DIR = "folds"
#: Each fold's model as a bundle (``--keep-models``): ``models/fold_01/``, ... (a fold ensemble).
MODELS_DIR = "models"
#: A fold in training's state after its last finished epoch (trainer.checkpoint), removed when the
#: fold ends: ``checkpoints/fold_01.npz``, ...
CHECKPOINTS_DIR = "checkpoints"


@dataclass
class EpochRecord:
    """One epoch of one fold. ``lr`` is the learning rate the epoch trained at."""

    epoch: int
    loss: float
    val_loss: float
    val_iou: float
    lr: float


@dataclass
class FoldResult:
    """One fold, scored MedAI-style on its validation images. ``fold`` counts from 1.

    ``lr_drops`` are the epochs (from 1) at whose end the learning rate was cut. ``val_dice`` and
    ``val_iou`` are the MedAI scores of each validation image (trainer.metrics.medai_scores), in the
    order of ``val_stems``: ``dice`` and ``iou`` are their means. They let two trials on the same
    folds be compared image by image (sweeps.folder.image_scores); folds written before they were
    recorded have none.
    """

    fold: int
    n_train: int
    n_val: int
    dice: float
    iou: float
    epochs_run: int
    lr_drops: list[int]
    history: list[EpochRecord]
    seconds: float
    val_stems: list[str] = field(default_factory=list)
    val_dice: list[float] = field(default_factory=list)
    val_iou: list[float] = field(default_factory=list)

    def image_scores(self) -> dict[str, tuple[float, float]]:
        """Each validation image's (Dice, IoU) by stem; empty for a fold recorded without them."""
        if not (len(self.val_stems) == len(self.val_dice) == len(self.val_iou)):
            return {}  # an edited or cut record: pairing by position would pair the wrong images
        return {stem: (d, i) for stem, d, i in zip(self.val_stems, self.val_dice, self.val_iou, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FoldResult:
        values = _nan_for_null(dict(values), ("dice", "iou"))
        values["history"] = [
            EpochRecord(**_nan_for_null(h, ("loss", "val_loss", "val_iou", "lr"))) for h in values.get("history", [])
        ]
        return cls(**values)


def summarise(folds: list[FoldResult]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (ddof=1; 0 for a single fold) of Dice and IoU over folds."""
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for metric in ("dice", "iou"):
        values = np.array([getattr(f, metric) for f in folds], dtype=float)
        mean[metric] = float(values.mean()) if len(values) else float("nan")
        std[metric] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return mean, std


@dataclass
class CVResult:
    """A cross-validation, complete or in progress (``complete`` False until the last fold ends)."""

    config: dict[str, Any]
    data: dict[str, Any]
    n_folds: int
    folds: list[FoldResult]
    seconds: float
    complete: bool
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    version: str = ""
    #: How TensorFlow ran (trainer.models.RuntimeSettings: mixed precision asked/resolved/why, threads).
    runtime: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.mean:
            self.mean, self.std = summarise(self.folds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CVResult:
        values = dict(values)
        values["folds"] = [FoldResult.from_dict(f) for f in values.get("folds", [])]
        for key in ("mean", "std"):
            if isinstance(values.get(key), dict):
                values[key] = _nan_for_null(values[key], tuple(values[key]))
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> CVResult:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _nan_for_null(values: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Strict JSON writes a missing number (NaN) as null; in memory it is NaN again."""
    return {k: (float("nan") if k in keys and v is None else v) for k, v in values.items()}


def fold_path(out_dir: Path, fold: int) -> Path:
    """Where fold ``fold`` (from 1) of the cross-validation in ``out_dir`` is written."""
    return Path(out_dir) / FOLDS_DIR / f"fold_{fold:02d}.json"


def fold_model_dir(out_dir: str | Path, fold: int) -> Path:
    """Where fold ``fold``'s model bundle is kept (``cv --keep-models``)."""
    return Path(out_dir) / MODELS_DIR / f"fold_{fold:02d}"


def fold_checkpoint_path(out_dir: str | Path, fold: int) -> Path:
    """Where fold ``fold``'s epoch checkpoint is kept while it trains."""
    return Path(out_dir) / CHECKPOINTS_DIR / f"fold_{fold:02d}.npz"


def fold_files(out_dir: Path) -> list[Path]:
    """The fold files in ``out_dir``, in fold order."""
    return sorted((Path(out_dir) / FOLDS_DIR).glob("fold_*.json"))


def read_fold_files(out_dir: Path) -> tuple[list[FoldResult], list[Path]]:
    """Readable folds in fold order, and the fold files that could not be read (half-written, edited)."""
    folds: list[FoldResult] = []
    damaged: list[Path] = []
    for path in fold_files(out_dir):
        try:
            folds.append(FoldResult.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            damaged.append(path)
    return sorted(folds, key=lambda f: f.fold), damaged


def read_cv_result(out_dir: Path) -> CVResult | None:
    """``cv.json`` of ``out_dir``, or None where it is missing or unreadable."""
    try:
        return CVResult.load(Path(out_dir) / CV_FILE)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
