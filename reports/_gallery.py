"""What the winner does on images: its out-of-fold scores per image and its best, median and worst ones.

Every fold records each validation image's Dice and IoU (cv.json, fold files), so the per-image table
needs nothing else. The pictures need more than the sweep folder keeps by default: predictions are
not stored, so they are recomputed with the fold model that validated each image, on the prepared
(resized) data the trial trained on. Both exist only when the sweep kept the winner's fold models
(``sweep run --keep-models K``) and the data cache entry is still there; otherwise the report says
which is missing and shows the table alone. Nothing is retrained.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sweeps.folder import ImageScore, TrialResult
from trainer.preview import PREDICTED_COLOUR, TRUE_COLOUR
from trainer.results import fold_model_dir, read_cv_result

#: What the outline colours are called in the legend (their RGB values live in trainer.preview).
LEGEND = (
    f"Outlines: truth in green (RGB {TRUE_COLOUR}), prediction in magenta (RGB {PREDICTED_COLOUR}, "
    "probability above the model's threshold, as scored): the colours of the MLflow fold previews. "
    "Above each image its name and Dice."
)


@dataclass(frozen=True)
class Picked:
    role: str  # best, median, worst
    score: ImageScore


def ranked_scores(trial: TrialResult) -> list[ImageScore]:
    """The trial's out-of-fold image scores, worst Dice first (ties by name, so the order is stable)."""
    return sorted(trial.image_scores().values(), key=lambda s: (s.dice, s.stem))


def best_median_worst(scores: list[ImageScore]) -> list[Picked]:
    """The best, median (the middle image; the lower of the two middle ones) and worst image of ``scores``
    (sorted worst first); fewer than three images give each once."""
    if not scores:
        return []
    picks = [Picked("best", scores[-1]), Picked("median", scores[(len(scores) - 1) // 2]), Picked("worst", scores[0])]
    unique: list[Picked] = []
    for pick in picks:
        if all(pick.score.stem != u.score.stem for u in unique):
            unique.append(pick)
    return unique


def per_image_csv(scores: list[ImageScore]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "fold", "dice", "iou"])
    for score in scores:
        writer.writerow([score.stem, score.fold, f"{score.dice:.6f}", f"{score.iou:.6f}"])
    return buffer.getvalue().encode("utf-8")


def draw_picked(trial: TrialResult, picked: list[Picked]) -> bytes | str:
    """The picked images with truth and prediction outlines as one PNG, or why they cannot be drawn."""
    if trial.path is None or not picked:
        return "No images drawn: the winner's folds recorded no per-image scores."
    missing = sorted({p.score.fold for p in picked if not (fold_model_dir(trial.path, p.score.fold)).is_dir()})
    if missing:
        folds = ", ".join(map(str, missing))
        return (
            f"No images drawn: the winner's fold models are not kept (none for fold(s) {folds}, which validated "
            f"these images, under {trial.path / 'models'}), and predictions are not stored. Run the sweep with "
            "`--keep-models K` (the best K trials keep their fold models) to see them here; the table below "
            "names the best, median and worst images."
        )
    cv = read_cv_result(trial.path)
    cache_key = (cv.data if cv else {}).get("cache_key")
    from trainer.data import default_cache_dir, load_cache

    entry = default_cache_dir() / str(cache_key)
    try:
        data = load_cache(entry) if cache_key else None
    except (OSError, ValueError, KeyError, TypeError):
        data = None
    if data is None:
        return (
            f"No images drawn: the prepared data the winner trained on (cache entry {cache_key}) is not in "
            f"{default_cache_dir()} any more; rerunning `segsweep cv` on the data set prepares it again."
        )
    rows = {stem: i for i, stem in enumerate(data.stems)}
    absent = [p.score.stem for p in picked if p.score.stem not in rows]
    if absent:
        return f"No images drawn: {', '.join(absent)} not in the prepared data (cache entry {cache_key})."
    return _render(trial.path, picked, np.asarray(data.images), np.asarray(data.masks), rows)


def _render(
    trial_path: Path, picked: list[Picked], images: np.ndarray, masks: np.ndarray, rows: dict[str, int]
) -> bytes:
    from trainer.bundle import load_bundle
    from trainer.preview import preview_png
    from trainer.reporter import FoldPreview
    from trainer.training import predict_probabilities

    probabilities: dict[str, np.ndarray] = {}
    threshold = 0.5
    for fold in sorted({p.score.fold for p in picked}):
        bundle = load_bundle(fold_model_dir(trial_path, fold))
        threshold = bundle.threshold
        model = bundle.load_model()
        stems = [p.score.stem for p in picked if p.score.fold == fold]
        batch = np.stack([images[rows[s]] for s in stems])
        for stem, probability in zip(stems, predict_probabilities(model, batch, bundle.config), strict=True):
            probabilities[stem] = probability
    stems = [p.score.stem for p in picked]
    preview = FoldPreview(
        stems=tuple(f"{p.role}: {p.score.stem}" for p in picked),
        images=np.stack([images[rows[s]] for s in stems]),
        true_masks=np.stack([masks[rows[s]][..., 0] for s in stems]),
        probabilities=np.stack([probabilities[s] for s in stems]),
    )
    return preview_png(preview, threshold=threshold)
