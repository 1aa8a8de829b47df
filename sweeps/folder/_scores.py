"""Test-set scores that ``segsweep predict`` leaves in the sweep folder, for the report's Table 2.

A model bundle remembers the sweep and trial it was retrained from. When ``predict`` scores it
against masks, it writes one record to ``SWEEP/predictions/<key>.json`` (the key is derived from the
prediction's output folder, so predicting again into the same folder replaces the record).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segsweep.base.files import write_json_atomic
from sweeps.folder._layout import SweepFolder
from sweeps.folder._records import now


@dataclass(frozen=True)
class TestScore:
    """One row of scores on a test set: plain prediction or flip test-time augmentation."""

    trial_id: str
    variant: str  # "plain" or "tta"
    n_images: int
    dice_mean: float
    dice_std: float
    iou_mean: float
    iou_std: float
    images: str
    out: str
    #: How many of the scored images the model was trained on (then these are not test scores).
    n_overlap_with_training: int = 0


def record_test_scores(sweep_path: Path, trial_id: str, summary: dict[str, Any]) -> Path:
    """Write ``summary`` (trial, images, out, rows) as this prediction's record in the sweep folder."""
    key = hashlib.sha256(str(Path(summary["out"]).resolve()).encode()).hexdigest()[:16]
    path = SweepFolder(sweep_path).predictions_dir / f"{key}.json"
    record = {"trial_id": trial_id, "written": now(), **summary}
    write_json_atomic(path, record)
    return path


def load_test_scores(sweep_path: Path, trial_id: str | None = None) -> list[TestScore]:
    """Every recorded row (of one trial if given), newest record first; unreadable records are skipped."""
    records = []
    for path in SweepFolder(sweep_path).predictions_dir.glob("*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    records.sort(key=lambda r: str(r.get("written", "")), reverse=True)
    scores = []
    for record in records:
        if trial_id is not None and record.get("trial_id") != trial_id:
            continue
        for row in record.get("rows", []):
            try:
                scores.append(
                    TestScore(
                        trial_id=str(record["trial_id"]),
                        variant=str(row["variant"]),
                        n_images=int(row["n_images"]),
                        dice_mean=float(row["dice_mean"]),
                        dice_std=float(row["dice_std"]),
                        iou_mean=float(row["iou_mean"]),
                        iou_std=float(row["iou_std"]),
                        images=str(record.get("images", "")),
                        out=str(record.get("out", "")),
                        n_overlap_with_training=int(record.get("n_overlap_with_training", 0)),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
    return scores
