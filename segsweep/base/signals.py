"""Signal handlers set for the length of a block and put back after it (main thread only)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import FrameType

Handler = Callable[[int, FrameType | None], object]


@contextlib.contextmanager
def signal_handlers(install: Mapping[int, Handler], *, keep: Iterable[int] = ()) -> Iterator[None]:
    """Install ``install``'s handlers for the block; afterwards put back the handlers these signals and
    those in ``keep`` had before it (``keep``: signals a library may take over inside the block). Off the
    main thread, where Python neither delivers signals nor lets handlers be set, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in {*install, *keep}}
    for signum, handler in install.items():
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, previous in before.items():
            if previous is not None:  # None: set outside Python, which cannot be put back from here
                signal.signal(signum, previous)
