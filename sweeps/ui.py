"""``segsweep ui NAME``: MLflow's UI and optuna-dashboard for one sweep, on 127.0.0.1, until Ctrl-C.

Both servers start in their own process groups (each spawns workers: uvicorn or gunicorn), so that
stopping them reaches every process they started. MLflow's server would also start job-execution
workers; segsweep turns them off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): the dashboards
only read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from segsweep.base.errors import SegsweepError
from sweeps.folder import SweepFolder

HOST = "127.0.0.1"
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_OPTUNA_PORT = 8080
#: Seconds a dashboard may take to answer its first request.
READY_TIMEOUT = 90.0
#: Seconds the servers get to exit after SIGTERM before they are killed.
STOP_TIMEOUT = 10.0


@dataclass
class Dashboard:
    """One server process (the leader of its own process group) and where it answers."""

    name: str
    url: str
    ready_path: str
    process: subprocess.Popen[bytes]
    log_path: Path
    known_pids: set[int] = field(default_factory=set)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def mlflow_command(sweep: Path, port: int) -> list[str]:
    folder = SweepFolder(sweep)
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{folder.mlflow_db.resolve()}",
        "--default-artifact-root", folder.mlflow_artifacts.resolve().as_uri(),
        "--host", HOST, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def optuna_command(sweep: Path, port: int) -> list[str]:
    script = Path(sys.executable).parent / "optuna-dashboard"
    program = str(script) if script.exists() else shutil.which("optuna-dashboard")
    if program is None:
        raise SegsweepError("optuna-dashboard is not installed; install it with: pip install optuna-dashboard")
    return [program, SweepFolder(sweep).optuna_url, "--host", HOST, "--port", str(port), "--quiet"]


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


#: The TCP port numbers a dashboard can listen on (0 asks for a free one).
PORT_MAX = 65535


def check_port_numbers(wanted: Sequence[tuple[int, str]]) -> None:
    """One line unless every ``(port, option)`` is a port number (0: a free one) and no two are the same."""
    for port, option in wanted:
        if not 0 <= port <= PORT_MAX:
            raise SegsweepError(f"{option} {port} is not a port; use 1 to {PORT_MAX} (0 picks a free one)")
    taken: dict[int, str] = {}
    for port, option in wanted:
        if port and port in taken:
            raise SegsweepError(
                f"{taken[port]} and {option} are both {port}: each dashboard needs its own port; "
                "change one of them (0 picks a free one)"
            )
        taken[port] = option


def reserve_ports(wanted: Sequence[tuple[int, str]]) -> list[int]:
    """The ports to serve on, one per ``(port, option)``, checked before any server starts.

    Checked by check_port_numbers, then each must be free on 127.0.0.1, else one line naming the
    option to change. All are held bound until every one is checked, so that two dashboards never
    get the same free port.
    """
    check_port_numbers(wanted)
    with contextlib.ExitStack() as held:
        ports = []
        for port, option in wanted:
            probe = held.enter_context(socket.socket())
            try:
                probe.bind((HOST, port))
            except OSError:
                raise SegsweepError(
                    f"port {port} on {HOST} is in use; pass {option} with another port (0 picks a free one)"
                ) from None
            ports.append(int(probe.getsockname()[1]))
        return ports


def start_dashboard(name: str, command: Sequence[str], port: int, ready_path: str, log_dir: Path) -> Dashboard:
    """Start ``command`` in a new session (its own process group), output to a log file."""
    log_path = log_dir / f"{name.split()[0].lower()}.log"
    log: IO[bytes] = log_path.open("wb")
    try:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(),
            start_new_session=True,
        )
    finally:
        log.close()
    return Dashboard(name, f"http://{HOST}:{port}", ready_path, process, log_path, {process.pid})


def wait_ready(
    dashboards: Sequence[Dashboard], timeout: float = READY_TIMEOUT, should_stop: Callable[[], bool] | None = None
) -> None:
    """Return when every dashboard answers HTTP (or ``should_stop()``), else raise with the log of the
    one that did not."""
    deadline = time.monotonic() + timeout
    pending = list(dashboards)
    while pending and not (should_stop and should_stop()):
        for board in list(pending):
            if board.process.poll() is not None:
                raise SegsweepError(
                    f"{board.name} exited with code {board.process.returncode} before it "
                    f"answered; its output:\n{board.log_tail()}"
                )
            if _answers(board.url + board.ready_path):
                pending.remove(board)
            remember_descendants(board)
        if pending and time.monotonic() > deadline:
            raise SegsweepError(
                f"{pending[0].name} did not answer at {pending[0].url} within {timeout:g} s; "
                f"its output:\n{pending[0].log_tail()}"
            )
        if pending:
            time.sleep(0.3)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(200 <= response.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def remember_descendants(board: Dashboard) -> None:
    """Record the server's current descendants (a worker that left the group is still stopped)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        board.known_pids.update(p.pid for p in psutil.Process(board.process.pid).children(recursive=True))


def stop_dashboards(dashboards: Sequence[Dashboard], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM each process group, then SIGKILL whatever of it (or of its known workers) is left."""
    import psutil

    for board in dashboards:
        remember_descendants(board)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(board.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for board in dashboards:
        with contextlib.suppress(subprocess.TimeoutExpired):
            board.process.wait(timeout=max(0.1, deadline - time.monotonic()))
    for board in dashboards:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(board.process.pid, signal.SIGKILL)
        survivors = []
        for pid in board.known_pids - {board.process.pid}:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                process.kill()
                survivors.append(process)
        psutil.wait_procs(survivors, timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            board.process.wait(timeout=5)


def serve_dashboards(
    sweep: Path,
    *,
    mlflow_port: int = DEFAULT_MLFLOW_PORT,
    optuna_port: int = DEFAULT_OPTUNA_PORT,
    out: IO[str] | None = None,
) -> int:
    """Serve the sweep's dashboards until SIGINT or SIGTERM; 1 if a server dies on its own."""
    out = out or sys.stdout
    check_port_numbers([(mlflow_port, "--port-mlflow"), (optuna_port, "--port-optuna")])  # options first
    folder = SweepFolder(Path(sweep)).require()
    has_mlflow, has_optuna = folder.mlflow_db.is_file(), folder.optuna_db.is_file()
    if not (has_mlflow or has_optuna):
        raise SegsweepError(
            f"sweep {folder.name!r} has no dashboard data yet (neither {folder.mlflow_db.name} nor "
            f"{folder.optuna_db.name} in {folder.path}); start it with `segsweep sweep run`"
        )
    plans: list[tuple[str, Callable[[int], list[str]], str]] = []
    wanted: list[tuple[int, str]] = []
    if has_mlflow:
        plans.append(("MLflow UI", lambda p: mlflow_command(sweep, p), "/health"))
        wanted.append((mlflow_port, "--port-mlflow"))
    else:
        print(
            f"no MLflow store in {sweep} (the sweep ran with --tracker none?): MLflow UI not started",
            file=out,
        )
    if has_optuna:
        plans.append(("Optuna dashboard", lambda p: optuna_command(sweep, p), "/api/studies"))
        wanted.append((optuna_port, "--port-optuna"))
    else:
        print(f"no Optuna study in {sweep}: optuna-dashboard not started", file=out)
    ports = reserve_ports(wanted)

    stop_requested: list[int] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        del frame
        stop_requested.append(signum)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    dashboards: list[Dashboard] = []
    with tempfile.TemporaryDirectory(prefix="segsweep-ui-") as logs:
        try:
            for (name, command, ready_path), port in zip(plans, ports, strict=True):
                dashboards.append(start_dashboard(name, command(port), port, ready_path, Path(logs)))
            wait_ready(dashboards, should_stop=lambda: bool(stop_requested))
            if stop_requested:
                return 0
            for board in dashboards:
                print(f"{board.name + ':':<18} {board.url}", file=out, flush=True)
            print("Press Ctrl-C to stop.", file=out, flush=True)
            while not stop_requested:
                for board in dashboards:
                    if board.process.poll() is not None:
                        print(
                            f"{board.name} stopped on its own (exit code {board.process.returncode}):\n"
                            f"{board.log_tail()}",
                            file=sys.stderr,
                        )
                        return 1
                    remember_descendants(board)
                time.sleep(0.5)
            print("stopping the dashboards ...", file=out, flush=True)
            return 0
        finally:
            stop_dashboards(dashboards)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
