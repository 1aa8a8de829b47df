"""Ray in tests: a tiny search space, token auth in a private temp folder, waiting, cleaning up by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sweeps.folder import read_events

TINY_SPACE = """\
name: tiny
params:
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  encoder: {type: categorical, choices: [mobilenetv2, resnet18]}
fixed:
  weights: none
  image_size: 64
  folds: 3
  epochs: 1
  batch_size: 2
"""


def reload_ray_auth_config() -> None:
    """Ray reads RAY_AUTH_MODE and the token once per process; make this process see the change."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def stop_processes_using(marker: str) -> None:
    """SIGKILL the processes whose command line names ``marker`` (our Ray temp folder), by pid."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def fold_trainings(trial_dir: Path) -> Counter[int]:
    return Counter(e["fold"] for e in read_events(trial_dir) if e["event"] == "fold_end")

