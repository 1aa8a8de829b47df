"""The polyp counter: contours, specks, holes, CSV, and its agreement on Kvasir-SEG's true masks."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from reports.count import (
    DEFAULT_MIN_AREA,
    connected_regions,
    count_folder,
    count_objects,
    measure,
    read_counts_csv,
)
from sweeps.cli import main


def _mask(size: int = 100) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.rectangle(mask, (10, 10), (29, 19), 255, -1)  # 20 x 10 = 200 px
    cv2.circle(mask, (70, 70), 10, 255, -1)
    mask[95, 95] = 255  # a one-pixel speck: 1e-4 of the image
    return mask


def test_counts_objects_and_drops_specks() -> None:
    objects = count_objects(_mask(), min_area=0.001)
    assert len(objects) == 2
    circle, rectangle = objects  # largest first
    assert (rectangle.area, rectangle.x, rectangle.y, rectangle.width, rectangle.height) == (
        200,
        10,
        10,
        20,
        10,
    )
    assert circle.area == int((cv2.circle(np.zeros((100, 100), np.uint8), (70, 70), 10, 1, -1)).sum())
    assert len(count_objects(_mask(), min_area=0.0)) == 3
    assert len(count_objects(_mask(), min_area=0.03)) == 1  # 300 px: only the circle (317 px) stays
    assert len(count_objects(_mask(), min_area=0.04)) == 0


def test_hole_is_part_of_its_object_and_object_in_hole_is_not_counted() -> None:
    mask = np.zeros((100, 100), np.uint8)
    cv2.circle(mask, (50, 50), 30, 255, -1)
    cv2.circle(mask, (50, 50), 15, 0, -1)  # a hole
    cv2.circle(mask, (50, 50), 5, 255, -1)  # an island inside the hole
    objects = count_objects(mask, min_area=0.0)
    assert len(objects) == 1
    filled = cv2.circle(np.zeros((100, 100), np.uint8), (50, 50), 30, 1, -1).sum()
    assert abs(objects[0].area - filled) <= 2  # external contour: area includes the hole
    assert connected_regions(mask) == 2  # the reference counts the island


def test_one_and_zero_one_masks_and_channels() -> None:
    mask = (_mask() > 0).astype(np.uint8)
    assert len(count_objects(mask)) == len(count_objects(np.dstack([mask * 255] * 3)))
    assert count_objects(np.zeros((10, 10), np.uint8)) == []


def test_count_command_writes_csv_and_lists_unreadable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "a.png"), _mask())
    cv2.imwrite(str(masks / "b.jpg"), np.zeros((40, 60), np.uint8))
    (masks / "c.png").write_bytes(b"not a png")
    (masks / "notes.txt").write_text("ignored")
    (masks / "more").mkdir()
    cv2.imwrite(str(masks / "more" / "d.png"), _mask())  # not counted, and said so
    out = tmp_path / "counts.csv"
    assert main(["count", str(masks), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    # One row per object (a's two, largest first), and one for b, which has none.
    assert [(r["image"], r["object"]) for r in rows] == [("a", "1"), ("a", "2"), ("b", "0")]
    assert list(rows[0]) == ["image", "object", "area_px", "area_fraction", "x", "y", "width", "height"]
    second = rows[1]
    assert (second["area_px"], second["x"], second["y"], second["width"], second["height"]) == (
        "200",
        "10",
        "10",
        "20",
        "10",
    )
    assert float(second["area_fraction"]) == pytest.approx(200 / _mask().size)  # the unit of --min-area
    assert (rows[2]["area_px"], rows[2]["x"]) == ("0", "")
    assert read_counts_csv(out) == {"a": 2, "b": 0}
    err = capsys.readouterr().err
    assert "c.png" in err
    assert f"skipped {masks / 'more' / 'd.png'}: in a subfolder of {masks}: only the files directly in it" in err

    assert main(["count", str(masks), "--min-area", "0"]) == 0
    printed = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["object"] for r in printed if r["image"] == "a"] == ["1", "2", "3"]


def test_min_area_is_the_unit_the_file_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --min-area was a fraction of the image while counts.csv showed only pixels: a threshold read off
    # the file's smallest object ("200") meant nothing to --min-area.
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "a.png"), _mask())
    assert main(["count", str(masks)]) == 0
    smallest = min(csv.DictReader(capsys.readouterr().out.splitlines()), key=lambda r: int(r["area_px"]))
    assert main(["count", str(masks), "--min-area", smallest["area_fraction"]]) == 0  # kept at its own value
    assert smallest["object"] in [r["object"] for r in csv.DictReader(capsys.readouterr().out.splitlines())]
    just_above = str(float(smallest["area_fraction"]) * 1.01)
    assert main(["count", str(masks), "--min-area", just_above]) == 0  # dropped just above it
    assert smallest["area_px"] not in [r["area_px"] for r in csv.DictReader(capsys.readouterr().out.splitlines())]


def test_count_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["count", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    cv2.imwrite(str(tmp_path / "m" / "a.png"), _mask())
    assert main(["count", str(tmp_path / "m"), "--min-area", "5"]) == 2
    assert "fraction" in capsys.readouterr().err
    assert count_folder(tmp_path / "m")[0][0].count == 2


@pytest.mark.realdata
def test_counter_on_kvasir_seg_true_masks(real_kvasir_seg: Path) -> None:
    """The figures quoted in reports/count.py's docstring."""
    result = measure(real_kvasir_seg, thresholds=(0.0, DEFAULT_MIN_AREA))
    assert result["n_masks"] == 1000
    default = result["thresholds"][str(DEFAULT_MIN_AREA)]
    assert default["equals_connected_regions_same_min_area"] == 1000
    assert default["equals_connected_regions"] == 857  # the other 143 masks carry JPEG specks
    assert default["equals_bbox_file"] == 992
    assert result["thresholds"]["0.0"]["equals_connected_regions"] == 1000


def test_anti_aliased_masks_are_counted_with_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before: "count reads binary masks only" on the first mask with a grey edge pixel.
    from tests.support.synth import anti_aliased

    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(masks / name), anti_aliased((_mask() > 0).astype(np.uint8)))
    assert main(["count", str(masks), "--out", str(tmp_path / "counts.csv")]) == 0
    assert read_counts_csv(tmp_path / "counts.csv") == {"a": 2, "b": 2}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segsweep: warning: 2 mask(s) have anti-aliased edges"), err


def test_non_masks_are_one_line_with_a_count_and_an_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "a.png"), _mask())
    for name in ("b.png", "c.png"):
        cv2.imwrite(str(masks / name), np.tile(np.linspace(0, 255, 100), (100, 1)).astype(np.uint8))
    cv2.imwrite(str(masks / ".d.png"), _mask())  # hidden: not counted, and said so
    assert main(["count", str(masks)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (
        f"segsweep: warning: 1 hidden image file(s) in {masks} are not used (names starting with a dot, e.g. "
        ".d.png); rename them without the dot to use them"
    )
    assert len(err) == 2 and err[1].startswith(
        f"segsweep: error: 2 of the 3 masks in {masks} cannot be used as binary masks, e.g. {masks / 'b.png'}: "
        "is not binary: "
    ), err
    assert err[1].endswith("(segsweep count reads binary masks only)")
