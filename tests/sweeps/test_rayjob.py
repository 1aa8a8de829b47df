"""`segsweep sweep submit --ray URL`: the sweep driver as a Ray Job on a real Ray head.

The head (``ray start --head --block``, token authentication, its dashboard and Job API on
127.0.0.1) is started by the test and stopped by pid with every process below it. The job runs a
tiny sweep (quick space, 8 synthetic pairs at 64 px, 2 folds) in the environment the head runs in
(this venv: no code is shipped). All of it is real but the training: the job's ``segsweep`` is
tests.support.fake_driver, whose folds take seconds. Needs Ray's dashboard extras
(``.[cluster]``); skipped with the reason where they are absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweeps.folder import SweepFolder, format_leaderboard, load_sweep, read_events, read_submissions
from tests.support import fake_driver
from tests.support.ray import descendants
from tests.support.synth import make_dataset


def _dashboard_missing() -> str | None:
    try:
        import aiohttp_cors  # noqa: F401
        import opencensus  # noqa: F401
    except ImportError as exc:
        return f"Ray's dashboard extras are not installed ({exc.name}): pip install -c constraints.txt -e '.[cluster]'"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.timeout(900),
    pytest.mark.skipif(_dashboard_missing() is not None, reason=str(_dashboard_missing())),
]

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head with its dashboard on 127.0.0.1; (dashboard URL, the environment that reaches it)."""
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    dashboard_port, listen_port = _free_port(), _free_port()
    # The job's `segsweep` is the stand-in driver (first on PATH); folds of 4 s leave time to stop one.
    wrapper = fake_driver.install(Path(temp) / "bin")
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{wrapper}:{BIN}:{os.environ.get('PATH', '')}",
        **fake_driver.environment({"fold_seconds": 4}),
    }
    log = open(Path(temp) / "head.log", "wb")  # noqa: SIM115
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={_free_port()}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--dashboard-agent-listen-port={listen_port}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            "--num-cpus=2",
            f"--object-store-memory={200 * 2**20}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=temp,
    )
    _persist_listen_port(Path(temp), listen_port)
    url = f"http://127.0.0.1:{dashboard_port}"
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while True:
            pids.update(descendants(head.pid))
            if _client(env, f"C({url!r}).list_jobs()").returncode == 0:
                break
            assert head.poll() is None, (Path(temp) / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head's dashboard did not answer"
            time.sleep(2)
        yield url, env
    finally:
        if head.poll() is None:
            pids.update(descendants(head.pid))
        for pid in sorted(pids, reverse=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            head.wait(timeout=10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _persist_listen_port(temp: Path, port: int) -> None:
    """Write the dashboard agent's HTTP port file as soon as the raylet names its node.

    Ray 2.60's raylet waits at most 15 s for that file and aborts the node otherwise, which a busy
    machine misses while the agent imports; the Slurm batch script does the same (``ray_node``).
    """
    import re

    from ray._raylet import DASHBOARD_AGENT_LISTEN_PORT_NAME, persist_port

    deadline = time.monotonic() + 240
    log = temp / "session_latest" / "logs" / "raylet.out"
    while time.monotonic() < deadline:
        found = re.search(r"node_id=([0-9a-f]{56})", log.read_text(errors="replace")) if log.is_file() else None
        if found:
            persist_port(
                str((temp / "session_latest").resolve()), found.group(1), DASHBOARD_AGENT_LISTEN_PORT_NAME, port
            )
            return
        time.sleep(0.5)


def _client(env: dict[str, str], call: str) -> subprocess.CompletedProcess[str]:
    """``call`` on Ray's JobSubmissionClient (``C``) in a fresh process with ``env``: Ray reads its
    auth token once per process, and this test process may have met another cluster's."""
    code = f"from ray.job_submission import JobSubmissionClient as C; print({call})"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def _segsweep(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "segsweep"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _job_state(env: dict[str, str], folder: SweepFolder) -> str:
    last = read_submissions(folder)[-1]
    proc = _client(env, f"C({last['address']!r}).get_job_status({last['job_id']!r}).value")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def _wait(env: dict[str, str], folder: SweepFolder, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _job_state(env, folder)
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            return state
        time.sleep(2)
    status = _segsweep(env, "sweep", "status", folder.name, "--storage", str(folder.storage))
    raise AssertionError(f"Ray Job still {_job_state(env, folder)} after {timeout:.0f} s:\n{status.stdout[-4000:]}")


def _submit_new(url: str, env: dict[str, str], tmp_path: Path, name: str, trials: int) -> SweepFolder:
    data = make_dataset(tmp_path / "data", 8)
    storage = tmp_path / "sweeps"
    proc = _segsweep(
        env,
        "sweep",
        "submit",
        "--ray",
        url,
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
    assert proc.returncode == 0, proc.stderr[-3000:]
    [submission] = read_submissions(SweepFolder(storage / name))
    assert submission["job_id"] in proc.stdout  # printed, and the command returned (detached)
    return SweepFolder(storage / name)


def test_ray_job_runs_detached_stops_mid_sweep_and_resumes(
    ray_head: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """Submitted detached, stopped with `sweep stop` after a fold, resubmitted with --resume and followed.

    (One test, not two: the resumed job runs the sweep to its end, which a separate test would repeat.)
    """
    url, env = ray_head
    folder = _submit_new(url, env, tmp_path, "rj2", trials=3)
    deadline = time.monotonic() + 600
    while not any(e.get("event") == "fold_end" for t in folder.trial_dirs() for e in read_events(t)):
        assert _job_state(env, folder) in ("PENDING", "RUNNING"), _segsweep(
            env, "sweep", "status", "rj2", "--storage", str(folder.storage)
        ).stdout
        assert time.monotonic() < deadline, "no fold finished in time"
        time.sleep(1)
    stopped = _segsweep(env, "sweep", "stop", folder.name, "--storage", str(folder.storage))
    assert stopped.returncode == 0, stopped.stderr
    state = _wait(env, folder, timeout=300)
    assert state == "STOPPED", _segsweep(env, "sweep", "status", folder.name, "--storage", str(folder.storage)).stdout

    (folder.path / "fake.json").write_text(json.dumps({"fold_seconds": 0.5}))  # the resumed job's folds: quicker
    resumed = _segsweep(env, "sweep", "submit", folder.name, "--storage", str(folder.storage), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(read_submissions(folder)) == 2
    followed = _segsweep(
        env, "sweep", "status", folder.name, "--storage", str(folder.storage), "--follow", timeout=600
    )  # streams the job's log until it ends
    assert followed.returncode == 0, followed.stderr[-3000:]
    assert "[segsweep] resuming sweep" in followed.stdout
    assert _job_state(env, folder) == "SUCCEEDED", followed.stdout[-3000:]
    status = _segsweep(env, "sweep", "status", folder.name, "--storage", str(folder.storage))
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout, status.stdout[-3000:] + status.stderr[-2000:]
    sweep = load_sweep(folder.storage, folder.name)
    assert [t.state for t in sweep.trials] == ["COMPLETE"] * 3, format_leaderboard(sweep)
    for trial in sweep.trials:
        trained = [e["fold"] for e in read_events(trial.path) if e["event"] == "fold_end"]
        assert sorted(trained) == [1, 2], (trial.trial_id, trained)
