"""A real single-node Slurm cluster for tests: munged, slurmctld and slurmd on 127.0.0.1.

Everything lives in one temporary folder (slurm.conf, munge key and socket, state, spool, logs);
the daemons run in the foreground as children of the test and are stopped by pid. Run inside a
loopback-only network namespace (the tests are). The node is this machine with its real CPU
count and memory; process tracking by parent pid (``proctrack/linuxproc``) needs no cgroups.
Debian's ``slurm-wlm`` and ``munge`` packages provide the daemons (``.ci/run`` installs them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sacct", "scontrol")

SLURM_CONF = """\
ClusterName=segsweep-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=60
InactiveLimit=0
MinJobAge=600
SchedulerType=sched/backfill
PlugStackConfig={root}/plugstack.conf
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mib} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def missing() -> str | None:
    """Why a Slurm cluster cannot start here (a missing program), or None."""
    absent = [name for name in DAEMONS if shutil.which(name) is None]
    if absent:
        return (
            f"Slurm is not installed ({', '.join(absent)} missing): `apt-get install slurm-wlm munge` (as .ci/run does)"
        )
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root (SlurmUser=root)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 512
    raise RuntimeError("no MemTotal in /proc/meminfo")


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str]
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def job_state(self, job_id: str) -> str:
        """The job's state (PENDING, RUNNING, COMPLETED, CANCELLED, FAILED, ...) from slurmctld."""
        out = self.run("scontrol", "show", "job", job_id, check=False).stdout
        for word in out.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "UNKNOWN"

    def wait_job(self, job_id: str, timeout: float) -> str:
        """Wait until the job ended; its final state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "UNKNOWN"):
                return state
            time.sleep(1)
        raise AssertionError(f"Slurm job {job_id} still {self.job_state(job_id)} after {timeout:.0f} s")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.root.glob("*.log"))
        )


@contextlib.contextmanager
def slurm_cluster(root: Path) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd configured in ``root``; stop them by pid afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for sub in ("state", "spool/localhost", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    _give_loopback_a_second_address()
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_socket = root / "munge" / "munge.socket"
    (root / "plugstack.conf").write_text("")
    conf = root / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            root=root,
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            munge_socket=munge_socket,
            cpus=os.cpu_count() or 1,
            memory_mib=_memory_mib(),
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(root, env)

    def start(argv: list[str], log: str) -> None:
        handle = open(root / log, "ab")  # noqa: SIM115  (the daemon writes it until stopped)
        cluster.daemons.append(subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT))

    try:
        start(
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--pid-file={root / 'munge' / 'munged.pid'}",
                f"--seed-file={root / 'munge' / 'seed'}",
                f"--log-file={root / 'munged.log'}",
            ],
            "munged.out.log",
        )
        _wait_for(lambda: munge_socket.exists(), 30, "munged did not create its socket", cluster)
        start(["slurmctld", "-D", "-i", "-f", str(conf)], "slurmctld.out.log")
        start(["slurmd", "-D", "-N", "localhost", "-f", str(conf)], "slurmd.out.log")

        def node_idle() -> bool:
            out = cluster.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            return out in ("idle", "mix")

        _wait_for(node_idle, 60, "the Slurm node did not become idle", cluster)
        yield cluster
    finally:
        _cancel_all_jobs(cluster)
        for process in reversed(cluster.daemons):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(cluster.daemons):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        _kill_leftovers(conf)


def _cancel_all_jobs(cluster: SlurmCluster) -> None:
    """scancel every job still queued or running, and wait (bounded) until Slurm ended them."""
    with contextlib.suppress(Exception):
        jobs = cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
        if jobs:
            cluster.run("scancel", *jobs, check=False)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                time.sleep(1)


def _kill_leftovers(conf: Path) -> None:
    """SIGKILL, by pid, every process that still carries this cluster's SLURM_CONF in its environment
    (job steps, batch scripts and what they started, if Slurm could not end them)."""
    marker = f"SLURM_CONF={conf}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _give_loopback_a_second_address() -> None:
    """Let Slurm resolve its listening address in a loopback-only network namespace.

    Slurm binds with getaddrinfo(AI_ADDRCONFIG), which glibc answers only where some IPv4 address
    other than 127.0.0.1 is configured; in a namespace with only ``lo`` up there is none, so the
    daemons cannot bind. A second loopback address (127.0.0.2 on ``lo``, still loopback-only) is
    enough. Done only where ``lo`` is the sole interface with an address (the tests' namespace).
    """
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    addresses = [line.split()[3] for line in shown.splitlines()]
    interfaces = {line.split()[1] for line in shown.splitlines()}
    if interfaces == {"lo"} and addresses == ["127.0.0.1/8"]:
        subprocess.run(["ip", "addr", "add", "127.0.0.2/8", "dev", "lo"], check=True)


def _wait_for(ready: object, timeout: float, message: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        for process in cluster.daemons:
            if process.poll() is not None:
                raise RuntimeError(f"{message}: {process.args[0]} exited {process.returncode}\n{cluster.logs()}")
        time.sleep(0.5)
    raise RuntimeError(f"{message} within {timeout:.0f} s\n{cluster.logs()}")
