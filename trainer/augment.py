"""Training-time augmentation of Tzavara & Singstad (MedAI 2021), with albumentations 2.

Each training image, each epoch, gets exactly one of nine augmentations or none, all ten outcomes
equally likely (1/10): random noise, Gaussian blur, rotation, brightness, horizontal flip, vertical
flip, horizontal shift, vertical shift, zoom. Two bugs of the paper's code are not reproduced: its
"vertical shift" shifted horizontally, and its zoom branch could never be drawn.

Image and mask go through the same geometric transform. The mask is resampled with nearest
neighbour, so it stays 0/1 and follows the image pixel for pixel; the photometric augmentations
(noise, blur, brightness) touch the image only.

Geometric transforms fill the area they uncover with 0 (black image, background mask) rather than
reflecting the border. Kvasir-SEG frames already have black corners around the round field of view,
so a black fill looks like what the network sees anyway, and "background" is the honest label for
pixels outside the original frame; reflection would mirror a polyp cut by the border into a second,
symmetric half-polyp labelled as polyp, a shape that does not occur in colonoscopy.

Magnitudes are the module constants below. The three affine augmentations use named subclasses of
``A.Affine`` (:class:`HorizontalShift`, :class:`VerticalShift`, :class:`Zoom`) so that every one of
the ten outcomes has its own class name in albumentations' record of applied transforms
(``A.Compose(..., save_applied_params=True)``) and in ``A.to_dict``.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "AUGMENTATIONS",
    "BLUR_SIGMA_RANGE",
    "BRIGHTNESS_LIMIT",
    "NOISE_STD_RANGE",
    "ROTATION_LIMIT",
    "SHIFT_LIMIT",
    "ZOOM_RANGE",
    "HorizontalShift",
    "VerticalShift",
    "Zoom",
    "augment_batch",
    "build_augmentation",
    "build_transform",
]

#: The ten equally likely outcomes per image and epoch: no augmentation, or one of nine.
AUGMENTATIONS: tuple[str, ...] = (
    "none",
    "noise",
    "blur",
    "rotation",
    "brightness",
    "hflip",
    "vflip",
    "hshift",
    "vshift",
    "zoom",
)

#: Standard deviation of the additive Gaussian noise, as a fraction of 255 (about 5 to 20 grey levels).
NOISE_STD_RANGE: tuple[float, float] = (0.02, 0.08)
#: Sigma of the Gaussian blur in pixels; the kernel size follows from sigma.
BLUR_SIGMA_RANGE: tuple[float, float] = (0.5, 1.5)
#: Largest rotation either way, in degrees.
ROTATION_LIMIT: float = 30.0
#: Largest brightness change either way, as a fraction of 255 (contrast is left alone).
BRIGHTNESS_LIMIT: float = 0.2
#: Largest shift either way, as a fraction of the image side (albumentations truncates to whole pixels).
SHIFT_LIMIT: float = 0.15
#: Zoom-in factor range, same factor for both axes, about the image centre.
ZOOM_RANGE: tuple[float, float] = (1.1, 1.3)

# Uncovered pixels become black in the image and background in the mask (see the module docstring).
_FILL = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
# Images are resampled bilinearly, masks with nearest neighbour so they stay binary.
_INTERPOLATION = {"interpolation": cv2.INTER_LINEAR, "mask_interpolation": cv2.INTER_NEAREST}


class HorizontalShift(A.Affine):
    """``A.Affine`` that translates along x only (named so the applied-transform record tells it apart)."""


class VerticalShift(A.Affine):
    """``A.Affine`` that translates along y only, i.e. moves rows (the paper's version moved columns)."""


class Zoom(A.Affine):
    """``A.Affine`` that scales both axes by one factor about the image centre."""


def build_transform(name: str) -> A.BasicTransform:
    """The augmentation called ``name`` (one of :data:`AUGMENTATIONS`), applied every time (p=1)."""
    if name == "none":
        return A.NoOp(p=1.0)
    if name == "noise":
        return A.GaussNoise(std_range=NOISE_STD_RANGE, p=1.0)
    if name == "blur":
        return A.GaussianBlur(blur_limit=0, sigma_limit=BLUR_SIGMA_RANGE, p=1.0)
    if name == "rotation":
        return A.Rotate(limit=ROTATION_LIMIT, **_INTERPOLATION, **_FILL, p=1.0)
    if name == "brightness":
        return A.RandomBrightnessContrast(brightness_limit=BRIGHTNESS_LIMIT, contrast_limit=0.0, p=1.0)
    if name == "hflip":
        return A.HorizontalFlip(p=1.0)
    if name == "vflip":
        return A.VerticalFlip(p=1.0)
    if name == "hshift":
        return HorizontalShift(
            translate_percent={"x": (-SHIFT_LIMIT, SHIFT_LIMIT), "y": (0.0, 0.0)},
            **_INTERPOLATION,
            **_FILL,
            p=1.0,
        )
    if name == "vshift":
        return VerticalShift(
            translate_percent={"x": (0.0, 0.0), "y": (-SHIFT_LIMIT, SHIFT_LIMIT)},
            **_INTERPOLATION,
            **_FILL,
            p=1.0,
        )
    if name == "zoom":
        return Zoom(scale=ZOOM_RANGE, keep_ratio=True, **_INTERPOLATION, **_FILL, p=1.0)
    raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")


def build_augmentation(seed: int | None, *, save_applied_params: bool = False) -> A.Compose:
    """One of the ten :data:`AUGMENTATIONS` per call, equally likely, drawn from ``seed``.

    Build it once per training run and call it for every image: the same seed gives the same
    sequence of draws (and parameters) over the calls. ``None`` seeds from the operating system.
    With ``save_applied_params`` each result carries ``"applied_transforms"``: ``[(class name,
    parameters)]``, the class names being those of :func:`build_transform`'s transforms.

    Do not wrap the result in another ``A.Compose``: albumentations re-seeds nested transforms from
    the outer Compose's seed, which would undo ``seed``.
    """
    # OneOf normalises its children's p into weights: all p=1 makes the ten outcomes equally likely,
    # and OneOf(p=1) always draws one of them ("none" being one of the ten).
    choice = A.OneOf([build_transform(name) for name in AUGMENTATIONS], p=1.0)
    return A.Compose([choice], p=1.0, seed=seed, save_applied_params=save_applied_params)


def augment_batch(
    transform: A.BasicTransform | A.BaseCompose,
    images: NDArray[np.uint8],
    masks: NDArray[np.uint8],
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Augmented copies of a batch: ``images`` ``(B,S,S,3)`` uint8 and ``masks`` ``(B,S,S,1)`` uint8 0/1.

    Each image draws its own augmentation. The inputs are never written to (they may be read-only
    memmaps of the prepared data set); the results are new arrays of the same shapes and dtype.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (B, S, S, 3), got {images.shape}")
    if masks.ndim != 4 or masks.shape[-1] != 1:
        raise ValueError(f"masks must have shape (B, S, S, 1), got {masks.shape}")
    if images.shape[:3] != masks.shape[:3]:
        raise ValueError(f"images {images.shape} and masks {masks.shape} differ in batch size or image size")
    if images.dtype != np.uint8 or masks.dtype != np.uint8:
        raise ValueError(f"images and masks must be uint8, got {images.dtype} and {masks.dtype}")
    out_images = np.empty(images.shape, dtype=np.uint8)  # plain arrays, even from memmap inputs
    out_masks = np.empty(masks.shape, dtype=np.uint8)
    for i in range(images.shape[0]):
        # Some transforms (NoOp) hand back their input: assigning into fresh arrays copies it, so the
        # results never alias the (possibly memory-mapped) inputs.
        augmented = transform(image=images[i], mask=masks[i])
        out_images[i] = augmented["image"]
        out_masks[i] = augmented["mask"].reshape(masks.shape[1:])
    return out_images, out_masks
