"""``segsweep data download`` against a loopback HTTP server serving small archives built here.

No test contacts any address but 127.0.0.1: every call passes the local server's URL.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from segsweep.base.errors import ConfigError, DataError
from trainer.download import SOURCES, packaged_manifest, run_download_command, verify_manifest


@dataclass
class LoopbackServer:
    """Serves ``files`` by path with HTTP Range support; can cut responses short or ignore Range."""

    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    cut_next: int = 0  # the next N responses stop half-way and drop the connection
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _handler(state: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            state.requests.append((self.path, range_header))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            status, start = 200, 0
            if match and not state.ignore_range:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            payload = body[start:]
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if state.cut_next:
                state.cut_next -= 1
                self.wfile.write(payload[: len(payload) // 2])
                self.close_connection = True
                return
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    state = LoopbackServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _seg_files(root: Path) -> dict[str, bytes]:
    folders = ("images", "masks")
    return {f"{sub}/{p.name}": p.read_bytes() for sub in folders for p in sorted((root / sub).iterdir())}


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar_gz(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def seg_archive(kvasir_seg_dir: Path, tmp_path: Path) -> tuple[dict[str, bytes], Path]:
    """The synthetic set's files (as in the official zip, under Kvasir-SEG/) and their manifest."""
    files = _seg_files(kvasir_seg_dir)
    manifest = tmp_path / "test.sha256"
    manifest.write_text("".join(f"{_sha256(data)}  {name}\n" for name, data in files.items()))
    return files, manifest


def _official_seg_zip(files: dict[str, bytes]) -> bytes:
    entries = {f"Kvasir-SEG/{name}": data for name, data in files.items()}
    entries["Kvasir-SEG/kavsir_bboxes.json"] = b"{}"
    return _zip(entries)


def test_download_unpacks_to_the_root_and_verifies(
    server: LoopbackServer,
    seg_archive: tuple[dict[str, bytes], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files, manifest = seg_archive
    server.files["/kvasir-seg.zip"] = _official_seg_zip(files)
    dest = tmp_path / "data"
    code = run_download_command("kvasir-seg", dest, server.url("/kvasir-seg.zip"), manifest=manifest, progress=True)
    out, err = capsys.readouterr()
    assert code == 0, out
    assert "100%" in err  # the progress bar goes to stderr
    assert sorted(p.name for p in dest.iterdir()) == ["images", "kavsir_bboxes.json", "masks"]
    assert {f"{p.parent.name}/{p.name}": p.read_bytes() for p in dest.glob("*/*")} == files
    assert "24 files checked against the sha256 manifest" in out

    # Run again: already verified, nothing fetched.
    assert run_download_command("kvasir-seg", dest, server.url("/kvasir-seg.zip"), manifest=manifest) == 0
    assert "already" in capsys.readouterr().out
    assert len(server.requests) == 1


def test_interrupted_download_resumes_within_the_command(
    server: LoopbackServer, seg_archive: tuple[dict[str, bytes], Path], tmp_path: Path
) -> None:
    files, manifest = seg_archive
    archive = _official_seg_zip(files)
    server.files["/k.zip"] = archive
    server.cut_next = 1
    url = server.url("/k.zip")
    assert run_download_command("kvasir-seg", tmp_path, url, manifest=manifest, retry_delay=0) == 0
    assert server.requests == [("/k.zip", None), ("/k.zip", f"bytes={len(archive) // 2}-")]


def test_interrupted_download_resumes_on_the_next_run(
    server: LoopbackServer, seg_archive: tuple[dict[str, bytes], Path], tmp_path: Path
) -> None:
    files, manifest = seg_archive
    archive = _official_seg_zip(files)
    server.files["/k.zip"] = archive
    server.cut_next = 1
    with pytest.raises(DataError, match="run the same command again to resume"):
        run_download_command("kvasir-seg", tmp_path, server.url("/k.zip"), manifest=manifest, attempts=1)
    part = tmp_path / "kvasir-seg.zip.part"
    assert part.stat().st_size == len(archive) // 2
    assert run_download_command("kvasir-seg", tmp_path, server.url("/k.zip"), manifest=manifest) == 0
    assert server.requests[-1] == ("/k.zip", f"bytes={len(archive) // 2}-")
    assert not part.exists()


def test_server_ignoring_range_restarts_cleanly(
    server: LoopbackServer,
    seg_archive: tuple[dict[str, bytes], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files, manifest = seg_archive
    server.files["/k.zip"] = _official_seg_zip(files)
    server.ignore_range = True
    (tmp_path / "kvasir-seg.zip.part").write_bytes(b"stale bytes of an older download" * 50)
    assert run_download_command("kvasir-seg", tmp_path, server.url("/k.zip"), manifest=manifest) == 0
    assert server.requests[0][1] is not None  # it asked to resume ...
    assert "starting again from zero" in capsys.readouterr().err  # ... and was told no


def test_complete_part_is_not_fetched_again(
    server: LoopbackServer, seg_archive: tuple[dict[str, bytes], Path], tmp_path: Path
) -> None:
    files, manifest = seg_archive
    archive = _official_seg_zip(files)
    server.files["/k.zip"] = archive
    (tmp_path / "kvasir-seg.zip.part").write_bytes(archive)  # crashed after the last byte
    assert run_download_command("kvasir-seg", tmp_path, server.url("/k.zip"), manifest=manifest) == 0
    assert server.requests == [("/k.zip", f"bytes={len(archive)}-")]  # answered 416


def test_corrupted_and_missing_files_are_named_and_kept(
    server: LoopbackServer,
    seg_archive: tuple[dict[str, bytes], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files, manifest = seg_archive
    served = dict(files)
    served["images/case003.jpg"] = files["images/case003.jpg"][:-10] + b"0123456789"
    del served["masks/case004.jpg"]
    server.files["/k.zip"] = _official_seg_zip(served)
    assert run_download_command("kvasir-seg", tmp_path, server.url("/k.zip"), manifest=manifest) == 2
    out = capsys.readouterr().out
    assert re.search(r"images/case003\.jpg: has sha256 \w+… but the manifest says", out)
    assert "masks/case004.jpg: is missing" in out
    assert "2 problem(s)" in out
    assert (tmp_path / "images" / "case003.jpg").is_file()  # not deleted
    assert (tmp_path / "kvasir-seg.zip").is_file()  # archive kept


def test_existing_files_are_never_overwritten(
    server: LoopbackServer,
    seg_archive: tuple[dict[str, bytes], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files, manifest = seg_archive
    server.files["/k.zip"] = _official_seg_zip(files)
    mine = tmp_path / "images" / "case000.jpg"
    mine.parent.mkdir()
    mine.write_bytes(b"the user's own file")
    assert run_download_command("kvasir-seg", tmp_path, server.url("/k.zip"), manifest=manifest) == 2
    assert "images/case000.jpg: has sha256" in capsys.readouterr().out
    assert mine.read_bytes() == b"the user's own file"
    # The user removes it as told; the rerun unpacks it from the kept archive without downloading.
    mine.unlink()
    assert run_download_command("kvasir-seg", tmp_path, server.url("/k.zip"), manifest=manifest) == 0
    assert len(server.requests) == 1


def test_damaged_archive_member_is_named(
    server: LoopbackServer,
    seg_archive: tuple[dict[str, bytes], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files, manifest = seg_archive
    archive = bytearray(_official_seg_zip(files))
    where = bytes(archive).index(files["masks/case002.jpg"]) + 100
    archive[where] ^= 0xFF  # the member's CRC no longer matches
    server.files["/k.zip"] = bytes(archive)
    assert run_download_command("kvasir-seg", tmp_path, server.url("/k.zip"), manifest=manifest) == 2
    out = capsys.readouterr().out
    assert "masks/case002.jpg: cannot be unpacked from kvasir-seg.zip" in out
    assert "masks/case002.jpg: is missing" in out


def _instrument_zip(root: Path, test_txt: bytes | None = None) -> bytes:
    images = {f"images/{p.name}": p.read_bytes() for p in sorted((root / "images").iterdir())}
    masks = {f"masks/{p.name}": p.read_bytes() for p in sorted((root / "masks").iterdir())}
    return _zip(
        {
            "kvasir-instrument/images.tar.gz": _tar_gz(images),
            "kvasir-instrument/masks.tar.gz": _tar_gz(masks),
            "kvasir-instrument/train.txt": (root / "train.txt").read_bytes(),
            "kvasir-instrument/test.txt": test_txt or (root / "test.txt").read_bytes(),
        }
    )


def test_kvasir_instrument_layout_is_checked(
    server: LoopbackServer,
    kvasir_instrument_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server.files["/ki.zip"] = _instrument_zip(kvasir_instrument_dir)
    assert run_download_command("kvasir-instrument", tmp_path, server.url("/ki.zip")) == 0
    out = capsys.readouterr().out
    assert "no checksum manifest is shipped for kvasir-instrument" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "masks", "test.txt", "train.txt"]
    assert len(list((tmp_path / "masks").glob("*.png"))) == 12


def test_kvasir_instrument_split_naming_a_missing_pair_fails(
    server: LoopbackServer,
    kvasir_instrument_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server.files["/ki.zip"] = _instrument_zip(kvasir_instrument_dir, test_txt=b"case011\nghost\n")
    assert run_download_command("kvasir-instrument", tmp_path, server.url("/ki.zip")) == 2
    assert "test.txt: names 1 stem(s) without an image/mask pair: ghost" in capsys.readouterr().out


def test_http_error_names_the_address(server: LoopbackServer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"HTTP 404.*--url"):
        run_download_command("kvasir-seg", tmp_path, server.url("/nothing.zip"))


def test_not_a_zip(server: LoopbackServer, tmp_path: Path) -> None:
    server.files["/k.zip"] = b"<html>maintenance</html>"
    with pytest.raises(DataError, match="not a readable zip archive"):
        run_download_command("kvasir-seg", tmp_path, server.url("/k.zip"))
    assert (tmp_path / "kvasir-seg.zip").is_file()  # kept for the user to look at


def test_unknown_data_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kvasir-seg, kvasir-instrument"):
        run_download_command("kvasir", tmp_path)


def test_shipped_manifest_lists_every_kvasir_seg_pair() -> None:
    entries = packaged_manifest(SOURCES["kvasir-seg"])
    assert entries is not None and len(entries) == 2000
    images = {Path(p).stem for p in entries if p.startswith("images/")}
    masks = {Path(p).stem for p in entries if p.startswith("masks/")}
    assert len(images) == 1000 and images == masks


@pytest.mark.realdata
def test_real_kvasir_seg_matches_the_shipped_manifest(real_kvasir_seg: Path) -> None:
    entries = packaged_manifest(SOURCES["kvasir-seg"])
    assert entries is not None
    assert verify_manifest(real_kvasir_seg, entries) == []
