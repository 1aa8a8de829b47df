"""`segsweep sweep submit --slurm` on a real single-node Slurm cluster (tests/slurm_cluster.py).

The batch script starts Ray on the job's node, runs a tiny sweep (quick space, 8 synthetic pairs at
64 px, 2 folds) and stops Ray; a cancelled job is resubmitted with ``--resume`` and finishes without
training a finished fold again. All of it is real (sbatch, srun, the script, Ray, the driver, the
sweep folder) but the training: the job's ``segsweep`` is tests.support.fake_driver, whose folds
take seconds (the real training has its own tests; a real-training job ran here before, see the
issue 13 notes). Skipped where Slurm is not installed (``.ci/run`` installs Debian's slurm-wlm
and munge). Run inside a loopback-only network namespace, as every test here.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from sweeps.folder import SweepFolder, format_leaderboard, load_sweep, read_events, read_submissions
from sweeps.submit import default_setup
from tests.support import fake_driver
from tests.support import slurm_cluster as slurm
from tests.support.synth import make_dataset

REPO = Path(__file__).resolve().parents[2]
SEGSWEEP = str(Path(sys.executable).parent / "segsweep")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.timeout(900),
    pytest.mark.skipif(slurm.missing() is not None, reason=str(slurm.missing())),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm.SlurmCluster]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp"))  # short paths: socket names have a length limit
    with slurm.slurm_cluster(root) as started:
        yield started


def _submit(cluster: slurm.SlurmCluster, *args: str) -> str:
    proc = subprocess.run(
        [SEGSWEEP, "sweep", "submit", *args], env=cluster.env, capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _job_setup(tmp_path: Path, fold_seconds: float) -> list[str]:
    """--setup lines: the usual venv, then the stand-in driver first on PATH (see the module's doc)."""
    bin_dir = fake_driver.install(tmp_path / "bin")
    exports = fake_driver.environment({"fold_seconds": fold_seconds})
    line = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in exports.items()) + f' PATH="{bin_dir}:$PATH"'
    return [arg for setup in [*default_setup(), line] for arg in ("--setup", setup)]


def _new_sweep(
    cluster: slurm.SlurmCluster, tmp_path: Path, name: str, trials: int = 2, fold_seconds: float = 0.5
) -> SweepFolder:
    data = make_dataset(tmp_path / "data", 8)
    storage = tmp_path / "sweeps"
    _submit(
        cluster,
        "--slurm",
        "--cpus-per-node",
        str(os.cpu_count() or 1),
        *_job_setup(tmp_path, fold_seconds),
        "--data",
        str(data),
        "--space",
        "quick",
        "--trials",
        str(trials),
        "--folds",
        "2",
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--scheduler",
        "none",
        "--cpus-per-trial",
        "1",
        "--tracker",
        "none",
        "--name",
        name,
        "--storage",
        str(storage),
    )
    return SweepFolder(storage / name)


def _job_ids(folder: SweepFolder) -> list[str]:
    return [str(s["job_id"]) for s in read_submissions(folder)]


def _ray_processes(job_id: str) -> list[str]:
    """Processes still running whose command line names the job's Ray folder (raylet, GCS, workers)."""
    marker, found = f"/tmp/ray-{job_id}", []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def _timeline(log: str, folder: SweepFolder) -> dict[str, float]:
    """Seconds from the job's start to Ray up, the first trial's start, the driver's end, Ray stopped."""
    stamps: dict[str, datetime] = {}
    marks = {"sweep folder": "start", "Ray is up": "ray_up", "driver ended": "driver_end", "Ray stopped": "ray_stopped"}
    for line in log.splitlines():
        for text, key in marks.items():
            if text in line and line.startswith("[segsweep] 20") and key not in stamps:
                stamps[key] = datetime.fromisoformat(line.split()[1].replace("Z", "+00:00"))
    start = stamps.get("start")
    attempts = [
        datetime.fromisoformat(e["time"])
        for t in folder.trial_dirs()
        for e in read_events(t)
        if e.get("event") == "attempt"
    ]
    firsts = [a for a in attempts if start is None or a >= start]  # this job's trials, not an earlier job's
    if firsts:
        stamps["first_trial"] = min(firsts)
    return {k: round((v - start).total_seconds(), 1) for k, v in stamps.items()} if start else {}


def test_job_runs_the_sweep_and_a_cancelled_job_resubmitted_with_resume_trains_no_fold_twice(
    cluster: slurm.SlurmCluster, tmp_path: Path
) -> None:
    """One job cancelled mid-sweep, then resubmitted: the second runs the sweep to its end and stops Ray.

    (One test, not two: each Slurm job starts Ray on its node, the bulk of a job's time here.)
    """
    folder = _new_sweep(cluster, tmp_path, "slurm2", trials=3, fold_seconds=6)
    script = folder.slurm_script.read_text()
    assert "#SBATCH --nodes=1" in script and "ray_node --head" in script and "trap stop_ray EXIT" in script
    [job] = _job_ids(folder)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # cancel once a fold has finished and the sweep has not
        ended = [e for t in folder.trial_dirs() for e in read_events(t) if e.get("event") == "fold_end"]
        if ended:
            break
        assert cluster.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), folder.slurm_log(job).read_text()
        time.sleep(1)
    else:
        raise AssertionError("no fold finished in time")
    cluster.run("scancel", job)
    assert cluster.wait_job(job, timeout=300) in ("CANCELLED", "FAILED", "COMPLETED")
    assert _ray_processes(job) == []
    first = load_sweep(folder.storage, folder.name)
    assert not all(t.state == "COMPLETE" for t in first.trials) or len(first.trials) < 3

    (folder.path / "fake.json").write_text(json.dumps({"fold_seconds": 0.5}))  # the resumed job's folds: quicker
    _submit(cluster, folder.name, "--storage", str(folder.storage), "--resume")
    second = _job_ids(folder)[-1]
    assert second != job
    state = cluster.wait_job(second, timeout=600)
    log = folder.slurm_log(second).read_text() if folder.slurm_log(second).is_file() else "(no job log)"
    assert state == "COMPLETED", log[-4000:] + cluster.logs()
    assert "resuming the sweep" in log
    assert str(folder.path) in log  # the job's log names the sweep folder
    assert "Ray stopped" in log and "driver ended (exit 0)" in log
    sweep = load_sweep(folder.storage, folder.name)
    assert [t.state for t in sweep.trials] == ["COMPLETE"] * 3, format_leaderboard(sweep)
    for trial in sweep.trials:
        trained = [e["fold"] for e in read_events(trial.path) if e["event"] == "fold_end"]
        assert sorted(trained) == [1, 2], (trial.trial_id, trained)
    assert _ray_processes(second) == []
    print("timeline of the resumed job (s from its start):", json.dumps(_timeline(log, folder)))

    status = subprocess.run(
        [SEGSWEEP, "sweep", "status", folder.name, "--storage", str(folder.storage)],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert f"Slurm job {second}" in status.stdout and "COMPLETED" in status.stdout
