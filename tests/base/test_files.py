"""segsweep.base.files' one translation of a full disk (issue 21, case 13): every writer says it in one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from segsweep.base.errors import DiskFullError, SegsweepError
from segsweep.base.files import atomic_path, disk_full_as_error, mount_point, write_text_atomic


def test_a_write_with_no_room_is_one_line_naming_the_file_system_and_the_size(tmp_path: Path) -> None:
    with pytest.raises(DiskFullError) as caught, disk_full_as_error(tmp_path / "out", 42_000_000):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = str(caught.value)
    assert message.startswith(f"no space left on device on {mount_point(tmp_path)} (needs ~42 MB, ")
    assert f"writing {tmp_path / 'out'}; " in message and "\n" not in message
    # Still the OSError it was, for code that handles a failed write; and the CLI's kind of error.
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert isinstance(caught.value, SegsweepError)


def test_a_quota_and_tensorflows_own_error_are_translated_and_other_errors_pass(tmp_path: Path) -> None:
    with pytest.raises(DiskFullError, match=r"^disk quota exceeded on "), disk_full_as_error(tmp_path):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    tf_error = type("ResourceExhaustedError", (Exception,), {"__module__": "tensorflow.python.framework.errors_impl"})
    with pytest.raises(DiskFullError, match=r"^no space left on device on "), disk_full_as_error(tmp_path):
        raise tf_error("/x/variables.data-00000-of-00001.tempstate1; No space left on device [Op:SaveV2]")
    with pytest.raises(PermissionError), disk_full_as_error(tmp_path):
        raise PermissionError(errno.EACCES, "Permission denied")


def test_the_outer_writer_restates_the_size_of_its_whole_output(tmp_path: Path) -> None:
    """A bundle's JSON file fails after its weights: the line gives the bundle's size, not the file's."""
    with (
        pytest.raises(DiskFullError, match=r"needs ~40 MB"),
        disk_full_as_error(tmp_path, 40_000_000),
        atomic_path(tmp_path / "config.json") as partial,
    ):
        partial.write_text("{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []  # the partial file went


def test_an_atomic_write_that_fails_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.html"
    target.write_text("<html>old</html>")

    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFullError, match=r"\(needs ~0\.1 MB, "):
        write_text_atomic(target, "<html>new</html>")
    assert target.read_text() == "<html>old</html>" and [p.name for p in tmp_path.iterdir()] == ["report.html"]
