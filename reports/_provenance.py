"""Where the report's numbers came from: run times per trial, the sweep's compute, and provenance.

Training facts come from what the sweep folder recorded when the trials ran (each trial's cv.json
``runtime``: versions, threads, CPUs, GPUs; sweep.json: the specification and the data digest);
what only the reporting process knows (Ray's and Optuna's versions, the project's git commit) is
labelled as of the report.
"""

from __future__ import annotations

import shlex
import subprocess
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from segsweep.base.errors import SegsweepError
from sweeps.folder import SweepResults, TrialResult, shown_states
from trainer.models import precision_label
from trainer.results import read_cv_result

#: The project root of this source tree (a git checkout in development; site-packages when installed).
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _installed(name: str) -> str:
    try:
        return package_version(name)
    except PackageNotFoundError:
        return "not installed"


def git_commit(root: Path = _SOURCE_ROOT) -> str | None:
    """The commit of the segsweep source tree writing the report (``+ changes`` if it has uncommitted
    edits), or None when segsweep is not run from a git checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _runtime(trial: TrialResult) -> dict[str, Any]:
    cv = read_cv_result(trial.path) if trial.path is not None else None
    return dict(cv.runtime) if cv is not None and cv.runtime else {}


def run_times(sweep: SweepResults) -> tuple[list[str], list[list[str]], str]:
    """Columns and rows (one per trial, in trial order) of training time, and the total compute sentence.

    Training seconds are the folds' own (cv.json's ``seconds`` per fold: data loading and Ray's
    scheduling are left out), so their sum is the compute the trials spent training.
    """
    rows = []
    states = shown_states(sweep)
    for trial in sweep.trials:
        runtime = _runtime(trial)
        threads = runtime.get("threads")
        rows.append(
            [
                trial.label,
                states[trial.trial_id],
                f"{trial.folds_done}/{trial.n_folds}",
                f"{trial.seconds:.0f}",
                f"{trial.seconds / trial.folds_done:.0f}" if trial.folds_done else "–",
                "one per core" if runtime and threads is None else str(threads or "–"),
            ]
        )
    total = sum(t.seconds for t in sweep.trials)
    folds = sum(t.folds_done for t in sweep.trials)
    # The trials' attempts, not the driver's run records: a driver killed with its machine records no run.
    wall = sweep.running_seconds()
    sentence = (
        f"Total compute: {_duration(total)} of training over {folds} finished folds of {len(sweep.trials)} trials "
        "(fold training time only: data preparation and scheduling are not in it)"
        + (f"; the sweep ran {_duration(wall)} of wall time (its trials' attempts, pauses left out)." if wall else ".")
    )
    columns = ["trial", "state", "folds", "training seconds", "seconds per fold", "TensorFlow threads"]
    return columns, rows, sentence


def provenance(sweep: SweepResults, winner: TrialResult, command: list[str]) -> list[list[str]]:
    """Two-column rows: what produced the numbers (versions, commit, commands, machine, data)."""
    from sweeps.spec import SweepSpec
    from sweeps.submit import run_argv

    runtime = _runtime(winner)
    versions = runtime.get("versions") if isinstance(runtime.get("versions"), dict) else {}
    rows: list[list[str]] = []
    for name in ("segsweep", "tensorflow", "tf-keras", "segmentation-models"):
        recorded = versions.get(name) if versions else None
        rows.append([name, f"{recorded} (the winner's training)" if recorded else f"{_installed(name)} (this report)"])
    for name in ("ray", "optuna"):
        rows.append([name, f"{_installed(name)} (this report)"])
    commit = git_commit()
    rows.append(["git commit", f"{commit} (this report's source tree)" if commit else "not a git checkout"])
    try:
        recorded = {"storage": str(sweep.path.parent), **sweep.spec.specification}
        sweep_command = shlex.join(run_argv(SweepSpec.from_dict(recorded)))
        rows.append(["sweep command", f"`{sweep_command}` (rebuilt from sweep.json: the options that define it)"])
    except (SegsweepError, TypeError, ValueError, KeyError) as exc:  # an older or edited sweep.json
        rows.append(["sweep command", f"not rebuilt from sweep.json ({exc})"])
    rows.append(["report command", f"`{shlex.join(command)}`"])
    if runtime:
        gpus = runtime.get("gpus") or []
        threads = runtime.get("threads")
        rows.append(
            [
                "machine (the winner's training)",
                f"{runtime.get('cpus', '?')} CPUs, TensorFlow threads {threads or 'one per core'}, "
                f"inter-op threads {runtime.get('inter_op_threads') or 'TensorFlow default'}, "
                + (f"GPUs: {', '.join(map(str, gpus))}" if gpus else "no GPU")
                + f", mixed precision {precision_label(runtime)}",
            ]
        )
    else:
        rows.append(["machine (the winner's training)", "not recorded (a trial written before cv.json kept it)"])
    digest = sweep.spec.specification.get("data_key")
    cv = read_cv_result(winner.path) if winner.path is not None else None
    cache_key = (cv.data if cv else {}).get("cache_key")
    rows.append(
        [
            "data digest",
            (f"{digest} (content digest of the prepared pairs, sweep.json)" if digest else "not recorded")
            + (f"; the winner's prepared data: {cache_key}" if cache_key and cache_key != digest else ""),
        ]
    )
    return rows
