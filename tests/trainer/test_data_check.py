"""``segsweep data check``: planted faults in copies of the synthetic sets, each found and named."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.data_check import CheckReport, Finding, check_dataset, run_check_command


@pytest.fixture
def seg_copy(kvasir_seg_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(kvasir_seg_dir, tmp_path / "seg"))


@pytest.fixture
def instrument_copy(kvasir_instrument_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(kvasir_instrument_dir, tmp_path / "instrument"))


def read_grey(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert mask is not None
    return mask


def only(report: CheckReport, path: Path) -> Finding:
    """The single finding about ``path``."""
    found = [f for f in report.findings if f.path == path]
    assert len(found) == 1, (path, report.format())
    return found[0]


@pytest.mark.parametrize("layout", ["seg", "instrument"])
def test_synthetic_sets_check_clean(
    layout: str, kvasir_seg_dir: Path, kvasir_instrument_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = kvasir_seg_dir if layout == "seg" else kvasir_instrument_dir
    report = check_dataset(root)
    assert report.findings == []
    assert (report.n_images, report.n_masks, report.n_pairs) == (12, 12, 12)
    assert len(report.split_files) == 2
    assert run_check_command(root) == 0
    assert "12 image/mask pairs" in capsys.readouterr().out


def test_every_planted_fault_is_reported_in_one_pass(seg_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, masks = seg_copy / "images", seg_copy / "masks"
    # 1. image without mask, 2. mask without image
    (masks / "case000.jpg").unlink()
    (images / "case001.jpg").unlink()
    # 3. a JPEG cut in half (OpenCV alone would decode it partially, with only a libjpeg warning)
    cut = images / "case002.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    # 4. a PNG mask without its end
    png = masks / "case003.png"
    ok, encoded = cv2.imencode(".png", read_grey(masks / "case003.jpg"))
    assert ok
    (masks / "case003.jpg").unlink()
    png.write_bytes(encoded.tobytes()[:-20])
    # 5. a file with an image extension that is not an image
    (images / "case004.jpg").write_text("not a picture")
    # 6. a stray non-image file (warning)
    (images / "notes.txt").write_text("collected 2020")
    # 7. size mismatch
    cv2.imwrite(str(masks / "case005.jpg"), np.zeros((32, 48, 3), np.uint8) + 255)
    # 8. a soft (non-binary) mask
    soft = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    cv2.imwrite(str(masks / "case006.png"), soft)
    (masks / "case006.jpg").unlink()
    # 9. an empty mask (warning)
    cv2.imwrite(str(masks / "case007.jpg"), np.zeros((64, 64), np.uint8))
    # 10. a split naming a stem that is not a pair
    train = seg_copy / "splits" / "train.txt"
    train.write_text(train.read_text() + "ghost\n")
    # 11. two images sharing a stem
    shutil.copy(images / "case008.jpg", images / "case008.png")

    report = check_dataset(seg_copy)
    assert "no mask" in only(report, images / "case000.jpg").problem
    assert "no image" in only(report, masks / "case001.jpg").problem
    assert "truncated JPEG" in only(report, cut).problem
    assert "truncated PNG" in only(report, png).problem
    assert "cannot be decoded" in only(report, images / "case004.jpg").problem
    stray = only(report, images / "notes.txt")
    assert stray.severity == "warning" and "not an image" in stray.problem
    assert "48x32" in only(report, masks / "case005.jpg").problem
    assert "not binary" in only(report, masks / "case006.png").problem
    empty = only(report, masks / "case007.jpg")
    assert empty.severity == "warning" and "empty" in empty.problem
    split = only(report, train)
    assert "ghost" in split.problem and "case001" in split.problem  # case001 lost its image
    assert "shares the stem" in only(report, images / "case008.png").problem
    assert len(report.errors) == 9 and len(report.warnings) == 2
    assert all(f.fix for f in report.findings)

    assert run_check_command(seg_copy) == 2
    out = capsys.readouterr().out
    assert "images/case002.jpg: truncated JPEG" in out
    assert "9 errors, 2 warnings" in out
    assert len([line for line in out.splitlines() if line.startswith(("  error", "  warning"))]) == 11


def test_warnings_alone_exit_zero(seg_copy: Path) -> None:
    cv2.imwrite(str(seg_copy / "masks" / "case000.jpg"), np.zeros((64, 64), np.uint8))
    (seg_copy / "masks" / "README").write_text("masks by two annotators")
    (seg_copy / "images" / "extra").mkdir()
    report = check_dataset(seg_copy)
    assert not report.errors and len(report.warnings) == 3
    assert run_check_command(seg_copy) == 0


def test_zero_one_masks_are_binary(instrument_copy: Path) -> None:
    for path in (instrument_copy / "masks").iterdir():
        cv2.imwrite(str(path), (read_grey(path) > 127).astype(np.uint8))
    assert check_dataset(instrument_copy).findings == []


def test_label_map_mask_is_an_error(instrument_copy: Path) -> None:
    path = instrument_copy / "masks" / "case000.png"
    labels = (read_grey(path) > 127).astype(np.uint8) * 2
    labels[:4, :4] = 1  # two object values: 1 and 2
    cv2.imwrite(str(path), labels)
    assert "label map" in only(check_dataset(instrument_copy), path).problem


def test_one_foreground_value_is_a_binary_mask(instrument_copy: Path) -> None:
    """{0, 2} is a binary mask (0/max): read as 0/1 like 0/255, not as empty."""
    path = instrument_copy / "masks" / "case000.png"
    cv2.imwrite(str(path), (read_grey(path) > 127).astype(np.uint8) * 2)
    assert check_dataset(instrument_copy).findings == []


def test_instrument_split_beside_images(instrument_copy: Path) -> None:
    (instrument_copy / "masks" / "case011.png").unlink()  # case011 is in test.txt
    report = check_dataset(instrument_copy)
    assert "case011" in only(report, instrument_copy / "test.txt").problem
    assert "no mask" in only(report, instrument_copy / "images" / "case011.jpg").problem


def test_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert "does not exist" in only(check_dataset(missing), missing).problem
    assert run_check_command(missing) == 2
    assert f"{missing}: does not exist" in capsys.readouterr().out


def test_missing_masks_folder_still_checks_images(seg_copy: Path) -> None:
    shutil.rmtree(seg_copy / "masks")
    cut = seg_copy / "images" / "case000.jpg"
    cut.write_bytes(cut.read_bytes()[:100])
    report = check_dataset(seg_copy)
    assert "missing" in only(report, seg_copy / "masks").problem
    assert "truncated" in only(report, cut).problem
    assert not check_dataset(seg_copy).ok


def test_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    assert "no image files" in only(check_dataset(tmp_path), tmp_path).problem


@pytest.mark.realdata
def test_real_kvasir_seg_checks_clean(real_kvasir_seg: Path) -> None:
    report = check_dataset(real_kvasir_seg)
    assert report.findings == [], report.format()
    assert report.n_pairs == 1000
    assert run_check_command(real_kvasir_seg) == 0


def test_exif_turned_image_beside_untagged_mask_is_an_error(tmp_path: Path) -> None:
    # Training refuses such a pair (it would be decoded turned against its mask); data check says so first.
    from tests.support.synth import make_exif_turned_pair

    make_exif_turned_pair(tmp_path / "data")
    make_exif_turned_pair(tmp_path / "data", "b")
    report = check_dataset(tmp_path / "data")
    errors = [f for f in report.findings if f.severity == "error"]
    assert [f.path.name for f in errors] == ["a.jpg", "b.jpg"]
    assert errors[0].problem.startswith("has EXIF orientation 6 (turned 90 degrees clockwise) but its mask")
    assert "mogrify -auto-orient" in errors[0].fix


def test_anti_aliased_masks_are_one_warning_not_errors(instrument_copy: Path) -> None:
    from tests.support.synth import anti_aliased

    for path in sorted((instrument_copy / "masks").iterdir())[:3]:
        cv2.imwrite(str(path), anti_aliased((read_grey(path) > 127).astype(np.uint8)))
    report = check_dataset(instrument_copy)
    assert not report.errors, report.format()
    finding = only(report, instrument_copy / "masks")
    assert finding.severity == "warning"
    assert finding.problem.startswith("3 mask(s) have anti-aliased edges, binarised at 128 of 255: at most ")
    assert "export masks without anti-aliasing" in finding.fix


def test_zero_one_masks_saved_as_jpeg_are_named_not_called_label_maps(seg_copy: Path) -> None:
    # Called "a label map ... values 0, 1, 2" with the fix "merge the labels you segment into one".
    path = seg_copy / "masks" / "case000.jpg"
    cv2.imwrite(str(path), (read_grey(path) > 127).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    finding = only(check_dataset(seg_copy), path)
    assert finding.severity == "error"
    assert finding.problem.startswith("is a 0/1 mask saved as JPEG (values 0..")
    assert "save the masks as PNG" in finding.fix and "merge" not in finding.fix


def test_hidden_pair_is_a_warning(seg_copy: Path) -> None:
    # A pair named .x.jpg was left out without a word (11 of 12 pairs, 0 warnings).
    for sub in ("images", "masks"):
        (seg_copy / sub / "case000.jpg").rename(seg_copy / sub / ".case000.jpg")
    (seg_copy / "images" / "._case001.jpg").write_bytes(b"\0\5\26\7")  # macOS metadata: not an image, not listed
    report = check_dataset(seg_copy)
    assert report.n_pairs == 11 and all(f.path.suffix == ".txt" for f in report.errors)  # the splits name it
    for sub in ("images", "masks"):
        finding = only(report, seg_copy / sub)
        assert finding.severity == "warning"
        assert finding.problem == "1 hidden image file(s) are not used (names starting with a dot, e.g. .case000.jpg)"
        assert finding.fix == "rename them without the dot to use them"
