"""CLI verbs of the sweeps package: ``sweep run|resume|status`` and ``ui``."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add this package's verbs to the ``segsweep`` parser (filled in by the sweeps work)."""
    del sub


__all__ = ["register", "argparse"]
