"""A sweep on a real two-node Ray cluster on this machine, with token auth; one node dies mid-sweep.

Run inside a loopback-only network namespace:
``unshare -n sh -c 'ip link set lo up && .venv/bin/python -m pytest tests/sweeps/test_cluster.py'``.
Both nodes are ``ray start --block`` processes on 127.0.0.1 (one CPU, bounded memory and a custom
resource each); the test stops every process of each node by pid.
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
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sweeps.folder import format_leaderboard, load_sweep, read_events, read_trial_record
from tests.support.ray import TINY_SPACE, descendants
from tests.support.synth import make_dataset

REPO = Path(__file__).resolve().parents[2]
RAY = str(REPO / ".venv" / "bin" / "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    temp_dir: str
    pids: set[int] = field(default_factory=set)

    def track(self) -> None:
        """Remember the node's processes (the raylet's agents outlive a killed parent)."""
        if self.process.poll() is None:
            self.pids.update(descendants(self.process.pid))

    def kill(self) -> None:
        self.track()
        for pid in sorted(self.pids, reverse=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.process.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], list[Node]]]:
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(REPO),
    }
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[Node] = []

    def start(name: str, extra: list[str]) -> Node:
        temp = tempfile.mkdtemp(prefix=f"rc{name[0]}", dir="/tmp")
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115
        cmd = [
            RAY,
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f"--object-store-memory={100 * 2**20}",
            f"--resources={json.dumps({f'{name}_node': 1})}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
            *extra,
        ]
        node = Node(name, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), temp)
        nodes.append(node)
        return node

    try:
        start("head", ["--head", f"--port={port}", "--include-dashboard=false"])
        time.sleep(3)
        start("worker", [f"--address={address}"])
        status = ""
        for _ in range(90):
            status = subprocess.run(
                [RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True
            ).stdout
            if "2 node" in status or status.count("node_") >= 2 or "2.0/2.0 CPU" in status or "0.0/2.0 CPU" in status:
                break
            time.sleep(2)
        else:
            raise AssertionError(f"the two-node cluster did not come up: {status}")
        for node in nodes:
            node.track()
        yield address, env, nodes
    finally:
        for node in reversed(nodes):
            node.kill()
            shutil.rmtree(node.temp_dir, ignore_errors=True)


_DRIVER = """\
import sys, cloudpickle
import tests.support.fake_cv as fake
cloudpickle.register_pickle_by_value(fake)
from sweeps.runner import run_sweep
from sweeps.spec import SweepSpec
outcome = run_sweep(SweepSpec(name="c", data=sys.argv[1], space=sys.argv[2], storage=sys.argv[3], trials=4,
                              concurrency=2, scheduler="none", address=sys.argv[4], tracker="none",
                              trial_retries=3), cv_runner=fake.fake_run_cv)
sys.exit(0 if outcome.finished else 1)
"""


# Long: two Ray nodes take ~100 s to start and lose; in the default run the same recovery path (a trial
# whose worker dies mid-fold with its fold files, retried and resumed) is test_ray.py's crash_once trial.
@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.long
def test_sweep_on_two_nodes_survives_losing_one(
    tmp_path: Path, cluster: tuple[str, dict[str, str], list[Node]]
) -> None:
    address, env, nodes = cluster
    head, worker = nodes
    data = make_dataset(tmp_path / "data", 12)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    storage = tmp_path / "out"
    (storage / "c").mkdir(parents=True)
    (storage / "c" / "fake.json").write_text(json.dumps({"fold_seconds": 4}))
    log = open(tmp_path / "driver.log", "wb")  # noqa: SIM115
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(data), str(tmp_path / "tiny.yaml"), str(storage), address],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Wait until two trials run at once (one per node: each node has one CPU) and have a fold.
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            records = [read_trial_record(d) for d in (storage / "c" / "trials").glob("*") if d.is_dir()]
            nodes_used = {a["node_id"] for r in records for a in r.attempts or []}
            folds = list((storage / "c" / "trials").glob("*/folds/fold_01.json"))
            if len(nodes_used) == 2 and folds:
                break
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            raise AssertionError("trials did not start on both nodes")
        worker.kill()  # mid-sweep: its trial is lost with the node and retried on the head
        driver.wait(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    output = (tmp_path / "driver.log").read_text()
    assert driver.returncode == 0, output[-4000:]

    sweep = load_sweep(storage, "c")
    assert [t.state for t in sweep.trials] == ["COMPLETE"] * 4, format_leaderboard(sweep)
    attempts = {t.trial_id: read_trial_record(t.path).attempts or [] for t in sweep.trials}
    all_nodes = {a["node_id"] for tries in attempts.values() for a in tries}
    assert len(all_nodes) == 2  # trials ran on both nodes
    moved = [tries for tries in attempts.values() if len(tries) > 1]
    assert moved and all(tries[-1]["node_id"] != tries[0]["node_id"] for tries in moved)
    for trial in sweep.trials:
        trained = [e["fold"] for e in read_events(trial.path) if e["event"] == "fold_end"]
        assert sorted(trained) == [1, 2, 3], (trial.trial_id, trained)
    del head
