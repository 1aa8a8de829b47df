"""Sweeps: Ray Tune schedules Optuna-proposed trials, each a cross-validation; the sweep folder.

The Python face is :class:`Sweep` (create, run in the foreground or background, stop, read results as
pandas frames); ``sweeps.folder`` reads and writes a sweep's folder.
"""

import segsweep.base.env  # noqa: F401
from sweeps.api import Sweep, SweepRun, open_sweep

__all__ = ["Sweep", "SweepRun", "open_sweep"]
