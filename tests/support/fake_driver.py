"""The ``segsweep`` command with the stand-in cross-validation (tests.support.fake_cv) in its trials.

The real-cluster tests (a Slurm job, a Ray Job) submit sweeps whose driver is started by the
cluster, not by the test: ``segsweep sweep run`` found on the job's PATH. They put the wrapper that
``install`` writes first on that PATH, so everything the job runs is real (the batch script, Ray
on the job's node, the driver, Optuna, the sweep folder, stop and resume) except the training,
which takes seconds instead of minutes. ``SEGSWEEP_FAKE_CV`` (JSON, as fake.json) sets the seconds
per fold where the test cannot place fake.json in a sweep folder the driver creates.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from tests.support.fake_cv import SETTINGS_ENV

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    import sweeps.cli  # first: it sets the Keras environment before anything imports TensorFlow
    import sweeps.runner
    from tests.support.fake_cv import fake_run_cv

    # The CLI imports these from sweeps.runner when a verb runs, so it finds the patched ones.
    sweeps.runner.run_sweep = functools.partial(sweeps.runner.run_sweep, cv_runner=fake_run_cv)  # type: ignore[assignment]
    sweeps.runner.resume_sweep = functools.partial(sweeps.runner.resume_sweep, cv_runner=fake_run_cv)  # type: ignore[assignment]
    return sweeps.cli.main()


def environment(settings: dict[str, Any]) -> dict[str, str]:
    """What the processes of the job need: the repository (for ``tests``) importable, the settings."""
    return {"PYTHONPATH": str(REPO), SETTINGS_ENV: json.dumps(settings)}


def install(bin_dir: Path) -> Path:
    """Write ``bin_dir/segsweep`` running this module with this interpreter; ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "segsweep"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tests.support.fake_driver "$@"\n')
    wrapper.chmod(0o755)
    return bin_dir


if __name__ == "__main__":
    sys.exit(main())
