"""Shared fixtures: synthetic data sets, isolated caches, and the real-data switch."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import segsweep.base.env  # noqa: F401
from tests.support.ray import reload_ray_auth_config, stop_processes_using
from tests.support.synth import make_dataset

REAL_KVASIR_SEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kvasir-seg"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's caches (segsweep data cache, Keras weights cache)."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("SEGSWEEP_CACHE", str(base / "segsweep-cache"))
    monkeypatch.setenv("KERAS_HOME", str(base / "keras-home"))
    # float32 unless a test asks otherwise: `auto` trains in bfloat16 on CPUs that have it (trainer.models),
    # and the numbers the tests compare are float32's; the bfloat16 path has its own tests.
    monkeypatch.setenv("SEGSWEEP_MIXED_PRECISION", "off")
    for name in ("NEPTUNE_API_TOKEN", "NEPTUNE_PROJECT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def kvasir_seg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic 64x64 pairs in the Kvasir-SEG layout (shared, read-only by convention)."""
    return make_dataset(tmp_path_factory.mktemp("kvasir-seg"), 12, layout="kvasir-seg")


@pytest.fixture(scope="session")
def kvasir_instrument_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic 64x64 pairs in the Kvasir-Instrument layout (shared, read-only by convention)."""
    return make_dataset(tmp_path_factory.mktemp("kvasir-instrument"), 12, layout="kvasir-instrument")


@pytest.fixture(scope="session")
def real_kvasir_seg() -> Path:
    """The real Kvasir-SEG beside the repository; tests using it are skipped where it is absent."""
    if not (REAL_KVASIR_SEG / "images").is_dir():
        pytest.skip(f"real data not present at {REAL_KVASIR_SEG}")
    return REAL_KVASIR_SEG


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    if os.environ.get("SEGSWEEP_SKIP_SLOW") == "1":
        skip = pytest.mark.skip(reason="SEGSWEEP_SKIP_SLOW=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


# --- servers and clusters the tests start (stopped by the fixture, by pid) ---------------------------


@pytest.fixture(scope="module")
def ray_env() -> Iterator[dict[str, str]]:
    """Token auth with a test token (nothing written to ~/.ray) and Ray's files in a short temp
    folder whose processes teardown stops by pid (a SIGKILLed driver's agents outlive it)."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_TMPDIR": temp,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reload_ray_auth_config()
    try:
        yield env
    finally:
        stop_processes_using(temp)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)
        reload_ray_auth_config()


@pytest.fixture(scope="module")
def local_ray(ray_env: dict[str, str]) -> Iterator[None]:
    import cloudpickle
    import ray

    from sweeps.runner import start_local_ray
    from tests.support import fake_cv

    cloudpickle.register_pickle_by_value(fake_cv)  # workers need not import the tests package
    start_local_ray(200 * 2**20, num_cpus=2, log_to_driver=False)  # retried: a busy CI runner misses Ray's 30 s
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()
