"""sweeps.runner's Ray session: what trials are given, and the private Ray folder's end on every exit."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweeps.runner import (
    RAY_CLUSTER_ENV,
    RAY_FOLDER_PREFIX,
    _ray_cluster_switch_off,
    _tune_forwards_no_secrets,
    private_ray_folder,
    remove_stale_ray_folders,
)
from tests.support.fake_driver import environment
from tests.support.ray import TINY_SPACE, stop_processes_using, wait_for
from tests.support.synth import make_dataset

REPO = Path(__file__).resolve().parents[2]

#: The fake driver, with a Ctrl-C that interrupts Ray's shutdown when asked (argv[1] == "sigint"): two of
#: them, since a first Ctrl-C once Tune's run is over only waits for the records (sweeps.runner). Its
#: Ctrl-C is Python's even where the test runs with SIGINT ignored (a background job's).
_DRIVER = """\
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import ray
from tests.support.fake_driver import main
if sys.argv[1] == "sigint":
    real_shutdown, calls = ray.shutdown, []
    def interrupted_shutdown(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # handled between bytecodes: inside Ray's shutdown
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
        real_shutdown(*args, **kwargs)
    ray.shutdown = interrupted_shutdown
sys.argv = ["segsweep", *sys.argv[2:]]
sys.exit(main())
"""


def test_a_local_ray_keeps_127_0_0_1_where_the_machine_has_a_network_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray replaced the 127.0.0.1 of start_local_ray with the machine's address and then listened on every
    # interface (measured: the GCS on *:PORT, the dashboard agent on the LAN address). The tests' network
    # namespace has no address but loopback, so the machine's address is faked here, where Ray learns it.
    import ray
    from ray._private import ray_constants, services

    monkeypatch.setattr(ray._private.worker, "_global_node", None)  # no Ray of this process answers first
    monkeypatch.setattr(services, "node_ip_address_from_perspective", lambda address=None: "192.0.2.77")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)  # Linux's default
    monkeypatch.delenv(RAY_CLUSTER_ENV, raising=False)
    assert services.resolve_ip_for_localhost("127.0.0.1") == "192.0.2.77"  # what ray.init did with it

    with _ray_cluster_switch_off():
        assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
        assert os.environ[RAY_CLUSTER_ENV] == "0"  # for the raylet, workers and agents it starts

    # Only while Ray starts: a later ray.init(address=...) in this process joins a cluster at its address.
    assert services.get_node_ip_address() == "192.0.2.77" and RAY_CLUSTER_ENV not in os.environ


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A folder short enough to be TMPDIR for Ray's sockets; its processes are stopped by pid after."""
    root = Path(tempfile.mkdtemp(prefix="ss", dir="/tmp"))
    try:
        yield root
    finally:
        stop_processes_using(str(root))
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.cluster
@pytest.mark.slow
def test_planted_cloud_secrets_reach_no_file_and_no_ray_folder_is_left(short_root: Path) -> None:
    # Tune forwarded AWS_* into each trial's runtime_env, which Ray's runtime_env_agent.log records;
    # the Ray folder holding that log stayed behind after a Ctrl-C in the shutdown or a SIGTERM in the start.
    planted = {
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
        "AWS_SESSION_TOKEN": secrets.token_hex(16),
        "GOOGLE_APPLICATION_CREDENTIALS": f"/nowhere/{secrets.token_hex(16)}.json",
    }
    data = make_dataset(short_root / "data", 6)
    (short_root / "tiny.yaml").write_text(TINY_SPACE.replace("folds: 3", "folds: 2"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}
    env.update(environment({"fold_seconds": 0.1}), TMPDIR=str(short_root), RAY_USAGE_STATS_ENABLED="0", **planted)

    def driver(mode: str, name: str) -> subprocess.Popen[bytes]:
        argv = [
            "sweep",
            "run",
            "--data",
            str(data),
            "--space",
            str(short_root / "tiny.yaml"),
            "--trials",
            "1",
            "--name",
            name,
            "--storage",
            str(short_root / "runs"),
            "--scheduler",
            "none",
            "--tracker",
            "none",
            "--cpus-per-trial",
            "1",
        ]
        log = open(short_root / f"{name}.log", "wb")  # noqa: SIM115 (closed with the test's root)
        return subprocess.Popen(
            [sys.executable, "-c", _DRIVER, mode, *argv], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def ray_folders() -> list[Path]:
        return list(short_root.glob(f"{RAY_FOLDER_PREFIX}*"))

    def log(name: str) -> str:
        return (short_root / f"{name}.log").read_text(errors="replace")[-3000:]

    normal = driver("normal", "normal")
    assert normal.wait(timeout=600) == 0, log("normal")
    assert ray_folders() == []

    interrupted = driver("sigint", "interrupted")
    assert interrupted.wait(timeout=600) == 130, log("interrupted")
    assert ray_folders() == [], log("interrupted")

    starting = driver("normal", "starting")
    wait_for(lambda: any(short_root.glob(f"{RAY_FOLDER_PREFIX}*/r/session_*/logs")), 300, "Ray's start-up", starting)
    starting.send_signal(signal.SIGTERM)
    starting.wait(timeout=120)
    assert ray_folders() == [], log("starting")

    leaks = [
        f"{path}: {name}"
        for path in short_root.rglob("*")
        if path.is_file() and not path.is_symlink()
        for name, value in planted.items()
        if value.encode() in path.read_bytes()
    ]
    assert leaks == []


def test_tune_gives_trial_actors_no_cloud_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # What Tune puts in a trial actor's runtime_env is what Ray logs, on a local Ray or a cluster (--address).
    from ray.tune.execution.class_cache import _ActorClassCache

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-value")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "planted-session-token")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "planted-key-id")
    monkeypatch.setenv("RAY_CHDIR_TO_TRIAL_DIR", "0")  # one of Tune's own settings, still forwarded

    class Trainable:
        pass

    with _tune_forwards_no_secrets():
        env_vars = _ActorClassCache().get(Trainable).__ray_metadata__.runtime_env["env_vars"]
    assert not any(name.startswith("AWS_") for name in env_vars) and env_vars["RAY_CHDIR_TO_TRIAL_DIR"] == "0"


def test_a_dead_drivers_ray_folder_is_removed_by_the_next_start(
    short_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(short_root))
    # A driver killed with SIGKILL leaves its folder (and its lock, now free) behind.
    dead = short_root / f"{RAY_FOLDER_PREFIX}dead"
    (dead / "r" / "session_x" / "logs").mkdir(parents=True)
    (dead / "owner.lock").touch()
    old = short_root / f"{RAY_FOLDER_PREFIX}old"  # no lock: being made, or an older segsweep's
    old.mkdir()
    live = short_root / f"{RAY_FOLDER_PREFIX}live"
    live.mkdir()
    with open(live / "owner.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a running driver's
        with private_ray_folder() as temp_dir:
            ours = Path(temp_dir).parent
            assert ours.is_dir() and (ours / "owner.lock").is_file()
            assert sorted(p.name for p in short_root.iterdir()) == sorted([ours.name, live.name, old.name])
            assert remove_stale_ray_folders(short_root) == []  # ours is held while its block runs
        assert not ours.exists()
    assert remove_stale_ray_folders(short_root) == [live]
    assert json.dumps(sorted(p.name for p in short_root.iterdir())) == json.dumps([old.name])


def test_a_sweep_its_searcher_ended_on_an_exhausted_space_is_finished_and_says_why(tmp_path: Path) -> None:
    """Four of six trials ran and the searcher found nothing unscored (sweeps._optuna): the driver's
    end calls the sweep finished, not interrupted (which would invite a resume that finds nothing)."""
    import optuna

    from sweeps.folder import STUDY_EXHAUSTED_ATTR, SweepFolder, summarise_sweep
    from sweeps.runner import _reconcile, _record_run
    from sweeps.spec import SweepSpec
    from tests.support.fake_sweep import FakeTrial, make_sweep

    params = {"encoder": "mobilenet", "weights": "none", "batch_size": 4}
    make_sweep(tmp_path, "s", [FakeTrial({**params, "lr": lr}, [0.5, 0.6]) for lr in (1e-3, 2e-3, 3e-3, 4e-3)])
    spec = SweepSpec(name="s", data=str(tmp_path / "data"), space="quick", trials=6, storage=str(tmp_path))
    statuses = {f"trial_{i:05d}": "TERMINATED" for i in range(4)}
    assert not _reconcile(spec, statuses)  # fewer trials than asked, and nothing says why
    study = optuna.load_study(study_name="s", storage=SweepFolder(tmp_path / "s").optuna_url)
    study.set_user_attr(STUDY_EXHAUSTED_ATTR, "search space exhausted after 4 scored configurations: ...")
    assert _reconcile(spec, statuses)
    _record_run(spec, 1.0, False, True, None)
    summary = summarise_sweep(SweepFolder(tmp_path / "s"))
    assert (summary.state, summary.detail) == ("finished", "search space exhausted after 4 scored configurations: ...")
