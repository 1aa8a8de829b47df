"""``segsweep data check``: every problem of a data set folder, each naming its file, in one pass.

A data set is a folder with images/ and masks/ whose files pair by stem (see trainer.data), plus
optional split files (``*.txt`` beside them, as Kvasir-Instrument has, or in ``splits/``, as our
Kvasir-SEG copy has). The check reads every file once, on a thread pool (OpenCV decodes outside the
GIL), so the 1000 pairs of Kvasir-SEG take a few seconds.

Errors are problems that stop training or silently change what it learns (a missing partner, a file
that does not decode or is cut short, sizes that differ, masks that are not binary, split files naming
stems that are not pairs). Warnings are worth a look but harmless (an empty mask, a stray file that
segsweep ignores).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from segsweep.base.errors import DataError
from trainer.data import IMAGE_EXTENSIONS, hidden_files_warning, hidden_image_files, read_split
from trainer.decode import SOFT_EDGE_FIX, BadFileError, SoftEdges, orientation_mismatch, read_image, read_mask

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem: how bad it is, which file, what is wrong and how to fix it."""

    severity: Severity
    path: Path
    problem: str
    fix: str


@dataclass
class CheckReport:
    """What ``check_dataset`` found in a data set folder."""

    root: Path
    findings: list[Finding] = field(default_factory=list)
    n_images: int = 0
    n_masks: int = 0
    n_pairs: int = 0
    split_files: dict[Path, int] = field(default_factory=dict)  # split file -> number of stems

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """A readable summary: counts, then one line per finding, then the verdict."""
        lines = [f"data set {self.root}"]
        lines.append(f"  {self.n_images} images, {self.n_masks} masks, {self.n_pairs} image/mask pairs")
        if self.split_files:
            splits = ", ".join(f"{self._show(p)} ({n} stems)" for p, n in self.split_files.items())
            lines.append(f"  split files: {splits}")
        order = {"error": 0, "warning": 1}
        for finding in sorted(self.findings, key=lambda f: (order[f.severity], str(f.path))):
            lines.append(f"  {finding.severity:<7} {self._show(finding.path)}: {finding.problem} (fix: {finding.fix})")
        n_err, n_warn = len(self.errors), len(self.warnings)
        verdict = f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}"
        if n_err:
            verdict += ": fix the errors before training on this data set"
        else:
            verdict += ": the data set is usable"
        lines.append(verdict)
        return "\n".join(lines)

    def _show(self, path: Path) -> str:
        if path == self.root:
            return str(path)
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def run_check_command(path: Path) -> int:
    """``segsweep data check PATH``: print the report; exit 2 when there is an error, 0 otherwise."""
    report = check_dataset(path)
    print(report.format())
    return 2 if report.errors else 0


def check_dataset(path: str | Path, *, workers: int | None = None) -> CheckReport:
    """Check a data set folder and return every problem found (never raises for a bad data set)."""
    root = Path(path)
    report = CheckReport(root)
    if not root.exists():
        report.findings.append(
            Finding("error", root, "does not exist", "pass the folder that holds images/ and masks/")
        )
        return report
    if not root.is_dir():
        report.findings.append(
            Finding("error", root, "is not a folder", "pass the folder that holds images/ and masks/")
        )
        return report

    images = _scan_folder(root / "images", report)
    masks = _scan_folder(root / "masks", report)
    report.n_images, report.n_masks = len(images), len(masks)
    if (root / "images").is_dir() and (root / "masks").is_dir() and not images and not masks:
        report.findings.append(
            Finding(
                "error",
                root,
                f"images/ and masks/ hold no image files ({', '.join(IMAGE_EXTENSIONS)})",
                "put the images in images/ and their masks, with the same names, in masks/",
            )
        )

    pairs = sorted(set(images) & set(masks))
    report.n_pairs = len(pairs)
    for stem in sorted(set(images) - set(masks)):
        if (root / "masks").is_dir():
            report.findings.append(
                Finding(
                    "error",
                    images[stem],
                    f"has no mask (nothing named masks/{stem}.*)",
                    f"add its mask as masks/{stem}.png (or .jpg), or remove the image",
                )
            )
    for stem in sorted(set(masks) - set(images)):
        if (root / "images").is_dir():
            report.findings.append(
                Finding(
                    "error",
                    masks[stem],
                    f"has no image (nothing named images/{stem}.*)",
                    f"add its image as images/{stem}.jpg (or .png), or remove the mask",
                )
            )

    soft_edges = SoftEdges()
    jobs = [(p, False, soft_edges) for p in images.values()] + [(p, True, soft_edges) for p in masks.values()]
    with ThreadPoolExecutor(max_workers=workers or min(8, 2 * (os.cpu_count() or 2))) as pool:
        inspected = dict(zip([p for p, _, _ in jobs], pool.map(_inspect_file, jobs), strict=True))
    for info in inspected.values():
        report.findings.extend(info.findings)
    soft_edge_summary = soft_edges.summary()
    if soft_edge_summary:  # one finding for them all, as training and predict give one warning
        report.findings.append(Finding("warning", root / "masks", soft_edge_summary, SOFT_EDGE_FIX))

    for stem in pairs:
        image_shape, mask_shape = inspected[images[stem]].shape, inspected[masks[stem]].shape
        if image_shape is not None and mask_shape is not None and image_shape != mask_shape:
            report.findings.append(
                Finding(
                    "error",
                    masks[stem],
                    f"is {mask_shape[1]}x{mask_shape[0]} but its image {images[stem].name} is "
                    f"{image_shape[1]}x{image_shape[0]}",
                    "export the mask at the image's size",
                )
            )
        elif image_shape is not None and mask_shape is not None:
            turned = orientation_mismatch(images[stem], masks[stem])
            if turned:  # training refuses the pair too (trainer.data._decode_pair)
                problem, fix = turned.split("; ", 1)
                report.findings.append(Finding("error", images[stem], "has " + problem.split(" has ", 1)[1], fix))

    _check_split_files(root, set(pairs), report)
    return report


def _scan_folder(folder: Path, report: CheckReport) -> dict[str, Path]:
    """Image files of ``folder`` by stem; stray files, subfolders and shared stems become findings."""
    if not folder.is_dir():
        report.findings.append(
            Finding(
                "error",
                folder,
                f"missing: a data set needs both images/ and masks/ in {folder.parent}",
                f"create {folder.name}/ with the {folder.name}, paired with the other folder by file name",
            )
        )
        return {}
    hidden = hidden_image_files(folder)
    if hidden:
        problem, fix = hidden_files_warning(folder, hidden).split("; ")
        report.findings.append(Finding("warning", folder, problem.replace(f" in {folder}", ""), fix))
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            report.findings.append(
                Finding(
                    "warning",
                    path,
                    f"is a subfolder; segsweep reads only the files directly in {folder.name}/ and ignores it",
                    f"move its files up into {folder.name}/ if they belong to the data set",
                )
            )
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            report.findings.append(
                Finding(
                    "warning",
                    path,
                    f"is not an image file (extension {path.suffix or 'none'!r}); segsweep ignores it",
                    f"move it out of {folder.name}/, or convert it to one of {', '.join(IMAGE_EXTENSIONS)}",
                )
            )
        elif path.stem in found:
            report.findings.append(
                Finding(
                    "error",
                    path,
                    f"shares the stem {path.stem!r} with {found[path.stem].name}",
                    "keep one of the two files",
                )
            )
        else:
            found[path.stem] = path
    return found


@dataclass(frozen=True)
class _FileInfo:
    shape: tuple[int, int] | None  # (height, width) when the file decoded
    findings: list[Finding]


def _inspect_file(job: tuple[Path, bool, SoftEdges]) -> _FileInfo:
    """Read one image or mask with the reader training uses: complete, decodable, a binary mask."""
    path, is_mask, soft_edges = job
    try:
        if not is_mask:
            image = read_image(path)
            return _FileInfo((int(image.shape[0]), int(image.shape[1])), [])
        mask = read_mask(path, soft_edges)
        shape = (int(mask.shape[0]), int(mask.shape[1]))
    except BadFileError as exc:
        return _FileInfo(None, [Finding("error", exc.path, exc.problem, exc.fix)])
    if not mask.any():
        fix = "fine for an image without an object; otherwise re-export the mask"
        finding = Finding("warning", path, "is empty (no object pixel)", fix)
        return _FileInfo(shape, [finding])
    return _FileInfo(shape, [])


def _check_split_files(root: Path, pairs: set[str], report: CheckReport) -> None:
    """Every split file (``*.txt`` beside images/ or in splits/) must name only image/mask pairs."""
    for split_path in _split_files(root):
        try:
            stems = read_split(root, str(split_path))
        except DataError:
            report.findings.append(Finding("warning", split_path, "lists no stems", "fill it or remove it"))
            continue
        report.split_files[split_path] = len(stems)
        missing = [s for s in stems if s not in pairs]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            report.findings.append(
                Finding(
                    "error",
                    split_path,
                    f"names {len(missing)} of its {len(stems)} stems without an image/mask pair: {shown}",
                    "remove those lines, or add the missing images and masks",
                )
            )
        repeated = len(stems) - len(set(stems))
        if repeated:
            report.findings.append(
                Finding(
                    "warning",
                    split_path,
                    f"names {repeated} stem(s) more than once",
                    "remove the repeated lines",
                )
            )


def _split_files(root: Path) -> Iterable[Path]:
    yield from sorted(root.glob("*.txt"))
    yield from sorted((root / "splits").glob("*.txt"))
