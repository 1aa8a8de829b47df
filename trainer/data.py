"""Data sets on disk: images/ and masks/ paired by file stem, split files, and the prepared cache.

A data set is decoded and resized once into a cache keyed by the files' content and the target
size, so the next run (or the next trial of a sweep) loads it in about a second. The cache is
written into a temporary folder and renamed into place: a crash never leaves a half cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from segsweep.base.errors import DataError
from segsweep.base.files import ensure_writable_folder, file_digest

# One reader of image and mask files for training, checking, predicting and counting (re-exported).
from trainer.decode import MASK_THRESHOLD as MASK_THRESHOLD
from trainer.decode import BadFileError, SoftEdges, orientation_mismatch
from trainer.decode import read_image as read_image
from trainer.decode import read_mask as read_mask

#: Extensions OpenCV decodes that data sets in this field use.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
#: Bump when decoding or resizing changes, so old caches are not reused (2: masks read at their own
#: bit depth; format 1 read 16-bit 0/255 and 0/1 masks as empty; 3: masks with anti-aliased edges
#: are binarised, where format 2 refused them or left their pairs out).
CACHE_FORMAT = 3


@dataclass(frozen=True)
class DatasetIndex:
    """The files of a data set folder, paired by stem."""

    root: Path
    images: dict[str, Path]
    masks: dict[str, Path]
    ignored: tuple[Path, ...]  # files in images/ or masks/ that are not images

    @property
    def stems(self) -> list[str]:
        """Stems that have both an image and a mask, sorted."""
        return sorted(set(self.images) & set(self.masks))

    @property
    def images_without_mask(self) -> list[str]:
        return sorted(set(self.images) - set(self.masks))

    @property
    def masks_without_image(self) -> list[str]:
        return sorted(set(self.masks) - set(self.images))


class FolderListing(NamedTuple):
    """What segsweep reads from a folder of images or masks, and what it leaves there."""

    images: dict[str, Path]  # the image files directly in the folder, by stem
    others: list[Path]  # the other (not image) files directly in it
    nested: list[Path]  # image files in its subfolders
    hidden: list[Path]  # hidden image files directly in it (``.x.jpg``)


def image_files_by_stem(folder: Path) -> FolderListing:
    """The image files directly in ``folder`` by stem, and what it leaves there.

    Image files in subfolders and hidden image files are never read: the callers say so, since a
    test set partly moved into a subfolder, or a pair named ``.x.jpg``, would otherwise be used
    short without a word. Two image files sharing a stem (a.jpg and a.png) are a DataError: which
    one pairs is unknowable.
    """
    found: dict[str, Path] = {}
    others: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            others.append(path)
        elif path.stem in found:
            raise DataError(f"{path} and {found[path.stem]} share the stem {path.stem!r}; keep one of them")
        else:
            found[path.stem] = path
    return FolderListing(found, others, nested_image_files(folder), hidden_image_files(folder))


def hidden_image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` whose names start with a dot (which segsweep never reads).

    macOS's ``._x.jpg`` (AppleDouble metadata beside every file copied from a Mac) are not images
    and not listed: a warning about each of them would bury a real one.
    """
    return [
        p for p in sorted(folder.iterdir())
        if p.name.startswith(".") and not p.name.startswith("._") and p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
    ]  # fmt: skip


def hidden_files_warning(folder: Path, hidden: Sequence[Path]) -> str:
    """The one line saying that hidden image files of ``folder`` are left out."""
    return (
        f"{len(hidden)} hidden image file(s) in {folder} are not used (names starting with a dot, e.g. "
        f"{hidden[0].name}); rename them without the dot to use them"
    )


def nested_image_files(folder: Path) -> list[Path]:
    """Image files in the subfolders of ``folder`` (which segsweep never reads), hidden ones aside."""
    return [
        p for p in sorted(folder.rglob("*"))
        if p.parent != folder and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]  # fmt: skip


def index_dataset(root: str | Path) -> DatasetIndex:
    """List a data set folder's images/ and masks/, or say what the folder lacks."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass the folder that holds images/ and masks/")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass the folder that holds images/ and masks/")
    files: dict[str, dict[str, Path]] = {}
    ignored: list[Path] = []
    for sub in ("images", "masks"):
        folder = root / sub
        if not folder.is_dir():
            raise DataError(
                f"{root} has no {sub}/ folder; a data set is a folder with images/ and masks/ "
                "whose files are paired by name (e.g. images/a.jpg with masks/a.png)"
            )
        found, others, nested, hidden = image_files_by_stem(folder)
        ignored.extend(others)
        if hidden:
            print(f"segsweep: warning: {hidden_files_warning(folder, hidden)}", file=sys.stderr)
        if nested:
            print(
                f"segsweep: warning: {len(nested)} image file(s) in subfolders of {folder} are not used "
                f"(only the files directly in {sub}/ are; e.g. {nested[0]}); move them up into {sub}/ to use them",
                file=sys.stderr,
            )
        files[sub] = found
    index = DatasetIndex(root, files["images"], files["masks"], tuple(ignored))
    if not index.images and not index.masks:
        raise DataError(f"{root}/images and {root}/masks hold no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return index


def read_split(root: str | Path, name: str) -> list[str]:
    """Read a split file: a path, or a name looked up in the data set folder and its splits/.

    Kvasir-SEG keeps splits in ``splits/medico2020_train.txt``; Kvasir-Instrument keeps
    ``train.txt`` and ``test.txt`` beside images/. Lines are stems (an extension is dropped).
    """
    root = Path(root)
    # The data set's own split wins over a same-named file in the working directory (which, inside
    # a Ray worker, is the trial folder anyway); an absolute path is the same file either way.
    candidates = [root / name, root / "splits" / name, Path(name)]
    candidates += [Path(str(c) + ".txt") for c in candidates if not str(c).endswith(".txt")]
    for path in candidates:
        if path.is_file():
            stems = []
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    stem = Path(line).name
                    stems.append(Path(stem).stem if Path(stem).suffix.lower() in IMAGE_EXTENSIONS else stem)
            if not stems:
                raise DataError(f"split file {path} lists no stems")
            return stems
    available = sorted(p.name for p in [*root.glob("*.txt"), *root.glob("splits/*.txt")])
    raise DataError(
        f"split {name!r} not found as a file, in {root} or in {root / 'splits'}; "
        f"available: {', '.join(available) or 'none'}"
    )


def select_stems(index: DatasetIndex, *, split: str | None = None, limit: int | None = None) -> list[str]:
    """The paired stems to use: those of ``split`` if given (all pairs otherwise), first ``limit``."""
    stems = index.stems
    if not stems:
        raise DataError(
            f"{index.root}: no image in images/ has a mask of the same name in masks/; "
            f"run `segsweep data check {index.root}` to see what is there"
        )
    if split is not None:
        wanted = read_split(index.root, split)
        paired = set(stems)
        missing = [s for s in wanted if s not in paired]
        if missing:
            raise DataError(
                f"split {split!r} names {len(missing)} stem(s) without an image/mask pair in {index.root}, "
                f"e.g. {', '.join(missing[:3])}; fix the split file or the data set"
            )
        stems = sorted(set(wanted))
    if limit is not None:
        stems = stems[:limit]
    return stems


@dataclass(frozen=True)
class PreparedData:
    """Decoded, resized pairs: RGB uint8 images (N, S, S, 3) and 0/1 uint8 masks (N, S, S, 1).

    Loaded from the cache as read-only memory maps, so trials sharing a machine share the pages.
    ``skipped`` holds the pairs left out with ``skip_bad`` (file, problem); ``n_empty_masks`` the
    masks without an object pixel; ``soft_edges`` the masks binarised despite anti-aliased edges
    (file, share of grey pixels).
    """

    images: np.ndarray
    masks: np.ndarray
    stems: tuple[str, ...]
    image_size: int
    key: str
    skipped: tuple[tuple[str, str], ...] = ()
    n_empty_masks: int = 0
    soft_edges: tuple[tuple[str, float], ...] = ()

    def __len__(self) -> int:
        return len(self.stems)

    def quality(self) -> dict[str, Any]:
        """What cv.json records about the data beyond its size: empty masks and pairs left out."""
        n = len(self.stems)
        return {
            "n_empty_masks": self.n_empty_masks,
            "empty_mask_share": self.n_empty_masks / n if n else None,
            "mostly_empty": bool(n) and self.n_empty_masks > n / 2,
            "skipped": [{"file": f, "problem": why} for f, why in self.skipped],
            "n_soft_edge_masks": len(self.soft_edges),
            "soft_edge_max_share": max((share for _, share in self.soft_edges), default=None),
        }


def default_cache_dir() -> Path:
    env = os.environ.get("SEGSWEEP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segsweep" / "data"


def cache_key(index: DatasetIndex, stems: Sequence[str], image_size: int) -> str:
    """Key from the pairs' content (not their paths or times) and the target size."""
    paths = [p for s in stems for p in (index.images[s], index.masks[s])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(file_digest, paths))
    outer = hashlib.sha256(f"segsweep-cache/{CACHE_FORMAT}/{image_size}".encode())
    for stem, digest in zip((s for s in stems for _ in (0, 1)), digests, strict=True):
        outer.update(stem.encode() + b"\0" + digest.encode())
    return outer.hexdigest()[:32]


def _decode_pair(args: tuple[Path, Path, int, SoftEdges]) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    image_path, mask_path, size, soft_edges = args
    image = read_image(image_path)
    mask = read_mask(mask_path, soft_edges)
    turned = orientation_mismatch(image_path, mask_path)
    if turned:
        raise DataError(turned)
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]}; image and mask must have the same size"
        )
    # Area interpolation for images (no aliasing when shrinking); masks are binarised first and
    # resized nearest so they stay 0/1 without a second threshold.
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, mask


def _decode_or_problem(args: tuple[Path, Path, int, SoftEdges]) -> tuple[np.ndarray, np.ndarray] | BadFileError:
    try:
        return _decode_pair(args)
    except BadFileError as exc:
        return exc


def prepare_dataset(
    root: str | Path,
    image_size: int,
    *,
    split: str | None = None,
    limit: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
    skip_bad: bool = False,
) -> PreparedData:
    """Decode and resize the data set once, then load it from the cache.

    A file that is cut short, does not decode or is not a binary mask stops preparation with its
    name, unless ``skip_bad`` leaves its pair out (recorded in the cache entry and the result).
    All masks empty is refused; more than half empty is warned about on every call.
    """
    index = index_dataset(root)
    stems = select_stems(index, split=split, limit=limit)
    cache_root = _usable_cache_root(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    _remove_orphans(cache_root)
    key = cache_key(index, stems, image_size)
    entry = cache_root / key
    data = _load_valid_entry(entry)
    if data is None:
        _build_cache(index, stems, image_size, entry, progress, skip_bad)
        data = load_cache(entry)
    if data.skipped and not skip_bad:
        raise _bad_files_error(index.root, [BadFileError(Path(f), why, "") for f, why in data.skipped])
    if data.skipped:
        print(
            f"segsweep: warning: left out {len(data.skipped)} bad pair(s) of {index.root} (--skip-bad):",
            file=sys.stderr,
        )
        for name, why in data.skipped:
            print(f"  {name} {why}", file=sys.stderr)
    SoftEdges([(Path(f), share) for f, share in data.soft_edges]).warn()
    _check_empty_masks(index.root, data)
    return data


def _bad_files_error(root: Path, bad: Sequence[BadFileError]) -> DataError:
    more = f" (and {len(bad) - 1} more bad file(s))" if len(bad) > 1 else ""
    fix = bad[0].fix or "replace the file(s)"
    return DataError(
        f"{bad[0].path}: {bad[0].problem}{more}; {fix}, or pass --skip-bad to leave such pairs "
        f"out (`segsweep data check {root}` lists them all)"
    )


def _check_empty_masks(root: Path, data: PreparedData) -> None:
    """All masks empty: refuse. More than half: a loud warning (Dice of an empty truth is 1 when
    nothing is predicted, so such a data set scores high for a model that finds nothing)."""
    n, empty = len(data), data.n_empty_masks
    if n and empty == n:
        raise DataError(
            f"all {n} masks of the pairs used from {root} are empty (no object pixel): nothing to learn and "
            "every score would be meaningless; check that masks/ holds the right files "
            f"(`segsweep data check {root}`)"
        )
    if n and empty > n / 2:
        print(
            f"segsweep: WARNING: {empty} of the {n} masks used from {root} are empty (no object pixel); "
            "an empty truth scores Dice 1 when nothing is predicted, so scores will look high for a model "
            f"that finds nothing. Check the masks (`segsweep data check {root}`)",
            file=sys.stderr,
        )


def _usable_cache_root(cache_root: Path) -> Path:
    return ensure_writable_folder(
        cache_root,
        "the data cache",
        "point SEGSWEEP_CACHE at a writable folder (or unset it to use ~/.cache/segsweep/data)",
    )


#: A temporary folder of a preparation older than this, and not locked by a live one, is removed.
ORPHAN_AGE_SECONDS = 600
_LOCK_NAME = ".building"
_TEMP_NAME = re.compile(r"^\.[0-9a-f]{32}\.[A-Za-z0-9_]+$")


def _remove_orphans(cache_root: Path) -> None:
    """Remove temporary folders (``.KEY.xxxx``) that a killed preparation left behind.

    A live preparation holds an flock on its folder's lock file (released by the kernel when the
    process dies); the age limit covers the moment between creating the folder and locking it.
    """
    import fcntl
    import time

    for tmp in cache_root.glob(".*.*"):
        try:
            # Only our own names (".<32 hex key>.<mkdtemp suffix>"): SEGSWEEP_CACHE may hold other things.
            if not _TEMP_NAME.match(tmp.name) or not tmp.is_dir():
                continue
            if time.time() - tmp.stat().st_mtime < ORPHAN_AGE_SECONDS:
                continue
            with open(tmp / _LOCK_NAME, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a preparation is still writing it
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue


def _array_fingerprint(path: Path) -> dict[str, Any]:
    """Size and a digest of the first and last MiB: catches a truncated or rewritten array in
    milliseconds (hashing all of a 200 MB array on every load would cost more than loading it)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(size - (1 << 20))
            digest.update(handle.read())
    return {"size": size, "sample_sha256": digest.hexdigest()}


def _load_valid_entry(entry: Path) -> PreparedData | None:
    """The cache entry if it is whole; a damaged one is removed with a warning (and rebuilt)."""
    if not entry.exists():
        return None
    try:
        return load_cache(entry)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = str(exc) or type(exc).__name__
        print(f"segsweep: warning: damaged data cache entry {entry} ({why}); rebuilding it", file=sys.stderr)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def load_cache(entry: Path) -> PreparedData:
    """A cache entry checked against its meta.json (format, sizes, digests, shapes); ValueError if not."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"meta.json is not valid JSON: {exc.msg}") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"meta.json is not of cache format {CACHE_FORMAT}")
    arrays = {}
    for name in ("images", "masks"):
        path = entry / f"{name}.npy"
        if _array_fingerprint(path) != meta["files"][f"{name}.npy"]:
            raise ValueError(f"{name}.npy does not match the size and digest in meta.json")
        arrays[name] = np.load(path, mmap_mode="r")
    stems, size = tuple(meta["stems"]), int(meta["image_size"])
    if arrays["images"].shape != (len(stems), size, size, 3) or arrays["masks"].shape != (len(stems), size, size, 1):
        raise ValueError("the arrays' shapes do not match meta.json")
    skipped = tuple((str(s["file"]), str(s["problem"])) for s in meta.get("skipped", []))
    soft_edges = tuple((str(s["file"]), float(s["share"])) for s in meta["soft_edges"])
    return PreparedData(
        arrays["images"], arrays["masks"], stems, size, entry.name, skipped, int(meta["n_empty_masks"]), soft_edges
    )


def _build_cache(
    index: DatasetIndex, stems: Sequence[str], size: int, entry: Path, progress: bool | None, skip_bad: bool = False
) -> None:
    import fcntl

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    lock = open(tmp / _LOCK_NAME, "w")  # noqa: SIM115  (held for the whole build, see _remove_orphans)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        soft_edges = SoftEdges()
        jobs = [(index.images[s], index.masks[s], size, soft_edges) for s in stems]
        show = sys.stderr.isatty() if progress is None else progress
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc=f"preparing {index.root.name} at {size}px", unit="img")
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (len(stems), size, size, 3))
        masks = np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (len(stems), size, size, 1))
        bad: list[BadFileError] = []
        good: list[int] = []
        n_empty = 0
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for i, pair in enumerate(pool.map(_decode_or_problem, jobs)):
                if isinstance(pair, BadFileError):
                    bad.append(pair)
                else:
                    images[i], masks[i, ..., 0] = pair
                    n_empty += not pair[1].any()
                    good.append(i)
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()
        if bad and not skip_bad:
            raise _bad_files_error(index.root, bad)
        images.flush()
        masks.flush()
        if bad:  # keep only the good rows (rare: --skip-bad with bad files)
            for name, array in (("images", images), ("masks", masks)):
                shape = (len(good), *array.shape[1:])
                kept = np.lib.format.open_memmap(tmp / f"{name}.kept.npy", "w+", np.uint8, shape)
                kept[:] = array[good]
                kept.flush()
                del kept
                os.replace(tmp / f"{name}.kept.npy", tmp / f"{name}.npy")
        del images, masks
        kept_masks = {index.masks[stems[i]] for i in good}
        meta = {
            "format": CACHE_FORMAT,
            "image_size": size,
            "stems": [stems[i] for i in good],
            "source": str(index.root),
            "n_empty_masks": n_empty,
            "skipped": [{"file": str(b.path), "problem": b.problem} for b in bad],
            "soft_edges": [  # of the pairs kept
                {"file": str(f), "share": share} for f, share in sorted(soft_edges.found) if f in kept_masks
            ],
            "files": {name: _array_fingerprint(tmp / name) for name in ("images.npy", "masks.npy")},
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        (tmp / _LOCK_NAME).unlink()
        if entry.exists():
            shutil.rmtree(entry)  # a damaged or half-removed entry: replace it
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / "meta.json").is_file():  # not a concurrent writer that won the race
                raise
    finally:
        lock.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
