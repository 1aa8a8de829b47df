"""Segmentation scores as pure numpy functions with explicit reductions (MedAI 2021 scoring).

MedAI 2021 scores a binary segmentation per image, then averages over images:

1. threshold the predicted probabilities: a pixel is foreground when its probability is strictly
   greater than the threshold (0.5). ``> 0.5``, not ``>= 0.5``, is what segmentation-models
   (``round_if_needed``: ``backend.greater``) and tf.keras ``BinaryIoU`` do, so a probability of
   exactly 0.5 is background here as it is in the training metrics;
2. per image, compute Dice ``2|T∩P| / (|T|+|P|)`` and IoU ``|T∩P| / |T∪P|``;
3. where the ground truth of an image is empty, invert both masks first, so the score measures how
   well the background was found: an empty prediction of an empty truth scores 1 (instead of 0/0),
   and a prediction that marks k of n pixels scores ``2(n-k)/(2n-k)`` Dice and ``(n-k)/n`` IoU;
4. average the per-image scores.

Masks are ``(N, H, W)`` or ``(N, H, W, 1)`` arrays of bool or 0/1 integers, one mask per image: the
score of an image never mixes in its channel axis or other images (the paper's Dice summed over the
channel axis, which made it a per-pixel agreement rather than an overlap).

``reduction`` says how per-image scores become a number, as in segmentation_models.pytorch:
``"none"`` returns the ``(N,)`` per-image scores, ``"mean"`` their mean (the MedAI score), and
``"dataset"`` pools all pixels of all images into one Dice or IoU (micro average: large polyps
weigh more; no empty-truth inversion, see :func:`dice_score`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypedDict, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_THRESHOLD",
    "MedAIScores",
    "Reduction",
    "binarize",
    "dice_score",
    "iou_score",
    "medai_scores",
]

#: Probability above which (strictly) a pixel is predicted foreground.
DEFAULT_THRESHOLD = 0.5

Reduction = Literal["mean", "none", "dataset"]
_REDUCTIONS: tuple[str, ...] = ("mean", "none", "dataset")

# A score from pixel counts (intersection, truth, prediction), elementwise over images.
_Score = Callable[[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]], NDArray[np.float64]]


class MedAIScores(TypedDict):
    """Per-image scores and their means, as :func:`medai_scores` returns them."""

    dice: NDArray[np.float64]  # (N,)
    iou: NDArray[np.float64]  # (N,)
    mean_dice: float
    mean_iou: float


def binarize(probabilities: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> NDArray[np.bool_]:
    """Foreground where ``probabilities > threshold`` (strictly: exactly 0.5 is background)."""
    values = np.asarray(probabilities)
    if not np.issubdtype(values.dtype, np.number) and values.dtype != np.bool_:
        raise ValueError(f"probabilities must be numbers, got an array of {values.dtype}")
    if np.issubdtype(values.dtype, np.floating) and np.isnan(values).any():
        # NaN > 0.5 is False: a diverged model would silently score as "predicts background".
        raise ValueError("probabilities contain NaN; the model diverged or its output is broken")
    return np.asarray(values > threshold, dtype=np.bool_)


@overload
def dice_score(y_true: ArrayLike, y_pred: ArrayLike, reduction: Literal["none"]) -> NDArray[np.float64]: ...
@overload
def dice_score(y_true: ArrayLike, y_pred: ArrayLike, reduction: Literal["mean", "dataset"] = ...) -> float: ...
@overload
def dice_score(y_true: ArrayLike, y_pred: ArrayLike, reduction: Reduction) -> float | NDArray[np.float64]: ...
def dice_score(y_true: ArrayLike, y_pred: ArrayLike, reduction: Reduction = "mean") -> float | NDArray[np.float64]:
    """Dice ``2|T∩P| / (|T|+|P|)`` of binary masks ``(N,H,W)`` or ``(N,H,W,1)``.

    ``"none"`` -> ``(N,)`` per-image scores (empty truth: both masks inverted); ``"mean"`` -> their
    mean; ``"dataset"`` -> one Dice over all pixels pooled, without inversion (1.0 when truth and
    prediction are both empty everywhere).
    """
    truth, pred = _as_mask_pair(y_true, y_pred)
    return _reduce(truth, pred, reduction, _dice)


@overload
def iou_score(y_true: ArrayLike, y_pred: ArrayLike, reduction: Literal["none"]) -> NDArray[np.float64]: ...
@overload
def iou_score(y_true: ArrayLike, y_pred: ArrayLike, reduction: Literal["mean", "dataset"] = ...) -> float: ...
@overload
def iou_score(y_true: ArrayLike, y_pred: ArrayLike, reduction: Reduction) -> float | NDArray[np.float64]: ...
def iou_score(y_true: ArrayLike, y_pred: ArrayLike, reduction: Reduction = "mean") -> float | NDArray[np.float64]:
    """IoU (Jaccard) ``|T∩P| / |T∪P|`` of binary masks; reductions as in :func:`dice_score`."""
    truth, pred = _as_mask_pair(y_true, y_pred)
    return _reduce(truth, pred, reduction, _iou)


def medai_scores(y_true: ArrayLike, probabilities: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> MedAIScores:
    """MedAI 2021 scores of predicted probabilities against binary truth masks, per image and mean."""
    pred = binarize(probabilities, threshold)
    truth, pred = _as_mask_pair(y_true, pred)
    dice = _per_image(truth, pred, _dice)
    iou = _per_image(truth, pred, _iou)
    return MedAIScores(dice=dice, iou=iou, mean_dice=float(dice.mean()), mean_iou=float(iou.mean()))


# --- private helpers -------------------------------------------------------------------------------


def _dice(intersection: NDArray[np.int64], truth: NDArray[np.int64], pred: NDArray[np.int64]) -> NDArray[np.float64]:
    return np.asarray(2.0 * intersection / (truth + pred), dtype=np.float64)


def _iou(intersection: NDArray[np.int64], truth: NDArray[np.int64], pred: NDArray[np.int64]) -> NDArray[np.float64]:
    return np.asarray(intersection / (truth + pred - intersection), dtype=np.float64)


def _count(mask: NDArray[np.bool_], axis: tuple[int, ...]) -> NDArray[np.int64]:
    return np.asarray(np.count_nonzero(mask, axis=axis), dtype=np.int64)


def _per_image(truth: NDArray[np.bool_], pred: NDArray[np.bool_], score: _Score) -> NDArray[np.float64]:
    """Scores of each image, inverting both masks of images whose truth is empty."""
    empty = np.asarray(~truth.any(axis=(1, 2)))
    # Inverting an empty truth makes it all-foreground, so no denominator below is ever 0.
    truth = np.where(empty[:, None, None], ~truth, truth)
    pred = np.where(empty[:, None, None], ~pred, pred)
    images = (1, 2)
    return score(_count(truth & pred, images), _count(truth, images), _count(pred, images))


def _reduce(
    truth: NDArray[np.bool_], pred: NDArray[np.bool_], reduction: str, score: _Score
) -> float | NDArray[np.float64]:
    if reduction == "none":
        return _per_image(truth, pred, score)
    if reduction == "mean":
        return float(_per_image(truth, pred, score).mean())
    if reduction == "dataset":
        everything = (0, 1, 2)
        n_truth, n_pred = _count(truth, everything), _count(pred, everything)
        if n_truth == 0 and n_pred == 0:
            return 1.0  # nothing to find and nothing found: the per-image convention's answer
        return float(score(_count(truth & pred, everything), n_truth, n_pred))
    raise ValueError(f"reduction must be one of {', '.join(map(repr, _REDUCTIONS))}, got {reduction!r}")


def _as_masks(values: ArrayLike, name: str) -> NDArray[np.bool_]:
    """A batch of binary masks as bool ``(N, H, W)``, or a ValueError saying what is wrong."""
    array = np.asarray(values)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        hint = " (one mask? add a batch axis: mask[None])" if array.ndim == 2 else ""
        raise ValueError(f"{name} must have shape (N, H, W) or (N, H, W, 1), got {array.shape}{hint}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} holds no images (shape {array.shape}); scores of nothing are undefined")
    if array.dtype == np.bool_:
        return array
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be bool or 0/1 numbers, got an array of {array.dtype}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(
            f"{name} must be binary (bool or 0/1), got values in [{array.min()}, {array.max()}]; "
            "threshold probabilities with binarize() and 0/255 masks with mask > 127 first"
        )
    return array.astype(np.bool_)


def _as_mask_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    truth = _as_masks(y_true, "y_true")
    pred = _as_masks(y_pred, "y_pred")
    if truth.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {truth.shape} vs {pred.shape} (channel axis dropped)")
    return truth, pred
