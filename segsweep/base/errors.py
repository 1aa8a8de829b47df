"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import os


class SegsweepError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class ConfigError(SegsweepError):
    """An option or configuration value that cannot be used."""


class DataError(SegsweepError):
    """A data set folder that cannot be read as images/ and masks/ pairs."""


class WeightsError(SegsweepError):
    """Encoder weights that are missing, corrupt or do not fit the model."""


def one_line_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters: an error as a record holds it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text[:limit]


class DiskFullError(SegsweepError, OSError):
    """A write the file system (or the user's quota on it) had no room for (segsweep.base.files says it).

    Also an OSError with the original errno (ENOSPC, EDQUOT), so code that handles a failed write as
    an OSError still does; the CLI prints the message as any SegsweepError.
    """

    def __init__(self, message: str, *, errno_value: int) -> None:
        super().__init__(errno_value, os.strerror(errno_value))
        self.message = message

    def __str__(self) -> str:
        return self.message
