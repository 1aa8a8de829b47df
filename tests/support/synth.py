"""Small synthetic data sets in the layouts segsweep reads (Kvasir-SEG, Kvasir-Instrument).

Each image is a dim reddish background with one or two bright ellipses ("polyps"); the mask marks
the ellipses. Sizes are small (64x64 by default) so tests stay fast.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_pair(rng: np.random.Generator, size: int = 64, n_objects: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its 0/255 uint8 mask."""
    image = np.empty((size, size, 3), np.uint8)
    image[..., 0] = rng.integers(90, 140)  # R
    image[..., 1] = rng.integers(30, 60)  # G
    image[..., 2] = rng.integers(30, 60)  # B
    image = np.clip(image.astype(int) + rng.integers(-15, 15, image.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(n_objects):
        center = (int(rng.integers(size // 5, 4 * size // 5)), int(rng.integers(size // 5, 4 * size // 5)))
        axes = (int(rng.integers(size // 10, size // 4)), int(rng.integers(size // 10, size // 4)))
        cv2.ellipse(mask, center, axes, float(rng.integers(0, 180)), 0, 360, 255, -1)
    image[mask > 0] = (230, 170, 160)
    return image, mask


def make_dataset(
    root: Path,
    n: int = 12,
    *,
    layout: str = "kvasir-seg",
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``n`` pairs under ``root`` in the given layout and return ``root``.

    kvasir-seg: images/*.jpg, masks/*.jpg (JPEG masks, compression noise), splits/train.txt, val.txt.
    kvasir-instrument: images/*.jpg, masks/*.png, train.txt and test.txt beside them.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    stems = [f"case{i:03d}" for i in range(n)]
    for i, stem in enumerate(stems):
        image, mask = make_pair(rng, size, n_objects=1 + (i % 3 == 2))
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if layout == "kvasir-seg":
            cv2.imwrite(str(root / "masks" / f"{stem}.jpg"), np.dstack([mask] * 3))
        elif layout == "kvasir-instrument":
            cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
        else:
            raise ValueError(layout)
    n_val = max(1, n // 4)
    train, val = stems[:-n_val], stems[-n_val:]
    if layout == "kvasir-seg":
        (root / "splits").mkdir(exist_ok=True)
        (root / "splits" / "train.txt").write_text("\n".join(train) + "\n")
        (root / "splits" / "val.txt").write_text("\n".join(val) + "\n")
    else:
        (root / "train.txt").write_text("\n".join(train) + "\n")
        (root / "test.txt").write_text("\n".join(val) + "\n")
    return root


def make_exif_turned_pair(root: Path, stem: str = "a") -> None:
    """One square pair under ``root``: images/STEM.jpg tagged EXIF orientation 6 (turned 90 degrees
    clockwise; OpenCV decodes it turned) beside masks/STEM.png without the tag (decoded as stored)."""
    from PIL import Image

    image, mask = make_pair(np.random.default_rng(1))
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(image).save(root / "images" / f"{stem}.jpg", exif=exif.tobytes(), quality=95)
    cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)


def anti_aliased(mask: np.ndarray) -> np.ndarray:
    """A 0/1 mask as an anti-aliasing export leaves it: 0/255 with a band of grey one pixel wide at its edges.

    Drawn at 4x and shrunk with area interpolation, as a downscaled or anti-aliased mask is; a few
    percent of a 64x64 mask's pixels end up grey, where ``binary_mask`` refused any.
    """
    size = (mask.shape[1], mask.shape[0])
    large = cv2.resize(mask.astype(np.uint8) * 255, (size[0] * 4, size[1] * 4), interpolation=cv2.INTER_NEAREST)
    large = cv2.GaussianBlur(large, (0, 0), 0.8)  # sub-pixel edge positions, as drawing at 4x gives
    return np.asarray(cv2.resize(large, size, interpolation=cv2.INTER_AREA))
