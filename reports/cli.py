"""CLI verbs of the reports package: ``report``, ``retrain``, ``predict`` and ``count``."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add this package's verbs to the ``segsweep`` parser (filled in by the reports work)."""
    del sub
