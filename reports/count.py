"""The polyp counter: external contours of a binarised mask, without the specks.

A mask is read by the one mask reader (:func:`trainer.data.read_mask`: any bit depth, 0/255 with
JPEG noise at 128, 0/1 or 0/max as is; a file that is not a binary mask is refused, not counted),
its outermost contours found with OpenCV (``RETR_EXTERNAL``: a region inside another's hole is part
of the outer object), and contours whose filled area is below ``min_area`` (a fraction of the image's
area) are dropped as specks. Each object is reported with its filled area, in pixels and as the fraction
of the image's area that ``min_area`` is given in, and its bounding box.

Measured on the 1000 true masks of Kvasir-SEG (``python -m reports.count --measure DATA``, 6 s):
the objects' areas fall into two groups with nothing between them: 143 JPEG specks of at most
5.2e-6 of the image (a few pixels, left by binarising at 128) and the drawn polyps, the smallest
1.68e-3. Any threshold in that gap counts the same; the default 5e-4 sits 100x above the specks and
3x below the smallest polyp. At it, the count equals

- the number of raw 8-connected regions (``cv2.connectedComponents``) for 857/1000 masks: the other
  143 are exactly the masks with specks;
- the number of 8-connected regions of at least the same area for 1000/1000;
- the number of boxes in Kvasir-SEG's ``kavsir_bboxes.json`` for 992/1000 (that file boxes a few
  border slivers of under 2e-3 of the image as polyps of their own; at min_area 0 it is 859/1000).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segsweep.base.errors import DataError, SegsweepError
from trainer.data import IMAGE_EXTENSIONS, hidden_files_warning, hidden_image_files, nested_image_files, read_mask
from trainer.decode import NotAMaskError, SoftEdges, not_masks_line

#: Smallest object kept, as a fraction of the image's area. Chosen on Kvasir-SEG's true masks (see the
#: module docstring): it removes JPEG specks and one-pixel slivers and keeps every polyp a person drew.
DEFAULT_MIN_AREA = 0.0005


@dataclass(frozen=True)
class CountedObject:
    """One counted object: filled area in pixels and bounding box (x, y, width, height)."""

    area: int
    x: int
    y: int
    width: int
    height: int


def _external_objects(mask: np.ndarray, min_area: float) -> list[tuple[np.ndarray, CountedObject]]:
    """The external contours of a mask whose filled area reaches ``min_area``, with their objects."""
    import cv2

    if mask.ndim == 3:
        mask = mask[..., 0]
    binary = (mask > 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    threshold = min_area * binary.shape[0] * binary.shape[1]
    found = []
    for contour in contours:
        x, y, width, height = (int(v) for v in cv2.boundingRect(contour))
        # Filled pixel area, not cv2.contourArea: the polygon through boundary pixel centres gives a
        # one-pixel speck an area of 0 and underestimates every object by half its perimeter.
        canvas = np.zeros((height, width), np.uint8)
        cv2.drawContours(canvas, [contour], -1, 1, thickness=cv2.FILLED, offset=(-x, -y))
        area = int(canvas.sum())
        if area >= threshold and area > 0:
            found.append((contour, CountedObject(area, x, y, width, height)))
    return found


def count_objects(mask: np.ndarray, min_area: float = DEFAULT_MIN_AREA) -> list[CountedObject]:
    """The objects of a binary mask (any non-zero pixel is foreground), largest first.

    ``min_area`` is a fraction of the mask's area (``0.0005`` keeps objects of at least 0.05% of
    the image). Area counts the pixels inside the external contour, holes included.
    """
    objects = [obj for _, obj in _external_objects(mask, min_area)]
    objects.sort(key=lambda o: (-o.area, o.y, o.x))
    return objects


#: ``segsweep predict --postprocess`` options, applied in this order.
POSTPROCESS_OPTIONS = ("min-area", "fill-holes")


def postprocess_mask(mask: np.ndarray, options: Sequence[str], min_area: float = DEFAULT_MIN_AREA) -> np.ndarray:
    """A 0/1 uint8 mask after the given post-processing options (:data:`POSTPROCESS_OPTIONS`).

    ``min-area`` removes the objects the counter would not count (below ``min_area``, by the same
    external contours and filled areas); ``fill-holes`` fills every hole of the objects kept (the
    inside of their external contours).
    """
    import cv2

    unknown = sorted(set(options) - set(POSTPROCESS_OPTIONS))
    if unknown:
        raise SegsweepError(
            f"unknown --postprocess option(s) {', '.join(unknown)}; choose from {', '.join(POSTPROCESS_OPTIONS)}"
        )
    binary = (mask[..., 0] if mask.ndim == 3 else mask) > 0
    kept = _external_objects(binary.astype(np.uint8), min_area if "min-area" in options else 0.0)
    filled = np.zeros(binary.shape, np.uint8)
    cv2.drawContours(filled, [contour for contour, _ in kept], -1, 1, thickness=cv2.FILLED)
    if "fill-holes" in options:
        return filled
    return (binary & (filled > 0)).astype(np.uint8)


def connected_regions(mask: np.ndarray, min_area: float = 0.0) -> int:
    """Number of 8-connected foreground regions of at least ``min_area`` (fraction of the image).

    The reference the counter is measured against (``cv2.connectedComponentsWithStats``).
    """
    import cv2

    if mask.ndim == 3:
        mask = mask[..., 0]
    _, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return int((areas >= max(min_area * mask.shape[0] * mask.shape[1], 1)).sum())


@dataclass(frozen=True)
class ImageCount:
    """The counter's answer for one mask file."""

    stem: str
    path: Path
    height: int
    width: int
    objects: list[CountedObject]

    @property
    def count(self) -> int:
        return len(self.objects)


def list_mask_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"masks folder {folder} does not exist or is not a folder; pass a folder of mask images")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DataError(f"{folder} holds no mask images ({', '.join(IMAGE_EXTENSIONS)})")
    hidden = hidden_image_files(folder)
    if hidden:
        import sys

        print(f"segsweep: warning: {hidden_files_warning(folder, hidden)}", file=sys.stderr)
    return files


def count_folder(
    folder: str | Path, min_area: float = DEFAULT_MIN_AREA
) -> tuple[list[ImageCount], list[tuple[Path, str]]]:
    """Count every mask in a folder; return the counts and the files that could not be read (with why).

    The masks of a prediction that has not finished (killed, or still writing) are refused: a count
    of part of a test set reads like a count of all of it.
    """
    from reports.predict import unfinished_prediction

    unfinished = unfinished_prediction(Path(folder).resolve())
    if unfinished:
        raise DataError(unfinished)
    files = list_mask_files(Path(folder))
    counts: list[ImageCount] = []
    unreadable: list[tuple[Path, str]] = [
        (path, f"in a subfolder of {folder}: only the files directly in it are counted")
        for path in nested_image_files(Path(folder))
    ]
    soft_edges = SoftEdges()
    not_masks: list[NotAMaskError] = []
    for path in files:
        try:
            mask = read_mask(path, soft_edges)
        except NotAMaskError as exc:  # counting its "objects" would be a number without meaning
            not_masks.append(exc)
            continue
        except DataError as exc:
            unreadable.append((path, str(exc)))
            continue
        counts.append(ImageCount(path.stem, path, mask.shape[0], mask.shape[1], count_objects(mask, min_area)))
    if not_masks:
        raise DataError(
            f"{not_masks_line(not_masks, len(files), Path(folder))} (segsweep count reads binary masks only)"
        )
    soft_edges.warn()
    return counts, unreadable


#: counts.csv's columns, one row per object: its number in the image (1 the largest), its filled area
#: in pixels and as the fraction of the image's area that --min-area is given in, and its bounding box.
#: An image without objects has one row, object 0, area 0 and no box: every image counted is in the file.
COUNT_COLUMNS = ("image", "object", "area_px", "area_fraction", "x", "y", "width", "height")


def object_rows(stem: str, height: int, width: int, objects: Sequence[CountedObject]) -> list[dict[str, str | int]]:
    """counts.csv's rows of one image (:data:`COUNT_COLUMNS`)."""
    if not objects:
        return [
            {"image": stem, "object": 0, "area_px": 0, "area_fraction": 0, "x": "", "y": "", "width": "", "height": ""}
        ]
    return [
        {
            "image": stem,
            "object": number,
            "area_px": o.area,
            "area_fraction": f"{o.area / (height * width):.6g}",
            "x": o.x,
            "y": o.y,
            "width": o.width,
            "height": o.height,
        }
        for number, o in enumerate(objects, start=1)
    ]


def count_rows(counts: Iterable[ImageCount]) -> list[dict[str, str | int]]:
    """counts.csv's rows: one per object of each image, one for an image without objects."""
    return [row for c in counts for row in object_rows(c.stem, c.height, c.width, c.objects)]


def write_counts_csv(path: Path, counts: Iterable[ImageCount]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COUNT_COLUMNS)
        writer.writeheader()
        writer.writerows(count_rows(counts))


def read_counts_csv(path: Path) -> dict[str, int]:
    """The number of objects of each image in a counts.csv."""
    counts: dict[str, int] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            counts[row["image"]] = counts.get(row["image"], 0) + (row["object"] != "0")
    return counts


def check_min_area(min_area: float) -> float:
    if not 0 <= min_area < 1:
        raise SegsweepError(
            f"--min-area is a fraction of the image's area in [0, 1) (counts.csv's area_fraction), got {min_area}; "
            "e.g. 0.001 for 0.1%"
        )
    return min_area


def run_count_command(masks: Path, min_area: float, out: Path | None) -> int:
    """``segsweep count``: CSV to ``out`` (or stdout), unreadable files listed on stderr."""
    import sys

    counts, unreadable = count_folder(masks, check_min_area(min_area))
    if out is not None:
        write_counts_csv(out, counts)
        total = sum(c.count for c in counts)
        print(f"counted {total} object(s) in {len(counts)} mask(s) -> {out}")
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=COUNT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(count_rows(counts))
    for path, why in unreadable:
        print(f"segsweep: skipped {path}: {why}", file=sys.stderr)
    return 0


def agreement(masks: Sequence[np.ndarray], references: Sequence[int], min_area: float) -> tuple[int, list[int]]:
    """How many masks the counter counts as the reference does, and the indices of the others."""
    mismatched = [
        i for i, (m, r) in enumerate(zip(masks, references, strict=True)) if len(count_objects(m, min_area)) != r
    ]
    return len(masks) - len(mismatched), mismatched


def measure(data: Path, thresholds: Sequence[float] = (0.0, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01)) -> dict:
    """Counter against connected regions and against ``kavsir_bboxes.json`` on a data set's true masks."""
    files = list_mask_files(data / "masks")
    soft_edges = SoftEdges()
    masks = [read_mask(p, soft_edges) for p in files]
    soft_edges.warn()
    regions = [connected_regions(m) for m in masks]
    result: dict = {"n_masks": len(masks), "thresholds": {}}
    boxes_file = data / "kavsir_bboxes.json"
    boxes = json.loads(boxes_file.read_text()) if boxes_file.is_file() else None
    box_counts = [len(boxes[p.stem]["bbox"]) if boxes and p.stem in boxes else None for p in files]
    for threshold in thresholds:
        agree, _ = agreement(masks, regions, threshold)
        filtered = [connected_regions(m, threshold) for m in masks]
        agree_filtered, _ = agreement(masks, filtered, threshold)
        row: dict = {
            "equals_connected_regions": agree,
            "equals_connected_regions_same_min_area": agree_filtered,
        }
        if boxes is not None:
            pairs = [(m, b) for m, b in zip(masks, box_counts, strict=True) if b is not None]
            agree_boxes, _ = agreement([m for m, _ in pairs], [b for _, b in pairs], threshold)
            row["equals_bbox_file"] = agree_boxes
            row["n_with_boxes"] = len(pairs)
        result["thresholds"][str(threshold)] = row
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Measure the counter on a data set's true masks.")
    parser.add_argument("--measure", type=Path, required=True, help="data set folder with masks/")
    print(json.dumps(measure(parser.parse_args().measure), indent=2))
