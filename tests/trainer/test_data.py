"""trainer.data: pairing by stem, split lookup, the prepared cache (RGB, 0/1 masks, crash safety)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import trainer.data as data
from trainer.data import (
    DataError,
    index_dataset,
    prepare_dataset,
    read_image,
    read_mask,
    read_split,
    select_stems,
)


def _write_pair(root: Path, stem: str, image_ext: str = ".jpg", mask_ext: str = ".png", size: int = 64) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    image = np.full((size, size, 3), 120, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : size // 2, size // 4 : size // 2] = 255
    cv2.imwrite(str(root / "images" / f"{stem}{image_ext}"), image)
    cv2.imwrite(str(root / "masks" / f"{stem}{mask_ext}"), mask)


@pytest.fixture
def seg_copy(kvasir_seg_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(kvasir_seg_dir, tmp_path / "seg"))


# --- index and splits -----------------------------------------------------------------------------


def test_pairs_by_stem_across_extensions(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", ".jpg", ".png")
    _write_pair(tmp_path, "b", ".png", ".tif")
    _write_pair(tmp_path, "c", ".jpeg", ".bmp")
    (tmp_path / "masks" / "c.bmp").unlink()
    cv2.imwrite(str(tmp_path / "masks" / "d.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "images" / ".DS_Store").write_text("")
    index = index_dataset(tmp_path)
    assert index.stems == ["a", "b"]
    assert index.images["b"].name == "b.png" and index.masks["b"].name == "b.tif"
    assert index.images_without_mask == ["c"]
    assert index.masks_without_image == ["d"]
    assert [p.name for p in index.ignored] == ["notes.txt"]


def test_shared_stem_is_an_error(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", ".jpg", ".png")
    shutil.copy(tmp_path / "images" / "a.jpg", tmp_path / "images" / "a.png")
    with pytest.raises(DataError, match="share the stem 'a'"):
        index_dataset(tmp_path)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{re.escape(str(missing))} does not exist"):
        index_dataset(missing)
    with pytest.raises(DataError, match=f"{re.escape(str(missing))} does not exist"):
        prepare_dataset(missing, 32)


def test_missing_masks_folder_is_named(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a")
    shutil.rmtree(tmp_path / "masks")
    with pytest.raises(DataError, match=r"has no masks/ folder"):
        prepare_dataset(tmp_path, 32)


def test_kvasir_seg_splits_are_found_in_splits_folder(kvasir_seg_dir: Path) -> None:
    train = read_split(kvasir_seg_dir, "train")
    assert train == read_split(kvasir_seg_dir, "train.txt")
    assert train == read_split(kvasir_seg_dir, str(kvasir_seg_dir / "splits" / "train.txt"))
    assert len(train) == 9 and len(read_split(kvasir_seg_dir, "val")) == 3
    index = index_dataset(kvasir_seg_dir)
    assert select_stems(index, split="val") == ["case009", "case010", "case011"]
    assert select_stems(index, split="train", limit=2) == ["case000", "case001"]


def test_kvasir_instrument_splits_beside_images(kvasir_instrument_dir: Path) -> None:
    assert read_split(kvasir_instrument_dir, "train") == [f"case{i:03d}" for i in range(9)]
    assert read_split(kvasir_instrument_dir, "test.txt") == ["case009", "case010", "case011"]


def test_split_lines_may_carry_paths_extensions_and_comments(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a")
    (tmp_path / "mine.txt").write_text("# dev set\nimages/a.jpg\n\n  b \n")
    assert read_split(tmp_path, "mine") == ["a", "b"]


def test_split_errors(kvasir_seg_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"split 'nope' not found.*available: train.txt, val.txt"):
        read_split(kvasir_seg_dir, "nope")
    _write_pair(tmp_path, "a")
    (tmp_path / "dev.txt").write_text("a\nghost\n")
    with pytest.raises(DataError, match=r"names 1 stem\(s\) without an image/mask pair.*ghost"):
        select_stems(index_dataset(tmp_path), split="dev")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(DataError, match="lists no stems"):
        read_split(tmp_path, "empty")


def test_split_in_the_data_set_wins_over_one_in_the_working_directory(
    kvasir_seg_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("val.txt").write_text("somewhere_else\n")
    assert read_split(kvasir_seg_dir, "val.txt") == ["case009", "case010", "case011"]


# --- decoding -------------------------------------------------------------------------------------


def test_read_image_is_rgb_and_masks_binarise(tmp_path: Path) -> None:
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 2] = 255  # BGR on disk: pure red
    cv2.imwrite(str(tmp_path / "red.png"), red)
    rgb = read_image(tmp_path / "red.png")
    assert rgb[0, 0].tolist() == [255, 0, 0]
    # JPEG-style noise near black and white (many grey levels, none at mid grey) binarises at 128.
    noisy = np.array([[0, 1, 3, 5, 7, 12, 30, 225, 240, 248, 250, 252, 253, 254, 255, 2, 4, 6, 9]], np.uint8)
    cv2.imwrite(str(tmp_path / "m255.png"), noisy)
    assert read_mask(tmp_path / "m255.png").tolist() == [[0] * 7 + [1] * 8 + [0] * 4]
    cv2.imwrite(str(tmp_path / "m01.png"), np.array([[0, 1, 1, 0]], np.uint8))
    assert read_mask(tmp_path / "m01.png").tolist() == [[0, 1, 1, 0]]


def test_undecodable_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_text("not a picture")
    with pytest.raises(DataError, match=r"bad\.jpg"):
        read_image(tmp_path / "bad.jpg")


# --- the prepared cache ---------------------------------------------------------------------------


def test_prepare_builds_once_then_loads_the_cache(
    kvasir_seg_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = prepare_dataset(kvasir_seg_dir, 32, cache_dir=cache)
    assert first.images.shape == (12, 32, 32, 3) and first.images.dtype == np.uint8
    assert first.masks.shape == (12, 32, 32, 1) and first.masks.dtype == np.uint8
    assert first.stems == tuple(f"case{i:03d}" for i in range(12)) and first.image_size == 32

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the cache was built again")

    monkeypatch.setattr(data, "_build_cache", no_rebuild)
    second = prepare_dataset(kvasir_seg_dir, 32, cache_dir=cache)
    assert second.key == first.key
    assert second.stems == first.stems
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.masks, first.masks)
    assert [p.name for p in cache.iterdir()] == [first.key]


def test_default_cache_is_segsweep_cache(kvasir_seg_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGSWEEP_CACHE", str(tmp_path / "env-cache"))
    prepared = prepare_dataset(kvasir_seg_dir, 32, limit=3)
    assert (tmp_path / "env-cache" / prepared.key / "meta.json").is_file()


def test_cache_key_follows_content_size_and_selection(seg_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = prepare_dataset(seg_copy, 32, cache_dir=cache).key
    assert prepare_dataset(seg_copy, 64, cache_dir=cache).key != base
    assert prepare_dataset(seg_copy, 32, limit=4, cache_dir=cache).key != base
    # Touching a file (new time, same bytes) keeps the key; new bytes change it.
    mask = seg_copy / "masks" / "case005.jpg"
    mask.write_bytes(mask.read_bytes())
    assert prepare_dataset(seg_copy, 32, cache_dir=cache).key == base
    blank = np.zeros((64, 64), np.uint8)
    cv2.imwrite(str(mask), blank)
    changed = prepare_dataset(seg_copy, 32, cache_dir=cache)
    assert changed.key != base
    assert changed.masks[changed.stems.index("case005")].max() == 0


def test_cached_images_are_rgb(tmp_path: Path) -> None:
    root = tmp_path / "red"
    _write_pair(root, "a")
    red_bgr = np.zeros((64, 64, 3), np.uint8)
    red_bgr[..., 2] = 250
    cv2.imwrite(str(root / "images" / "a.png"), red_bgr)
    (root / "images" / "a.jpg").unlink()
    prepared = prepare_dataset(root, 32, cache_dir=tmp_path / "cache")
    pixel = np.asarray(prepared.images[0]).reshape(-1, 3).mean(axis=0)
    assert pixel[0] > 240 and pixel[1] < 10 and pixel[2] < 10  # R high: the paper's code fed BGR


def test_cached_masks_are_zero_one_after_resize(kvasir_seg_dir: Path, tmp_path: Path) -> None:
    for size in (32, 96):  # shrink and enlarge
        prepared = prepare_dataset(kvasir_seg_dir, size, cache_dir=tmp_path / "cache")
        assert set(np.unique(prepared.masks).tolist()) == {0, 1}
        # Each synthetic mask has an object; resizing keeps it.
        assert all(np.asarray(m).sum() > 0 for m in prepared.masks)


def test_size_mismatch_is_named(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a")
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.zeros((32, 48), np.uint8))
    with pytest.raises(DataError, match=r"a\.jpg is 64x64 but its mask .*a\.png is 48x32"):
        prepare_dataset(tmp_path, 32, cache_dir=tmp_path / "cache")


def test_crash_during_build_leaves_no_cache_entry(
    kvasir_seg_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    real_decode = data._decode_pair
    calls = 0

    def decode_then_crash(args: tuple[Path, Path, int]) -> tuple[np.ndarray, np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 6:
            raise KeyboardInterrupt("killed mid-way")
        return real_decode(args)

    monkeypatch.setattr(data, "_decode_pair", decode_then_crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(kvasir_seg_dir, 32, cache_dir=cache)
    assert list(cache.iterdir()) == []  # neither an entry nor a leftover temporary folder

    monkeypatch.setattr(data, "_decode_pair", real_decode)
    rebuilt = prepare_dataset(kvasir_seg_dir, 32, cache_dir=cache)
    assert len(rebuilt) == 12
    assert [p.name for p in cache.iterdir()] == [rebuilt.key]


def test_images_in_subfolders_are_not_used_and_a_warning_says_so(
    kvasir_seg_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    shutil.copytree(kvasir_seg_dir, root)
    (root / "images" / "later").mkdir()
    shutil.move(root / "images" / "case000.jpg", root / "images" / "later" / "case000.jpg")
    index = data.index_dataset(root)
    assert "case000" not in index.images
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"segsweep: warning: 1 image file(s) in subfolders of {root / 'images'} are not used (only the files "
        f"directly in images/ are; e.g. {root / 'images' / 'later' / 'case000.jpg'}); move them up into images/ "
        "to use them"
    ]


def test_hidden_pair_is_left_out_with_a_warning(
    kvasir_seg_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A pair named .x.jpg was left out without a word: 11 of 12 pairs, no warning.
    root = Path(shutil.copytree(kvasir_seg_dir, tmp_path / "data"))
    (root / "images" / "case000.jpg").rename(root / "images" / ".case000.jpg")
    index = index_dataset(root)
    assert "case000" not in index.images
    assert capsys.readouterr().err.strip().splitlines() == [
        f"segsweep: warning: 1 hidden image file(s) in {root / 'images'} are not used (names starting with a dot, "
        "e.g. .case000.jpg); rename them without the dot to use them"
    ]


def test_anti_aliased_masks_train_binarised_with_one_warning_on_every_call(
    kvasir_seg_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before: "masks/case000.png: is not binary: 52 pixels (1.3%) are between 31 and 224 ...".
    from tests.support.synth import anti_aliased

    root = Path(shutil.copytree(kvasir_seg_dir, tmp_path / "data"))
    truths = {}
    for stem in ("case000", "case001"):
        jpeg = root / "masks" / f"{stem}.jpg"
        truths[stem] = (cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE) >= 128).astype(np.uint8)
        jpeg.unlink()
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), anti_aliased(truths[stem]))
    for _ in range(2):  # built, then loaded from the cache: the warning each time
        prepared = prepare_dataset(root, 64, cache_dir=tmp_path / "cache")
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("segsweep: warning: 2 mask(s) have anti-aliased edges"), err
        assert "case00" in err[0]
    assert len(prepared) == 12
    np.testing.assert_array_equal(prepared.masks[0, ..., 0], truths["case000"])
    assert prepared.quality()["n_soft_edge_masks"] == 2
