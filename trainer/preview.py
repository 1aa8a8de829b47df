"""A fold's preview picture: a few validation images with their true and predicted contours.

One PNG per fold (lossless, so thin contours stay exact), made from the ``FoldPreview`` that the
cross-validation hands to reporters. Each tile is a validation image, upscaled so that contours of
small (64 px) inputs stay visible, with the true mask's outline in green and the prediction's
(probability > threshold, as scored) in magenta, and its stem and per-image Dice written above it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from trainer.metrics import DEFAULT_THRESHOLD, binarize, dice_score
from trainer.reporter import FoldPreview

#: Outline colours, RGB.
TRUE_COLOUR: tuple[int, int, int] = (0, 220, 0)
PREDICTED_COLOUR: tuple[int, int, int] = (255, 0, 255)
_CAPTION_HEIGHT = 22
_GAP = 4
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45


def _caption(name: str, tail: str, width: int) -> str:
    """``name`` + ``tail`` in ``width`` pixels: the name shortened (ending "..") so the Dice is never cut."""

    def fits(text: str) -> bool:
        return cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0][0] <= width

    if fits(name + tail):
        return name + tail
    while name and not fits(name + ".." + tail):
        name = name[:-1]
    return name + ".." + tail


def render_preview(preview: FoldPreview, *, threshold: float = DEFAULT_THRESHOLD, tile: int = 256) -> np.ndarray:
    """The preview as one RGB uint8 image: the tiles side by side, each with a caption strip.

    ``tile`` is the smallest side a tile is drawn at; larger images keep their size.
    """
    k = len(preview.stems)
    if k == 0:
        raise ValueError("FoldPreview has no images to draw")
    if not (len(preview.images) == len(preview.true_masks) == len(preview.probabilities) == k):
        raise ValueError(
            f"FoldPreview arrays disagree: {k} stems, {len(preview.images)} images, "
            f"{len(preview.true_masks)} masks, {len(preview.probabilities)} probability maps"
        )
    side = max(tile, int(preview.images.shape[1]))
    thickness = max(1, side // 128)
    tiles = []
    for stem, image, truth, probability in zip(
        preview.stems, preview.images, preview.true_masks, preview.probabilities, strict=True
    ):
        truth = np.asarray(truth).reshape(truth.shape[0], truth.shape[1]) > 0
        predicted = binarize(np.asarray(probability).reshape(truth.shape), threshold)
        canvas = cv2.resize(np.ascontiguousarray(image, dtype=np.uint8), (side, side), interpolation=cv2.INTER_LINEAR)
        for mask, colour in ((truth, TRUE_COLOUR), (predicted, PREDICTED_COLOUR)):
            big = cv2.resize(mask.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(big, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, colour, thickness)
        caption = np.full((_CAPTION_HEIGHT, side, 3), 255, dtype=np.uint8)
        text = _caption(stem, f"  Dice {float(dice_score(truth[None], predicted[None])):.2f}", side - 8)
        cv2.putText(caption, text, (4, _CAPTION_HEIGHT - 7), _FONT, _FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.vstack([caption, canvas]))
    gap = np.full((tiles[0].shape[0], _GAP, 3), 255, dtype=np.uint8)
    row: list[np.ndarray] = []
    for i, t in enumerate(tiles):
        if i:
            row.append(gap)
        row.append(t)
    return np.hstack(row)


def preview_png(preview: FoldPreview, *, threshold: float = DEFAULT_THRESHOLD, tile: int = 256) -> bytes:
    """The preview encoded as PNG bytes (what trackers upload)."""
    rgb = render_preview(preview, threshold=threshold, tile=tile)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode the fold preview as PNG")
    return encoded.tobytes()


def write_preview(
    preview: FoldPreview, path: str | Path, *, threshold: float = DEFAULT_THRESHOLD, tile: int = 256
) -> Path:
    """Write the preview PNG to ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(preview_png(preview, threshold=threshold, tile=tile))
    return path
