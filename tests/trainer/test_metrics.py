"""MedAI 2021 scoring on cases small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.metrics import binarize, dice_score, iou_score, medai_scores

# The 4x4 case used below, worked out by hand:
#
#   truth        prediction      T∩P = 4 pixels, |T| = 4, |P| = 6, T∪P = 6
#   1 1 0 0      1 1 1 0         Dice = 2*4 / (4+6) = 0.8
#   1 1 0 0      1 1 1 0         IoU  = 4 / 6       = 2/3
#   0 0 0 0      0 0 0 0
#   0 0 0 0      0 0 0 0
TRUTH = np.zeros((1, 4, 4), dtype=np.uint8)
TRUTH[0, :2, :2] = 1
PRED = np.zeros((1, 4, 4), dtype=np.uint8)
PRED[0, :2, :3] = 1


def test_hand_computed_dice_and_iou() -> None:
    assert dice_score(TRUTH, PRED) == pytest.approx(0.8)
    assert iou_score(TRUTH, PRED) == pytest.approx(2 / 3)


def test_scores_are_symmetric_and_perfect_on_identity() -> None:
    assert dice_score(PRED, TRUTH) == pytest.approx(dice_score(TRUTH, PRED))
    assert dice_score(TRUTH, TRUTH) == 1.0
    assert iou_score(TRUTH, TRUTH) == 1.0
    assert dice_score(TRUTH, np.zeros_like(TRUTH)) == 0.0


def test_empty_truth_and_empty_prediction_score_one() -> None:
    empty = np.zeros((1, 4, 4), dtype=bool)
    assert dice_score(empty, empty) == 1.0
    assert iou_score(empty, empty) == 1.0


def test_empty_truth_inverts_both_masks() -> None:
    # Truth empty, prediction marks k = 4 of n = 16 pixels. Inverted: truth has 16 pixels, prediction
    # 12, all 12 inside the truth: Dice = 2*12 / (16+12) = 6/7, IoU = 12/16 = 3/4.
    empty = np.zeros((1, 4, 4), dtype=np.uint8)
    assert dice_score(empty, TRUTH) == pytest.approx(6 / 7)
    assert iou_score(empty, TRUTH) == pytest.approx(3 / 4)
    # Only the image whose truth is empty is inverted.
    both_truth = np.concatenate([empty, TRUTH])
    both_pred = np.concatenate([TRUTH, PRED])
    np.testing.assert_allclose(dice_score(both_truth, both_pred, reduction="none"), [6 / 7, 0.8])


def test_channel_axis_is_accepted() -> None:
    assert dice_score(TRUTH[..., None], PRED[..., None]) == pytest.approx(0.8)
    assert iou_score(TRUTH[..., None], PRED) == pytest.approx(2 / 3)
    assert dice_score(TRUTH.astype(bool), PRED.astype(np.float32)) == pytest.approx(0.8)


def test_mean_and_dataset_reductions_differ_when_polyps_differ_in_size() -> None:
    # Image 1: a large polyp (all 16 pixels) found exactly -> Dice 1, IoU 1.
    # Image 2: a one-pixel polyp missed, a wrong pixel predicted -> Dice 0, IoU 0.
    # Per image: mean Dice = mean IoU = 0.5. Pooled: T∩P = 16, |T| = |P| = 17, T∪P = 18,
    # so Dice = 32/34 and IoU = 16/18: the large polyp dominates.
    truth = np.zeros((2, 4, 4), dtype=np.uint8)
    pred = np.zeros((2, 4, 4), dtype=np.uint8)
    truth[0] = pred[0] = 1
    truth[1, 0, 0] = 1
    pred[1, 3, 3] = 1
    np.testing.assert_allclose(dice_score(truth, pred, reduction="none"), [1.0, 0.0])
    assert dice_score(truth, pred, reduction="mean") == pytest.approx(0.5)
    assert dice_score(truth, pred, reduction="dataset") == pytest.approx(32 / 34)
    assert iou_score(truth, pred, reduction="mean") == pytest.approx(0.5)
    assert iou_score(truth, pred, reduction="dataset") == pytest.approx(16 / 18)


def test_dataset_reduction_of_all_empty_masks_is_one() -> None:
    empty = np.zeros((3, 4, 4), dtype=bool)
    assert dice_score(empty, empty, reduction="dataset") == 1.0
    assert iou_score(empty, empty, reduction="dataset") == 1.0


def test_threshold_is_strict_so_exactly_half_is_background() -> None:
    # segmentation-models and tf.keras BinaryIoU use ">", so the scores agree with training metrics.
    np.testing.assert_array_equal(binarize(np.array([0.49, 0.5, 0.500001, 1.0])), [False, False, True, True])
    np.testing.assert_array_equal(binarize(np.array([0.3, 0.7]), threshold=0.25), [True, True])
    probabilities = TRUTH * 0.9
    probabilities[0, 0, 0] = 0.5  # a truth pixel at exactly 0.5 is predicted background: 3 of 4 found
    scores = medai_scores(TRUTH, probabilities)
    assert scores["mean_dice"] == pytest.approx(2 * 3 / (4 + 3))


def test_binarize_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        binarize(np.array([0.2, np.nan]))


def test_medai_scores_per_image_and_means() -> None:
    truth = np.concatenate([TRUTH, np.zeros_like(TRUTH)])[..., None]
    probabilities = np.concatenate([PRED * 0.8, np.full((1, 4, 4), 0.1)])[..., None]
    scores = medai_scores(truth, probabilities)
    np.testing.assert_allclose(scores["dice"], [0.8, 1.0])
    np.testing.assert_allclose(scores["iou"], [2 / 3, 1.0])
    assert scores["mean_dice"] == pytest.approx(0.9)
    assert scores["mean_iou"] == pytest.approx((2 / 3 + 1) / 2)
    assert isinstance(scores["mean_dice"], float)


@pytest.mark.parametrize(
    ("truth", "pred", "message"),
    [
        (np.zeros((4, 4)), np.zeros((4, 4)), "add a batch axis"),
        (np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4, 3)), r"\(N, H, W\) or \(N, H, W, 1\)"),
        (np.zeros((1, 4, 4)), np.zeros((1, 4, 5)), "differ in shape"),
        (np.zeros((2, 4, 4)), np.zeros((1, 4, 4)), "differ in shape"),
        (np.zeros((0, 4, 4)), np.zeros((0, 4, 4)), "no images"),
        (np.full((1, 4, 4), 255), np.zeros((1, 4, 4)), "binary"),
        (np.zeros((1, 4, 4)), np.full((1, 4, 4), 0.7), "binary"),
    ],
)
def test_bad_inputs_raise_value_error(truth: np.ndarray, pred: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dice_score(truth, pred)
    with pytest.raises(ValueError, match=message):
        iou_score(truth, pred)


def test_unknown_reduction_raises() -> None:
    with pytest.raises(ValueError, match="reduction"):
        dice_score(TRUTH, PRED, reduction="micro")  # type: ignore[call-overload]


def test_channel_sum_dice_of_the_paper_gives_a_different_number() -> None:
    # A reconstruction of the paper's Keras Dice: sums over axis -1 (the 1-wide channel axis) with
    # smooth = 1, so each pixel gets its own "Dice" (1 when right, 1/2 when wrong) and the mean is a
    # pixel agreement: (4 TP + 10 TN + 2 FP * 1/2) / 16 = 0.9375 instead of the overlap's 0.8.
    t = TRUTH[..., None].astype(float)
    p = PRED[..., None].astype(float)
    per_pixel = (2 * (t * p).sum(axis=-1) + 1) / (t.sum(axis=-1) + p.sum(axis=-1) + 1)
    assert per_pixel.mean() == pytest.approx(0.9375)
    assert dice_score(TRUTH[..., None], PRED[..., None]) == pytest.approx(0.8)
