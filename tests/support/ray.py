"""Ray in tests: a tiny search space, token auth in a private temp folder, waiting, cleaning up by pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sweeps.folder import read_events
from sweeps.spec import SweepSpec
from tests.support.synth import make_dataset

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


def tiny_sweep_spec(tmp_path: Path, name: str, fake_settings: dict[str, Any], **options: Any) -> SweepSpec:
    """A sweep of the tiny space on 12 synthetic pairs, with the stand-in CV's settings beside it."""
    data = make_dataset(tmp_path / "data", 12)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    (tmp_path / "out" / name).mkdir(parents=True)
    (tmp_path / "out" / name / "fake.json").write_text(json.dumps(fake_settings))
    return SweepSpec(
        name=name,
        data=str(data),
        space=str(tmp_path / "tiny.yaml"),
        storage=str(tmp_path / "out"),
        **{"trials": 4, "tracker": "none", **options},
    )


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found
