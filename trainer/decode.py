"""Reading one image or mask file: the single decoder training, ``data check``, predict and count use.

A file is read whole, checked for being cut short (libjpeg "recovers" a truncated JPEG with grey
rows and only warns on stderr, where nobody can tie the warning to a file), then decoded. A mask is
decoded at its own bit depth and turned into 0/1 by :func:`binary_mask`, which accepts what masks
in this field look like and refuses, naming the file, what would otherwise be read as nonsense:

- accepted: {0, 1} and {0, max} masks of any depth (8/16-bit PNG or TIFF, float TIFF); 8-bit masks
  with JPEG compression noise (every pixel within 30 grey levels of black or white, as Kvasir-SEG's),
  thresholded at half; 3-channel masks whose channels are equal (up to that noise for 8-bit); an
  alpha channel is ignored.
- refused: pixels at mid grey (soft edges, a gradient, noise, a photo: ``data check`` has always
  called them "not binary"), label maps with more than one foreground value ({0, 1, 2},
  {0, 128, 255}), masks whose colour channels differ.

Reading 16-bit masks through ``IMREAD_GRAYSCALE`` scaled 0/255 and 0/1 masks to all zeros: a data
set of empty masks that trained to a high Dice. That is why masks keep their depth here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from trainer.errors import DataError

#: Grey level (of 255) at which 8-bit masks with compression noise are binarised.
MASK_THRESHOLD = 128
#: Kvasir-SEG masks are JPEGs of 0/255 masks: compression noise keeps every pixel within 30 grey
#: levels of 0 or 255. Anything between is a soft or anti-aliased edge, or not a mask at all.
BACKGROUND_MAX = 30
FOREGROUND_MIN = 225
#: A mask with at most this many distinct values and one of them at mid grey is a label map
#: (lossless, few classes); JPEG noise or soft edges give many more.
_LABEL_MAP_MAX_VALUES = 16

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BadFileError(DataError):
    """An image or mask file that cannot be used: which file, what is wrong, how to fix it."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = path
        self.problem = problem
        self.fix = fix


class NotAMaskError(BadFileError):
    """A file that decodes but is not a binary mask (a label map, a photo, a gradient, colour)."""


def replace_fix(kind: str) -> str:
    return f"replace the {kind} with a complete copy (re-download or re-export it)"


def truncation_problem(data: bytes) -> str | None:
    """Why the file is cut short, judged from its format's end marker or declared size; else None."""
    if data.startswith(_JPEG_MAGIC):
        # Some writers pad after the end-of-image marker with zero bytes; that is harmless.
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            return f"truncated JPEG: no end-of-image marker (FFD9) at the end of its {len(data)} bytes"
    elif data.startswith(_PNG_MAGIC):
        if b"IEND" not in data[-64:]:
            return f"truncated PNG: no IEND chunk at the end of its {len(data)} bytes"
    elif data.startswith(b"BM") and len(data) >= 6:
        (declared,) = struct.unpack("<I", data[2:6])
        if declared > len(data):
            return f"truncated BMP: {len(data)} bytes but its header declares {declared}"
    elif data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        (declared,) = struct.unpack("<I", data[4:8])
        if declared + 8 > len(data):
            return f"truncated WebP: {len(data)} bytes but its header declares {declared + 8}"
    return None


def read_checked_bytes(path: Path, kind: str) -> bytes:
    """The file's bytes, or BadFileError when it cannot be read, is empty or is cut short."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadFileError(path, f"cannot be read: {exc.strerror or exc}", replace_fix(kind)) from None
    if not data:
        raise BadFileError(path, "is empty (0 bytes)", replace_fix(kind))
    truncated = truncation_problem(data)
    if truncated:
        raise BadFileError(path, truncated, replace_fix(kind))
    return data


def decode_image(data: bytes, path: Path) -> np.ndarray:
    """An RGB uint8 image (H, W, 3). OpenCV decodes to BGR; encoders were trained on RGB."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadFileError(path, f"cannot be decoded as an image ({len(data)} bytes)", replace_fix("image"))
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes, path: Path) -> np.ndarray:
    """The mask's pixels at their own depth, (H, W) or (H, W, 3).

    ANYDEPTH|ANYCOLOR rather than UNCHANGED: the same EXIF orientation as its image (UNCHANGED
    ignores it) and no alpha channel, which is not part of a mask.
    """
    import cv2

    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if mask is None:
        raise BadFileError(path, f"cannot be decoded as an image ({len(data)} bytes)", replace_fix("mask"))
    return mask


#: EXIF orientations (tag 274) and what OpenCV's decoder does to such a file's pixels.
_ORIENTATIONS = {
    1: "stored upright", 2: "mirrored", 3: "turned 180 degrees", 4: "flipped upside down", 5: "transposed",
    6: "turned 90 degrees clockwise", 7: "transversed", 8: "turned 90 degrees anticlockwise",
}  # fmt: skip


def exif_orientation(path: Path) -> int:
    """The file's EXIF orientation (1-8; 1 when it has none or cannot be read), as OpenCV applies it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            value = image.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return 1
    return value if value in _ORIENTATIONS else 1


def orientation_mismatch(image_path: Path, mask_path: Path) -> str | None:
    """Why an image and its mask would not line up once decoded (different EXIF orientations), or None.

    Images and masks are both decoded turned as their EXIF orientation says; a photo carrying
    "turned 90 degrees" beside a PNG mask without the tag is then compared rotated against its
    mask, which a square pair does without any size check noticing.
    """
    image, mask = exif_orientation(image_path), exif_orientation(mask_path)
    if image == mask:
        return None
    return (
        f"{image_path} has EXIF orientation {image} ({_ORIENTATIONS[image]}) but its mask {mask_path} has "
        f"{mask} ({_ORIENTATIONS[mask]}): both are decoded turned as their tag says, so they would not line up; "
        "save the image upright without the tag (e.g. `mogrify -auto-orient`) or give both the same orientation"
    )


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) from a complete, decodable file."""
    return decode_image(read_checked_bytes(path, "image"), path)


def read_mask(path: Path) -> np.ndarray:
    """A 0/1 uint8 mask (H, W) from a complete file that is a binary mask (see the module docstring)."""
    return binary_mask(decode_mask(read_checked_bytes(path, "mask"), path), path)


_BINARY_FIX = "export the mask as black background and white object (0/255 or 0/1), without soft edges"


def binary_mask(raw: np.ndarray, path: Path) -> np.ndarray:
    """0/1 uint8 (H, W) from a decoded mask, or BadFileError saying why it is not a binary mask."""
    if raw.ndim == 3:
        raw = _one_channel(raw, path)
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise NotAMaskError(path, "holds NaN or infinite values", _BINARY_FIX)
    values = _distinct_values(raw)
    if values.size <= 2 and (values[0] == 0 or values.size == 1):
        # {0}, {0, 1}, {0, max} at any depth (and a constant non-zero mask: all object).
        return (raw > 0).astype(np.uint8)
    full = _full_scale(raw)
    low, high = full * BACKGROUND_MAX / 255, full * FOREGROUND_MIN / 255
    between = int(np.count_nonzero((raw > low) & (raw < high)))
    if values.size <= _LABEL_MAP_MAX_VALUES and (between or values.max() <= low):
        shown = ", ".join(f"{v:g}" for v in values.tolist())
        raise NotAMaskError(
            path,
            f"is a label map, not a binary mask: it holds the values {shown} (more than one object value)",
            "export one binary mask (0 for background, 255 or 1 for the object), e.g. merge the labels you "
            "segment into one",
        )
    if between:
        share = 100.0 * between / raw.size
        raise NotAMaskError(
            path,
            f"is not binary: {between} pixels ({share:.1f}%) are between {BACKGROUND_MAX + 1} and "
            f"{FOREGROUND_MIN - 1} of 255 (masks must be 0/255, or 0/1; soft edges, a gradient or a photo?)",
            _BINARY_FIX,
        )
    if values.max() <= low:
        top = f"{values.max():g}"
        raise NotAMaskError(
            path,
            f"holds values 0..{top}: neither a 0/1 nor a 0/max mask (a label map?)",
            "export a binary mask: 0 for background and 255 (or 1) for the object",
        )
    # Compression noise around black and white: threshold at half, as Kvasir-SEG's JPEG masks need.
    return (raw >= full * MASK_THRESHOLD / 255).astype(np.uint8)


def _distinct_values(raw: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a histogram for 8/16-bit (np.unique sorts: 10x slower on large masks)."""
    if raw.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(raw.ravel(), minlength=1)).astype(raw.dtype)
    return np.unique(raw)


def _full_scale(raw: np.ndarray) -> float:
    """The value that means "white": the integer type's maximum, 1.0 (or the maximum) for floats."""
    if np.issubdtype(raw.dtype, np.integer):
        return float(np.iinfo(raw.dtype).max)
    top = float(raw.max())
    return 1.0 if top <= 1.0 else top


def _one_channel(raw: np.ndarray, path: Path) -> np.ndarray:
    """One channel from a colour-encoded grey mask; BadFileError when the channels differ."""
    channels = raw[..., :3]
    if channels.shape[-1] == 1:
        return np.ascontiguousarray(channels[..., 0])
    first, *others = (channels[..., i] for i in range(channels.shape[-1]))
    if all(np.array_equal(first, other) for other in others):
        return np.ascontiguousarray(first)
    wide = [c.astype(np.float64) for c in (first, *others)]
    spread = max(float(np.abs(x - y).max()) for x in wide for y in wide)
    # JPEG's chroma noise may make the channels of an 8-bit grey mask differ by a few levels.
    if raw.dtype != np.uint8 or spread > BACKGROUND_MAX:
        raise NotAMaskError(
            path,
            f"has colour channels that differ (by up to {spread:g}): a colour image, not a grey mask",
            "export the mask in greyscale (0 for background, 255 or 1 for the object)",
        )
    import cv2

    return np.asarray(cv2.cvtColor(channels, cv2.COLOR_BGR2GRAY))
