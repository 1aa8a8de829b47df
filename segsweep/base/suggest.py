"""Suggestions for a misspelt word ("did you mean ...?"): verbs, options, spaces, encoders, keys."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``did you mean 'x'? `` naming the option closest to a misspelt ``word``; "" when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"did you mean {close[0]!r}? " if close else ""
