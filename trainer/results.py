"""What a cross-validation produces, as written to ``cv.json`` and ``folds/fold_NN.json``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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

    ``lr_drops`` are the epochs (from 1) at whose end the learning rate was cut.
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


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN/inf float (numpy's too) replaced by None, at every depth."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def dumps_strict(payload: Any, **options: Any) -> str:
    """Strict JSON (RFC 8259: no NaN or Infinity, which jq and browsers reject); non-finite -> null."""
    return json.dumps(finite_or_none(payload), allow_nan=False, **options)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write strict JSON through a temporary file and a rename, so readers never see half a file."""
    from trainer._env import created_file_mode

    text = dumps_strict(payload, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, created_file_mode())  # mkstemp makes 0600 files; follow the umask like other outputs
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
