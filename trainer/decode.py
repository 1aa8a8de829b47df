"""Reading one image or mask file: the single decoder training, ``data check``, predict and count use.

A file is read whole, checked for being cut short (libjpeg "recovers" a truncated JPEG with grey
rows and only warns on stderr, where nobody can tie the warning to a file), then decoded. A mask is
decoded at its own bit depth and turned into 0/1 by :func:`binary_mask`, which accepts what masks
in this field look like and refuses, naming the file, what would otherwise be read as nonsense:

- accepted: {0, 1} and {0, max} masks of any depth (8/16-bit PNG or TIFF, float TIFF); 8-bit masks
  with JPEG compression noise (every pixel within 30 grey levels of black or white, as Kvasir-SEG's),
  thresholded at half; masks with anti-aliased edges (a thin band of grey between object and
  background, see :data:`SOFT_EDGE_MAX_SHARE`), thresholded at half and counted in a
  :class:`SoftEdges` tally, which the caller warns about once; 3-channel masks whose channels are
  equal (up to that noise for 8-bit); an alpha channel is ignored.
- refused: many pixels at mid grey (a gradient, noise, a photo) or a wide band of them (a blurred
  mask, a probability map): "not binary"; label maps with more than one foreground value
  ({0, 1, 2}, {0, 128, 255}); 0/1 masks saved as JPEG (compression moved their edges); masks whose
  colour channels differ.

Reading 16-bit masks through ``IMREAD_GRAYSCALE`` scaled 0/255 and 0/1 masks to all zeros: a data
set of empty masks that trained to a high Dice. That is why masks keep their depth here.
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segsweep.base.errors import DataError

#: Grey level (of 255) at which 8-bit masks with compression noise are binarised.
MASK_THRESHOLD = 128
#: Kvasir-SEG masks are JPEGs of 0/255 masks: compression noise keeps every pixel within 30 grey
#: levels of 0 or 255. Anything between is a soft or anti-aliased edge, or not a mask at all.
BACKGROUND_MAX = 30
FOREGROUND_MIN = 225
#: A mask with at most this many distinct values and one of them at mid grey is a label map
#: (lossless, few classes); JPEG noise or soft edges give many more.
_LABEL_MAP_MAX_VALUES = 16
#: Anti-aliasing leaves a band of grey levels (BACKGROUND_MAX, FOREGROUND_MIN) about one pixel wide
#: between object and background; such a mask is binarised at MASK_THRESHOLD with one warning. It
#: is told from what must be refused by two measures of those grey pixels: their share of the mask,
#: and the band's width (grey pixels per pixel of the binarised mask's outline). Measured
#: (/tmp script of issue 21, case 17; share min / median / max, width min / median / max in px):
#:   Kvasir-SEG JPEG masks (1000)                 0 / 0 / 0                 0 / 0 / 0
#:   cv2 LINE_AA ellipses, polygons 128-1024 px   0.033% / 0.35% / 2.4%     0.42 / 0.66 / 0.93
#:   LINE_AA one polyp, 384x288 (400)             0.11% / 0.24% / 0.40%     0.51 / 0.67 / 0.81
#:   Kvasir masks binarised, INTER_AREA 1/2..1/8  0.076% / 0.6% / 3.8%      0.38 / 0.59 / 0.92
#:   ... INTER_AREA to 64x64 / 256x256            0.073% / 0.6% / 4.3%      0.46 / 0.61 / 0.83
#:   ... INTER_LINEAR to 352x352                  0.034% / 0.20% / 0.56%    0.14 / 0.43 / 0.60
#:   refused: Gaussian-blurred masks, sigma 2-10  0.22% / 2.5% / 15%        3.4 / 9.3 / 23
#:   refused: probability maps sigmoid(d/1.5..3)  0.26% / 1.8% / 7.3%       4.1 / 6.6 / 9.6
#:   refused: linear gradients                    69% / 77% / 79%           16 / 77 / 233
#:   refused: uniform noise                       75% / 76% / 77%           1.5 / 1.5 / 1.6
#:   refused: photos (Kvasir-SEG images)          49% / 80% / 93%           7.7 / 24 / 100
#: Share alone cannot tell a lightly blurred mask (0.22%) from an anti-aliased 64 px one (4.3%);
#: width can (at most 0.93 against at least 3.4), and share then keeps out noise (width 1.5). The
#: bounds sit about 2x beyond the anti-aliased maxima and 2x (width), 5x (share) inside the refused.
SOFT_EDGE_MAX_SHARE = 0.10
SOFT_EDGE_MAX_WIDTH = 2.0
#: Anti-aliasing makes many grey levels; a mask with this many or fewer is a label map (or a
#: boundary class) whatever its share: {0, 128, 255}.
_LABEL_MAP_MAX_GREY_LEVELS = 2

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


class SoftEdges:
    """The masks binarised despite anti-aliased edges, so that one warning covers them all.

    One tally per command (training's preparation, ``data check``, ``predict``, ``count``); the
    mask reader adds to it from any thread.
    """

    def __init__(self, found: Sequence[tuple[Path, float]] = ()) -> None:
        self.found: list[tuple[Path, float]] = list(found)  # (mask file, share of its pixels that were grey)
        self._lock = threading.Lock()

    def add(self, path: Path, share: float) -> None:
        with self._lock:
            self.found.append((path, share))

    def summary(self) -> str | None:
        """One sentence: how many masks, the largest share of grey pixels and its file; None if none."""
        if not self.found:
            return None
        path, share = max(self.found, key=lambda found: found[1])
        return (
            f"{len(self.found)} mask(s) have anti-aliased edges, binarised at {MASK_THRESHOLD} of 255: at most "
            f"{share:.2%} of a mask's pixels are between {BACKGROUND_MAX + 1} and {FOREGROUND_MIN - 1} "
            f"(e.g. {path})"
        )

    def warn(self) -> None:
        summary = self.summary()
        if summary:
            print(f"segsweep: warning: {summary}; {SOFT_EDGE_FIX}", file=sys.stderr)


SOFT_EDGE_FIX = "export masks without anti-aliasing (0/255 or 0/1) to silence this"


def read_mask(path: Path, soft_edges: SoftEdges | None = None) -> np.ndarray:
    """A 0/1 uint8 mask (H, W) from a complete file that is a binary mask (see the module docstring).

    A mask with anti-aliased edges is added to ``soft_edges`` for the caller's one warning; without
    a tally it is warned about on its own, so binarising one is never silent.
    """
    data = read_checked_bytes(path, "mask")
    return binary_mask(decode_mask(data, path), path, soft_edges, from_jpeg=data.startswith(_JPEG_MAGIC))


_BINARY_FIX = "export the mask as black background and white object (0/255 or 0/1), without soft edges"


def binary_mask(
    raw: np.ndarray, path: Path, soft_edges: SoftEdges | None = None, *, from_jpeg: bool = False
) -> np.ndarray:
    """0/1 uint8 (H, W) from a decoded mask, or BadFileError saying why it is not a binary mask."""
    if raw.ndim == 3:
        raw = _one_channel(raw, path)
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise NotAMaskError(path, "holds NaN or infinite values", _BINARY_FIX)
    values = _distinct_values(raw)
    full = _full_scale(raw)
    low, high = full * BACKGROUND_MAX / 255, full * FOREGROUND_MIN / 255
    if from_jpeg and values.size > 1 and values.max() <= low:
        # A 0/1 mask has a step of one grey level, which JPEG's quantisation all but erases: measured on
        # Kvasir-SEG's masks saved 0/1, reading values >= 1 as object gives IoU 0.89-0.99 with the true
        # mask at quality 75 and an empty mask at quality 50. Reading it would score against moved edges.
        raise NotAMaskError(
            path,
            f"is a 0/1 mask saved as JPEG (values 0..{values.max():g}), whose compression moved its edges "
            "(or a label map saved as JPEG)",
            "save the masks as PNG (lossless) from their source, or as 0/255 if they must be JPEG; "
            "converting this JPEG cannot restore its edges",
        )
    if values.size <= 2 and (values[0] == 0 or values.size == 1):
        # {0}, {0, 1}, {0, max} at any depth (and a constant non-zero mask: all object).
        return (raw > 0).astype(np.uint8)
    grey = (raw > low) & (raw < high)
    between = int(np.count_nonzero(grey))
    share = between / raw.size
    binary = (raw >= full * MASK_THRESHOLD / 255).astype(np.uint8)
    if between:
        width = between / max(_outline_length(binary), 1)
        grey_levels = int(np.count_nonzero((values > low) & (values < high)))
        thin = share <= SOFT_EDGE_MAX_SHARE and width <= SOFT_EDGE_MAX_WIDTH
        if thin and grey_levels > _LABEL_MAP_MAX_GREY_LEVELS:
            if soft_edges is None:
                SoftEdges([(path, share)]).warn()
            else:
                soft_edges.add(path, share)
            return binary
    if values.size <= _LABEL_MAP_MAX_VALUES and (between or values.max() <= low):
        shown = ", ".join(f"{v:g}" for v in values.tolist())
        raise NotAMaskError(
            path,
            f"is a label map, not a binary mask: it holds the values {shown} (more than one object value)",
            "export one binary mask (0 for background, 255 or 1 for the object), e.g. merge the labels you "
            "segment into one",
        )
    if between and share > SOFT_EDGE_MAX_SHARE:
        raise NotAMaskError(
            path,
            f"is not binary: {share:.1%} of its pixels are between {BACKGROUND_MAX + 1} and {FOREGROUND_MIN - 1} "
            f"of 255, more than the {SOFT_EDGE_MAX_SHARE:.0%} anti-aliased edges leave: a gradient, noise, a photo, "
            "a blurred mask or a probability map, not a mask",
            _BINARY_FIX,
        )
    if between:  # a share anti-aliasing could leave, but in a band too wide for it
        raise NotAMaskError(
            path,
            f"is not binary: its edges are soft, a band of grey {width:.1f} pixels wide on average where "
            f"anti-aliasing leaves at most {SOFT_EDGE_MAX_WIDTH:g}: a blurred mask or a probability map",
            "export a binary mask (0/255 or 0/1); threshold a probability map at your cut-off first",
        )
    if values.max() <= low:
        top = f"{values.max():g}"
        raise NotAMaskError(
            path,
            f"holds values 0..{top}: neither a 0/1 nor a 0/max mask (a label map?)",
            "export a binary mask: 0 for background and 255 (or 1) for the object",
        )
    # Compression noise around black and white: threshold at half, as Kvasir-SEG's JPEG masks need.
    return binary


def _outline_length(binary: np.ndarray) -> int:
    """About the length in pixels of the outline of a 0/1 mask's objects (pixels next to the other side)."""
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    # Dilated and eroded differ on the pixels on either side of the outline: two per pixel of length.
    return int(np.count_nonzero(cv2.dilate(binary, kernel) != cv2.erode(binary, kernel))) // 2


def not_masks_line(bad: Sequence[BadFileError], total: int, folder: Path) -> str:
    """What is wrong with a folder's masks first, then how many and one example: for predict and count."""
    first = bad[0]
    return (
        f"{len(bad)} of the {total} masks in {folder} cannot be used as binary masks, e.g. {first.path}: "
        f"{first.problem}; {first.fix}"
    )


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
