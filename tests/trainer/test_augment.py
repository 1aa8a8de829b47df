"""The paper's ten-way augmentation: each outcome on its own, the draw, seeding, and input safety."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import albumentations as A
import numpy as np
import pytest

from trainer.augment import (
    AUGMENTATIONS,
    BRIGHTNESS_LIMIT,
    SHIFT_LIMIT,
    ZOOM_RANGE,
    augment_batch,
    build_augmentation,
    build_transform,
)

SIZE = 64
GEOMETRIC = ("rotation", "hflip", "vflip", "hshift", "vshift", "zoom")
PHOTOMETRIC = ("noise", "blur", "brightness")
EXACT = ("hflip", "vflip", "hshift", "vshift")  # whole-pixel moves: image and mask agree exactly


def coordinate_image() -> np.ndarray:
    """(1,S,S,3): red codes the row, green the column (never 0), blue is constant; fill shows as 0."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    image = np.stack([2 + 3 * rows, 2 + 3 * cols, np.full_like(rows, 200)], axis=-1)
    return image.astype(np.uint8)[None]


def square_pair() -> tuple[np.ndarray, np.ndarray]:
    """(1,S,S,3) dark image with a bright off-centre square, and its (1,S,S,1) 0/1 mask."""
    image = np.full((1, SIZE, SIZE, 3), 30, dtype=np.uint8)
    mask = np.zeros((1, SIZE, SIZE, 1), dtype=np.uint8)
    image[0, 10:30, 34:54] = 230
    mask[0, 10:30, 34:54] = 1
    return image, mask


def seeded(name: str, seed: int = 0) -> A.Compose:
    return A.Compose([build_transform(name)], seed=seed)


def source_coordinates(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel of a coordinate_image: source row, source column, and whether it was filled."""
    filled = (image[..., 2] == 0) & (image[..., 0] == 0) & (image[..., 1] == 0)
    return (image[..., 0].astype(int) - 2) // 3, (image[..., 1].astype(int) - 2) // 3, filled


@pytest.mark.parametrize(("name", "axis"), [("vshift", 0), ("hshift", 1)])
def test_shift_moves_only_along_its_axis(name: str, axis: int) -> None:
    transform = seeded(name)
    image = coordinate_image()
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    shifts = set()
    for _ in range(30):
        out, _ = augment_batch(transform, image, np.zeros((1, SIZE, SIZE, 1), np.uint8))
        src_row, src_col, filled = source_coordinates(out[0])
        kept = ~filled
        moved, fixed = (src_row - rows, src_col - cols) if axis == 0 else (src_col - cols, src_row - rows)
        assert np.all(fixed[kept] == 0), f"{name} moved pixels across its axis"
        offsets = np.unique(moved[kept])
        assert len(offsets) == 1, f"{name} is not one rigid shift: {offsets}"
        shift = -int(offsets[0])
        assert abs(shift) <= SHIFT_LIMIT * SIZE
        # The uncovered band is whole rows (vshift) or whole columns (hshift), |shift| of them.
        assert filled.sum() == abs(shift) * SIZE
        assert np.all(filled.all(axis=1 - axis) == filled.any(axis=1 - axis))
        shifts.add(shift)
    assert any(s > 0 for s in shifts) and any(s < 0 for s in shifts)


@pytest.mark.parametrize(("name", "flip"), [("hflip", np.s_[:, :, ::-1]), ("vflip", np.s_[:, ::-1, :])])
def test_flips_are_exact(name: str, flip: tuple[slice, ...]) -> None:
    image, mask = square_pair()
    image = image + coordinate_image() // 8  # something that is not symmetric either way
    out_image, out_mask = augment_batch(build_transform(name), image, mask)
    np.testing.assert_array_equal(out_image, image[flip])
    np.testing.assert_array_equal(out_mask, mask[flip])


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_transforms_keep_mask_binary_and_aligned(name: str) -> None:
    image, mask = square_pair()
    transform = seeded(name, seed=1)
    for _ in range(10):
        out_image, out_mask = augment_batch(transform, image, mask)
        assert set(np.unique(out_mask)) <= {0, 1}
        assert out_mask.any()
        bright = out_image[..., :1] > 128
        if name in EXACT:
            np.testing.assert_array_equal(bright, out_mask.astype(bool))
        else:  # resampled: bilinear image edges vs nearest-neighbour mask edges may differ by a pixel
            overlap = 2 * np.sum(bright & (out_mask == 1)) / (bright.sum() + out_mask.sum())
            assert overlap > 0.9


def test_zoom_enlarges_and_rotation_keeps_the_area() -> None:
    image, mask = square_pair()
    area = mask.sum()
    zoom, rotation = seeded("zoom"), seeded("rotation")
    for _ in range(10):
        zoomed = augment_batch(zoom, image, mask)[1].sum() / area
        assert ZOOM_RANGE[0] ** 2 * 0.9 <= zoomed <= ZOOM_RANGE[1] ** 2 * 1.1
        rotated = augment_batch(rotation, image, mask)[1].sum() / area
        assert 0.9 <= rotated <= 1.1


@pytest.mark.parametrize("name", (*PHOTOMETRIC, "none"))
def test_photometric_transforms_leave_the_mask_alone(name: str) -> None:
    image, mask = square_pair()
    image = image + coordinate_image() // 8  # texture, so that blur changes something
    out_image, out_mask = augment_batch(build_transform(name), image, mask)
    np.testing.assert_array_equal(out_mask, mask)
    if name == "none":
        np.testing.assert_array_equal(out_image, image)
    else:
        assert not np.array_equal(out_image, image)


def test_brightness_shifts_all_pixels_alike_within_the_limit() -> None:
    image = np.full((1, SIZE, SIZE, 3), 128, dtype=np.uint8)
    out, _ = augment_batch(build_transform("brightness"), image, np.zeros((1, SIZE, SIZE, 1), np.uint8))
    change = out.astype(int) - 128
    assert len(np.unique(change)) == 1
    assert abs(change.flat[0]) <= BRIGHTNESS_LIMIT * 255 + 1


def test_each_transform_has_its_own_class_name() -> None:
    names = {type(build_transform(name)).__name__ for name in AUGMENTATIONS}
    assert len(names) == len(AUGMENTATIONS)


def test_unknown_augmentation_is_refused() -> None:
    with pytest.raises(ValueError, match="zoom"):
        build_transform("shear")


def test_all_ten_outcomes_are_drawn_about_equally_often() -> None:
    by_class = {type(build_transform(name)).__name__: name for name in AUGMENTATIONS}
    augmentation = build_augmentation(seed=0, save_applied_params=True)
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16, 1), dtype=np.uint8)
    draws = 2000
    counts: Counter[str] = Counter()
    for _ in range(draws):
        applied = augmentation(image=image, mask=mask)["applied_transforms"]
        assert len(applied) == 1, "exactly one augmentation (or none) per image"
        counts[by_class[applied[0][0]]] += 1
    assert set(counts) == set(AUGMENTATIONS)  # zoom and "none" included
    expected = draws / len(AUGMENTATIONS)
    chi_square = sum((counts[name] - expected) ** 2 / expected for name in AUGMENTATIONS)
    assert chi_square < 27.88, counts  # 9 degrees of freedom, p = 0.001


def test_same_seed_same_augmentations() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    masks = (images[..., :1] > 128).astype(np.uint8)
    first, second, other = build_augmentation(3), build_augmentation(3), build_augmentation(4)
    differs = False
    for _ in range(5):
        a_images, a_masks = augment_batch(first, images, masks)
        b_images, b_masks = augment_batch(second, images, masks)
        c_images, _ = augment_batch(other, images, masks)
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_masks, b_masks)
        differs |= not np.array_equal(a_images, c_images)
    assert differs


def test_memory_mapped_inputs_are_never_written(tmp_path: Path) -> None:
    image, mask = square_pair()
    image = np.repeat(image + coordinate_image() // 8, 4, axis=0)
    mask = np.repeat(mask, 4, axis=0)
    np.save(tmp_path / "images.npy", image)
    np.save(tmp_path / "masks.npy", mask)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    images = np.load(tmp_path / "images.npy", mmap_mode="r")
    masks = np.load(tmp_path / "masks.npy", mmap_mode="r")
    for transform in [*map(build_transform, AUGMENTATIONS), build_augmentation(0)]:
        out_images, out_masks = augment_batch(transform, images, masks)
        assert out_images.shape == images.shape and out_images.dtype == np.uint8
        assert out_masks.shape == masks.shape and out_masks.dtype == np.uint8
        assert not np.shares_memory(out_images, images) and not np.shares_memory(out_masks, masks)
        assert type(out_images) is np.ndarray and out_images.flags.writeable
    np.testing.assert_array_equal(images, image)
    np.testing.assert_array_equal(masks, mask)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert after == before


@pytest.mark.parametrize(
    ("images", "masks", "message"),
    [
        (np.zeros((SIZE, SIZE, 3), np.uint8), np.zeros((SIZE, SIZE, 1), np.uint8), "images must have shape"),
        (np.zeros((1, SIZE, SIZE, 3), np.uint8), np.zeros((1, SIZE, SIZE), np.uint8), "masks must have"),
        (np.zeros((2, SIZE, SIZE, 3), np.uint8), np.zeros((1, SIZE, SIZE, 1), np.uint8), "differ"),
        (np.zeros((1, SIZE, SIZE, 3), np.float32), np.zeros((1, SIZE, SIZE, 1), np.uint8), "uint8"),
    ],
)
def test_bad_batches_raise_value_error(images: np.ndarray, masks: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        augment_batch(build_transform("none"), images, masks)
