"""Data sets on disk: images/ and masks/ paired by file stem, split files, and the prepared cache.

A data set is decoded and resized once into a cache keyed by the files' content and the target
size, so the next run (or the next trial of a sweep) loads it in about a second. The cache is
written into a temporary folder and renamed into place: a crash never leaves a half cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.errors import DataError
from trainer.files import file_digest

#: Extensions OpenCV decodes that data sets in this field use.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
#: Bump when decoding or resizing changes, so old caches are not reused.
CACHE_FORMAT = 1
#: Grey level at which masks are binarised (JPEG masks carry compression noise around 0 and 255).
MASK_THRESHOLD = 128


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
        found: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or path.is_dir():
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(path)
                continue
            if path.stem in found:
                raise DataError(f"{path} and {found[path.stem]} share the stem {path.stem!r}; keep one of them")
            found[path.stem] = path
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
    """

    images: np.ndarray
    masks: np.ndarray
    stems: tuple[str, ...]
    image_size: int
    key: str

    def __len__(self) -> int:
        return len(self.stems)


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


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 image (H, W, 3). OpenCV decodes to BGR; encoders were trained on RGB."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot decode image {path}; run `segsweep data check` on its data set")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """A 0/1 uint8 mask (H, W). 0/255 masks (JPEG noise included) binarise at 128; 0/1 masks stay."""
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DataError(f"cannot decode mask {path}; run `segsweep data check` on its data set")
    threshold = 1 if mask.max() <= 1 else MASK_THRESHOLD
    return (mask >= threshold).astype(np.uint8)


def _decode_pair(args: tuple[Path, Path, int]) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    image_path, mask_path, size = args
    image = read_image(image_path)
    mask = read_mask(mask_path)
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


def prepare_dataset(
    root: str | Path,
    image_size: int,
    *,
    split: str | None = None,
    limit: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
) -> PreparedData:
    """Decode and resize the data set once, then load it from the cache."""
    index = index_dataset(root)
    stems = select_stems(index, split=split, limit=limit)
    key = cache_key(index, stems, image_size)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = cache_root / key
    if not (entry / "meta.json").is_file():
        _build_cache(index, stems, image_size, entry, progress)
    return load_cache(entry)


def load_cache(entry: Path) -> PreparedData:
    meta = json.loads((entry / "meta.json").read_text())
    images = np.load(entry / "images.npy", mmap_mode="r")
    masks = np.load(entry / "masks.npy", mmap_mode="r")
    return PreparedData(images, masks, tuple(meta["stems"]), int(meta["image_size"]), entry.name)


def _build_cache(index: DatasetIndex, stems: Sequence[str], size: int, entry: Path, progress: bool | None) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (len(stems), size, size, 3))
        masks = np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (len(stems), size, size, 1))
        jobs = [(index.images[s], index.masks[s], size) for s in stems]
        show = sys.stderr.isatty() if progress is None else progress
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc=f"preparing {index.root.name} at {size}px", unit="img")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for i, (image, mask) in enumerate(pool.map(_decode_pair, jobs)):
                images[i] = image
                masks[i, ..., 0] = mask
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()
        images.flush()
        masks.flush()
        del images, masks
        meta = {"format": CACHE_FORMAT, "image_size": size, "stems": list(stems), "source": str(index.root)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        if entry.exists() and not (entry / "meta.json").is_file():
            shutil.rmtree(entry)  # a half-removed entry from a manual clean-up: replace it
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / "meta.json").is_file():  # not a concurrent writer that won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
