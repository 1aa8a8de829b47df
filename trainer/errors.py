"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class SegsweepError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class ConfigError(SegsweepError):
    """An option or configuration value that cannot be used."""


class DataError(SegsweepError):
    """A data set folder that cannot be read as images/ and masks/ pairs."""


class WeightsError(SegsweepError):
    """Encoder weights that are missing, corrupt or do not fit the model."""
