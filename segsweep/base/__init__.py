"""The project-wide base every segsweep package builds on: errors, environment, files, secrets, signals.

``errors`` (what a user can fix), ``env`` (set before anything imports Keras; imported first by every
package), ``files`` (atomic writes, strict JSON, digests, staging, a full disk in one line),
``secrets`` (redaction), ``signals`` (handlers for a block). It imports nothing of ``trainer``,
``sweeps``, ``search_spaces`` or ``reports``, so any of them can import it.
"""

from __future__ import annotations


def version() -> str:
    """segsweep's installed version (what cv.json, model bundles and ``--version`` record)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("segsweep")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
