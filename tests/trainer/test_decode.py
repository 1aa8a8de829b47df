"""The one mask reader (trainer.decode): every bit depth and encoding masks come in, and what it refuses."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from reports.count import count_folder
from sweeps.cli import main
from tests.support.synth import anti_aliased
from trainer.data import MASK_THRESHOLD, read_mask
from trainer.data_check import check_dataset
from trainer.decode import NotAMaskError, SoftEdges


def _object() -> np.ndarray:
    """A 0/1 64x64 mask with one disc and one square."""
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (20, 20), 10, 1, -1)
    mask[40:56, 40:56] = 1
    return mask


def _write(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array)
    return path


@pytest.mark.parametrize(
    "name, encode",
    [
        ("u8_255.png", lambda m: m * 255),
        ("u8_01.png", lambda m: m),
        ("u8_02.png", lambda m: m * 2),  # one object value: {0, max}
        ("u16_255.png", lambda m: m.astype(np.uint16) * 255),
        ("u16_01.png", lambda m: m.astype(np.uint16)),
        ("u16_65535.png", lambda m: m.astype(np.uint16) * 65535),
        ("u16_255.tif", lambda m: m.astype(np.uint16) * 255),
        ("f32_1.tif", lambda m: m.astype(np.float32)),
        ("rgb_255.png", lambda m: np.dstack([m * 255] * 3)),
        ("rgba_255.png", lambda m: np.dstack([m * 255] * 3 + [np.full_like(m, 255)])),
        ("rgb16_65535.png", lambda m: np.dstack([m.astype(np.uint16) * 65535] * 3)),
        ("grey.jpg", lambda m: m * 255),
        ("rgb.jpg", lambda m: np.dstack([m * 255] * 3)),
    ],
)
def test_binary_masks_of_every_depth_read_alike(tmp_path: Path, name: str, encode: object) -> None:
    """16-bit 0/255 and 0/1 masks were read as all zeros through IMREAD_GRAYSCALE."""
    mask = _object()
    path = _write(tmp_path / name, encode(mask))  # type: ignore[operator]
    read = read_mask(path)
    assert read.dtype == np.uint8 and read.shape == (64, 64)
    if name.endswith(".jpg"):  # compression noise at the edges: almost every pixel agrees
        assert np.count_nonzero(read != mask) <= 8
    else:
        np.testing.assert_array_equal(read, mask)


@pytest.mark.parametrize(
    "name, build, problem",
    [
        ("labels012.png", lambda m: m + (np.arange(64)[None, :] > 32) * m, "label map"),
        ("labels_0_128_255.png", lambda m: m * 255 - (np.arange(64)[None, :] > 32) * m * 127, "label map"),
        ("labels16.png", lambda m: (m + (np.arange(64)[None, :] > 32) * m).astype(np.uint16), "label map"),
        ("gradient.png", lambda m: np.tile(np.linspace(0, 255, 64), (64, 1)), "not binary"),
        ("noise.png", lambda m: np.random.default_rng(0).integers(0, 256, (64, 64)), "not binary"),
        ("noise16.png", lambda m: np.random.default_rng(0).integers(0, 65536, (64, 64), np.uint16), "not binary"),
        ("colour.png", lambda m: np.dstack([m * 255, m * 0, m * 0]), "colour channels"),
        ("tiny_labels.png", lambda m: m * 3 - (np.arange(64)[None, :] > 32) * m, "label map"),
    ],
)
def test_not_a_binary_mask_is_refused_naming_the_file(tmp_path: Path, name: str, build: object, problem: str) -> None:
    raw = np.asarray(build(_object()))  # type: ignore[operator]
    path = _write(tmp_path / name, raw if raw.dtype == np.uint16 else raw.astype(np.uint8))
    with pytest.raises(NotAMaskError, match=rf"{name}: .*{problem}"):
        read_mask(path)


def _blurred(mask: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(cv2.GaussianBlur(mask * 255, (0, 0), sigma))


def _probability_map(mask: np.ndarray) -> np.ndarray:
    """A model's confident output as 8-bit: sigmoid of the signed distance to the edge (3 px scale)."""
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5) - cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)
    return np.asarray(255 / (1 + np.exp(-inside / 3))).astype(np.uint8)


@pytest.mark.parametrize(
    "name, build",
    [
        ("area_downscaled.png", anti_aliased),
        ("area_downscaled_rgb.png", lambda m: np.dstack([anti_aliased(m)] * 3)),
        ("area_downscaled16.png", lambda m: anti_aliased(m).astype(np.uint16) * 257),
        ("line_aa.png", lambda m: cv2.circle(np.zeros((64, 64), np.uint8), (32, 32), 20, 255, -1, cv2.LINE_AA)),
    ],
)
def test_anti_aliased_masks_are_binarised_at_half_and_tallied(tmp_path: Path, name: str, build: object) -> None:
    # Refused before ("is not binary: 52 pixels (1.3%) are between 31 and 224 ..."): a public polyp set
    # whose masks are 0/255 but for a few anti-aliased edge pixels could not be used at all.
    raw = np.asarray(build(_object()))  # type: ignore[operator]
    path = _write(tmp_path / name, raw)
    soft_edges = SoftEdges()
    read = read_mask(path, soft_edges)
    grey = raw if raw.ndim == 2 else raw[..., 0]
    np.testing.assert_array_equal(read, (grey >= (32896 if grey.dtype == np.uint16 else 128)).astype(np.uint8))
    assert [p for p, _ in soft_edges.found] == [path]
    assert 0 < soft_edges.found[0][1] < 0.05


def test_soft_edges_get_one_warning_with_count_largest_share_and_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    soft_edges = SoftEdges()
    for i, radius in enumerate((6, 10, 14)):
        mask = cv2.circle(np.zeros((64, 64), np.uint8), (32, 32), radius, 1, -1)
        read_mask(_write(tmp_path / f"{i}.png", anti_aliased(mask)), soft_edges)
    soft_edges.warn()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.match(
        r"segsweep: warning: 3 mask\(s\) have anti-aliased edges, binarised at 128 of 255: at most \d\.\d\d% of "
        rf"a mask's pixels are between 31 and 224 \(e\.g\. {re.escape(str(tmp_path / '2.png'))}\); export masks",
        err[0],
    ), err[0]
    # Without a tally (a caller that does not collect) the binarising is still said, per file.
    read_mask(tmp_path / "0.png")
    assert "1 mask(s) have anti-aliased edges" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, build, problem",
    [
        ("blurred1.png", lambda m: _blurred(m, 1.2), r"not binary: its edges are soft, a band of grey [2-9]\.\d pix"),
        ("blurred5.png", lambda m: _blurred(m, 5), r"is not binary: \d+\.\d% of its pixels.*a blurred mask"),
        ("probabilities.png", _probability_map, r"is not binary: .*a probability map"),
        ("gradient.png", lambda m: np.tile(np.linspace(0, 255, 64), (64, 1)).astype(np.uint8),
         r"is not binary: \d+\.\d% of its pixels are between 31 and 224 of 255, more than the 10%"),
        ("noise.png", lambda m: np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8),
         r"is not binary: 7\d\.\d% of its pixels.*noise"),
        ("one_grey_level.png", lambda m: m * 255 - (np.arange(64)[None, :] > 52) * m * 127, r"is a label map"),
    ],
)  # fmt: skip
def test_soft_masks_and_non_masks_are_still_refused(tmp_path: Path, name: str, build: object, problem: str) -> None:
    path = _write(tmp_path / name, np.asarray(build(_object())).astype(np.uint8))  # type: ignore[operator]
    soft_edges = SoftEdges()
    with pytest.raises(NotAMaskError, match=rf"{name}: (is )?{problem}"):
        read_mask(path, soft_edges)
    assert soft_edges.found == []


@pytest.mark.parametrize("quality", [75, 95, 100])
def test_zero_one_mask_saved_as_jpeg_is_named_as_such(tmp_path: Path, quality: int) -> None:
    # Called "a label map ... values 0, 1, 2" with the fix "merge the labels"; JPEG moved its edges.
    path = tmp_path / "m.jpg"
    assert cv2.imwrite(str(path), _object(), [cv2.IMWRITE_JPEG_QUALITY, quality])
    expected = r"m\.jpg: is a 0/1 mask saved as JPEG \(values 0\.\.[12]\).*save the masks as PNG"
    with pytest.raises(NotAMaskError, match=expected) as caught:
        read_mask(path)
    assert "merge the labels" not in str(caught.value)
    png = _write(tmp_path / "m.png", _object())  # the same mask lossless: a 0/1 mask
    np.testing.assert_array_equal(read_mask(png), _object())


def test_photo_as_mask_is_refused(kvasir_seg_dir: Path) -> None:
    with pytest.raises(NotAMaskError, match=r"case000\.jpg: .*(not binary|colour channels)"):
        read_mask(kvasir_seg_dir / "images" / "case000.jpg")


def test_data_check_and_training_agree_on_masks(seg_copy16: Path) -> None:
    """data check calls a 16-bit mask fine and a label map an error, as the training reader does."""
    report = check_dataset(seg_copy16)
    assert [f.path.name for f in report.errors] == ["case001.png"]
    assert "label map" in report.errors[0].problem


@pytest.fixture
def seg_copy16(kvasir_instrument_dir: Path, tmp_path: Path) -> Path:
    import shutil

    root = Path(shutil.copytree(kvasir_instrument_dir, tmp_path / "seg16"))
    first = root / "masks" / "case000.png"
    grey = cv2.imread(str(first), cv2.IMREAD_GRAYSCALE)
    _write(first, (grey > MASK_THRESHOLD).astype(np.uint16) * 255)
    second = root / "masks" / "case001.png"
    grey = cv2.imread(str(second), cv2.IMREAD_GRAYSCALE)
    labels = (grey > MASK_THRESHOLD).astype(np.uint8)
    labels[:8, :8] = 2
    _write(second, labels)
    return root


def test_count_reads_16_bit_masks_and_refuses_non_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    _write(masks / "a.png", _object().astype(np.uint16) * 255)
    _write(masks / "b.png", _object().astype(np.uint16))
    counts, unreadable = count_folder(masks)
    assert [c.count for c in counts] == [2, 2] and unreadable == []
    _write(masks / "c.png", np.tile(np.linspace(0, 255, 64), (64, 1)).astype(np.uint8))
    assert main(["count", str(masks)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c.png" in err[0] and "not binary" in err[0]


@pytest.mark.realdata
def test_kvasir_seg_masks_read_exactly_as_before(real_kvasir_seg: Path) -> None:
    """All 1000 JPEG masks: the new reader gives the same 0/1 masks as IMREAD_GRAYSCALE + threshold 128."""
    paths = sorted((real_kvasir_seg / "masks").iterdir())
    assert len(paths) == 1000
    for path in paths:
        before = (cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) >= MASK_THRESHOLD).astype(np.uint8)
        np.testing.assert_array_equal(read_mask(path), before, err_msg=str(path))


def test_half_cut_jpeg_image_is_refused_not_decoded_with_grey_rows(kvasir_seg_dir: Path, tmp_path: Path) -> None:
    """libjpeg "recovers" a JPEG cut in half (grey bottom rows) with only a warning on stderr; predict and
    training used such images. The reader refuses it, naming the file, as `data check` does."""
    from trainer.data import read_image
    from trainer.decode import BadFileError

    source = kvasir_seg_dir / "images" / "case000.jpg"
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    assert cv2.imread(str(cut)) is not None  # OpenCV alone decodes it
    with pytest.raises(BadFileError, match=r"cut\.jpg: truncated JPEG"):
        read_image(cut)


def test_training_refuses_an_image_turned_by_exif_against_an_untagged_mask(tmp_path: Path) -> None:
    # The training reader decoded the tagged image turned and the mask as stored: a square pair went
    # into the cache with its polyp outside its mask (0 of 295 polyp pixels inside), no message.
    from segsweep.base.errors import DataError
    from tests.support.synth import make_exif_turned_pair
    from trainer.data import prepare_dataset

    make_exif_turned_pair(tmp_path / "data")
    make_exif_turned_pair(tmp_path / "data", "b")
    with pytest.raises(DataError, match=r"a.jpg has EXIF orientation 6 .* its mask .*a.png has 1 \(stored upright\)"):
        prepare_dataset(tmp_path / "data", 64, cache_dir=tmp_path / "cache")
