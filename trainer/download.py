"""``segsweep data download``: fetch an official data set archive, unpack it, verify it file by file.

After ``segsweep data download kvasir-seg --to DIR`` the folder DIR holds ``images/`` and ``masks/``
at its root, ready for ``--data DIR``: the official archives wrap everything in a top folder
(``Kvasir-SEG/``, ``kvasir-instrument/``), which is dropped while unpacking, and the archives nested
inside (Kvasir-Instrument ships ``images.tar.gz`` and ``masks.tar.gz``) are unpacked in place. Other
files of the archive (``kavsir_bboxes.json``, ``train.txt``, ...) land beside images/.

The download goes to ``DIR/NAME.zip.part`` and resumes with an HTTP Range request after an
interruption, within the same command (a few attempts) or when the command is run again; a server
that ignores Range sends the whole file and the download restarts from zero. Unpacking never
overwrites a file that is already in DIR: verification then names it if it differs.

Kvasir-SEG is verified against the sha256 manifest shipped in ``trainer/manifests``. No manifest is
shipped for Kvasir-Instrument; its layout is checked instead (images/, masks/, train.txt, test.txt,
every listed stem an image/mask pair), and the archive's own CRCs guard the transfer.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import IO

from segsweep.base.errors import ConfigError, DataError
from segsweep.base.files import atomic_path, file_digest
from trainer.data import index_dataset, read_split
from trainer.data_check import Finding

_CHUNK = 1 << 16
_USER_AGENT = "segsweep (python urllib)"


@dataclass(frozen=True)
class DatasetSource:
    """Where an official data set is published and how its unpacked copy is verified."""

    name: str
    url: str
    manifest: str | None  # file name in trainer/manifests, None when no manifest is shipped
    split_files: tuple[str, ...] = ()  # split files the layout must hold beside images/

    @property
    def archive_name(self) -> str:
        return f"{self.name}.zip"


SOURCES: dict[str, DatasetSource] = {
    "kvasir-seg": DatasetSource(
        "kvasir-seg", "https://datasets.simula.no/downloads/kvasir-seg.zip", "kvasir-seg.sha256"
    ),
    "kvasir-instrument": DatasetSource(
        "kvasir-instrument",
        "https://datasets.simula.no/downloads/kvasir-instrument.zip",
        None,
        ("train.txt", "test.txt"),
    ),
}


def run_download_command(
    name: str,
    to: Path,
    url: str | None = None,
    *,
    manifest: Path | None = None,
    progress: bool | None = None,
    attempts: int = 3,
    retry_delay: float = 2.0,
) -> int:
    """Download, unpack and verify data set ``name`` into ``to``; 0 when verified, 2 otherwise.

    ``manifest`` replaces the shipped sha256 manifest (lines ``<sha256>  <path relative to the root>``).
    Raises DataError when the archive cannot be fetched or read.
    """
    source = SOURCES.get(name)
    if source is None:
        raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(SOURCES)}")
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    entries = load_manifest(manifest) if manifest is not None else packaged_manifest(source)

    if entries is not None and (to / "images").is_dir() and not _errors(verify_manifest(to, entries)):
        print(f"{source.name} is already in {to} and matches its manifest ({len(entries)} files)")
        return 0

    archive = to / source.archive_name
    if archive.is_file():
        print(f"using the archive already downloaded: {archive}")
    else:
        fetch(url or source.url, archive, progress=progress, attempts=attempts, retry_delay=retry_delay)

    print(f"unpacking {archive.name} into {to}")
    findings = unpack_archive(archive, to)
    if entries is not None:
        findings += verify_manifest(to, entries)
        what = f"{len(entries)} files checked against the sha256 manifest"
    else:
        print(
            f"no checksum manifest is shipped for {source.name}: checking the layout only "
            "(the archive's CRCs guarded the transfer)"
        )
        findings += verify_layout(to, source.split_files)
        what = "layout checked"

    for finding in findings:
        shown = finding.path.relative_to(to) if finding.path.is_relative_to(to) else finding.path
        print(f"  {finding.severity:<7} {shown}: {finding.problem} (fix: {finding.fix})")
    errors = _errors(findings)
    if errors:
        print(
            f"{source.name}: verification failed, {len(errors)} problem(s) ({what}); nothing was deleted, "
            f"the archive is kept at {archive}"
        )
        return 2
    archive.unlink()
    print(f"{source.name} is ready in {to} ({what}); removed the downloaded archive {archive.name}")
    return 0


def _errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


# --- unpacking ------------------------------------------------------------------------------------

_NESTED_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def unpack_archive(archive: Path, to: Path) -> list[Finding]:
    """Unpack a zip into ``to`` without its single top folder, then the tarballs it held at the top.

    Files already present are kept, never overwritten. Returns findings for members that could not
    be unpacked (a CRC error names a corrupt file).
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and not _is_junk(m.filename)]
            names = _normalised_names([m.filename for m in members], folder_for_flat=None)
            findings: list[Finding] = []
            written: set[Path] = set()
            nested: list[Path] = []
            for member, name in zip(members, names, strict=True):
                if name is None:
                    continue
                dest = to / name
                if "/" not in name and name.endswith(_NESTED_SUFFIXES):
                    nested.append(dest)
                try:
                    with zf.open(member) as source:
                        if _write_new(source, dest):
                            written.add(dest)
                except (zipfile.BadZipFile, OSError) as exc:
                    findings.append(
                        Finding(
                            "error",
                            dest,
                            f"cannot be unpacked from {archive.name}: {exc}",
                            f"delete {archive} (it is damaged) and run the command again",
                        )
                    )
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"{archive} is not a readable zip archive ({exc}); delete it and run the command again"
        ) from exc
    for tarball in nested:
        if not tarball.is_file():
            continue
        problems = _unpack_tarball(tarball, to)
        findings += problems
        if not problems and tarball in written:
            tarball.unlink()  # unpacked from our own download just now: not a file of the user
    return findings


_REDOWNLOAD = "check that the archive is the official one (--url), remove the unpacked files and run the command again"


def _unpack_tarball(tarball: Path, to: Path) -> list[Finding]:
    folder = tarball.name
    for suffix in _NESTED_SUFFIXES:
        folder = folder.removesuffix(suffix)
    try:
        with tarfile.open(tarball) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and not _is_junk(m.name)]
            names = _normalised_names([m.name for m in members], folder_for_flat=folder)
            for member, name in zip(members, names, strict=True):
                source = tf.extractfile(member)
                if name is not None and source is not None:
                    with source:
                        _write_new(source, to / name)
    except (tarfile.TarError, OSError, EOFError) as exc:
        fix = f"delete {tarball} and run the command again"
        return [Finding("error", tarball, f"cannot be unpacked: {exc}", fix)]
    return []


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return not parts or parts[0] == "__MACOSX" or parts[-1] in (".DS_Store", "Thumbs.db")


def _normalised_names(names: Sequence[str], *, folder_for_flat: str | None) -> list[str | None]:
    """Relative destinations: a single top folder wrapping everything is dropped; unsafe names -> None.

    A tarball named after a data set folder (images.tar.gz) may hold ``images/x.jpg`` (kept) or a
    flat ``x.jpg`` (put into ``images/``).
    """
    parts = [tuple(p for p in PurePosixPath(n).parts if p not in (".", "")) for n in names]
    tops = {p[0] for p in parts if p}
    keep_top = folder_for_flat is not None and tops == {folder_for_flat}
    if len(tops) == 1 and all(len(p) > 1 for p in parts) and not keep_top:
        parts = [p[1:] for p in parts]
    result: list[str | None] = []
    for p in parts:
        if not p or ".." in p or PurePosixPath(*p).is_absolute():
            result.append(None)
        elif folder_for_flat is not None and len(p) == 1:
            result.append(f"{folder_for_flat}/{p[0]}")
        else:
            result.append("/".join(p))
    return result


def _write_new(source: IO[bytes], dest: Path) -> bool:
    """Write ``dest`` from ``source`` unless it exists (then keep it); True when written."""
    if dest.exists():
        return False
    with atomic_path(dest, suffix=".unpacking") as tmp, open(tmp, "wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)
    return True


# --- verification ---------------------------------------------------------------------------------


def packaged_manifest(source: DatasetSource) -> dict[str, str] | None:
    """The sha256 manifest shipped for ``source``, or None when there is none."""
    if source.manifest is None:
        return None
    resource = resources.files("trainer") / "manifests" / source.manifest
    return _parse_manifest(resource.read_text(), f"trainer/manifests/{source.manifest}")


def load_manifest(path: Path) -> dict[str, str]:
    """``path`` in sha256sum format: ``<64 hex digits>  <relative path>`` per line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DataError(f"cannot read the manifest {path}: {exc.strerror or exc}") from exc
    return _parse_manifest(text, str(path))


def _parse_manifest(text: str, origin: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.rstrip())
        if not match:
            raise DataError(f"{origin} line {number} is not '<sha256>  <path>': {line[:80]!r}")
        entries[match.group(2)] = match.group(1).lower()
    if not entries:
        raise DataError(f"manifest {origin} lists no files")
    return entries


def verify_manifest(root: Path, entries: dict[str, str], *, workers: int = 4) -> list[Finding]:
    """Every listed file present with its sha256; files beside them that are not listed -> warnings."""
    paths = [root / rel for rel in entries]
    present = [p for p in paths if p.is_file()]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = dict(zip(present, pool.map(file_digest, present), strict=True))
    findings: list[Finding] = []
    for rel, expected in entries.items():
        path = root / rel
        actual = digests.get(path)
        if actual is None:
            findings.append(Finding("error", path, "is missing (listed in the manifest)", "run the command again"))
        elif actual != expected:
            findings.append(
                Finding(
                    "error",
                    path,
                    f"has sha256 {actual[:16]}… but the manifest says {expected[:16]}…",
                    "delete this file and run the command again (existing files are never overwritten)",
                )
            )
    listed_folders = {(root / rel).parent for rel in entries}
    listed = set(paths)
    for folder in sorted(listed_folders):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.is_file() and path not in listed and not path.name.startswith("."):
                findings.append(Finding("warning", path, "is not in the manifest", "remove it if it does not belong"))
    return findings


def verify_layout(root: Path, split_files: Sequence[str]) -> list[Finding]:
    """images/ and masks/ present and paired, the split files present, every listed stem a pair."""
    try:
        index = index_dataset(root)
    except DataError as exc:
        return [Finding("error", root, str(exc), _REDOWNLOAD)]
    findings = [Finding("error", index.images[s], "has no mask", _REDOWNLOAD) for s in index.images_without_mask]
    findings += [Finding("error", index.masks[s], "has no image", _REDOWNLOAD) for s in index.masks_without_image]
    pairs = set(index.stems)
    for name in split_files:
        path = root / name
        if not path.is_file():
            findings.append(Finding("error", path, "is missing", _REDOWNLOAD))
            continue
        try:
            stems = read_split(root, str(path))
        except DataError as exc:
            findings.append(Finding("error", path, str(exc), _REDOWNLOAD))
            continue
        unpaired = [s for s in stems if s not in pairs]
        if unpaired:
            findings.append(
                Finding(
                    "error",
                    path,
                    f"names {len(unpaired)} stem(s) without an image/mask pair: {', '.join(unpaired[:10])}",
                    _REDOWNLOAD,
                )
            )
    return findings


# --- fetching (resumable) ------------------------------------------------------------------------


def fetch(
    url: str,
    dest: Path,
    *,
    progress: bool | None = None,
    attempts: int = 3,
    retry_delay: float = 2.0,
    timeout: float = 60.0,
) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming after interruptions."""
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            _fetch_once(url, part, progress=progress, timeout=timeout)
            break
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code not in (408, 429):
                raise DataError(f"{url} answered HTTP {exc.code} {exc.reason}; check the address (--url)") from exc
            failure: Exception = exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            failure = exc
        have = part.stat().st_size if part.exists() else 0
        if attempt == attempts:
            raise DataError(
                f"downloading {url} failed ({_describe(failure)}); {part} keeps the {have} bytes "
                "received: run the same command again to resume"
            ) from failure
        print(
            f"download interrupted ({_describe(failure)}); resuming at byte {have} "
            f"(attempt {attempt + 1} of {attempts})",
            file=sys.stderr,
        )
        time.sleep(retry_delay * attempt)
    os.replace(part, dest)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _fetch_once(url: str, part: Path, *, progress: bool | None, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Nothing left to send: the part is complete if the server's size agrees, else start over.
            total = _content_range_total(exc.headers.get("Content-Range"))
            exc.close()
            if total == offset:
                return
            part.unlink()
            _fetch_once(url, part, progress=progress, timeout=timeout)
            return
        raise
    with response:
        mode = "wb"
        if offset and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start == offset:
                mode = "ab"
        if mode == "wb":
            if offset:
                print("the server does not resume downloads: starting again from zero", file=sys.stderr)
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        _stream(response, part, mode, offset, total, progress)
    size = part.stat().st_size
    if total is not None and size < total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")


def _stream(response: IO[bytes], part: Path, mode: str, offset: int, total: int | None, progress: bool | None) -> None:
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    with (
        open(part, mode) as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            file=sys.stderr,
            disable=not show,
        ) as bar,
    ):
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _content_range_total(value: str | None) -> int | None:
    match = re.match(r"bytes (?:\*|\d+-\d+)/(\d+)", value or "")
    return int(match.group(1)) if match else None
