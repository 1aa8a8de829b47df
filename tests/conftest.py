"""Shared fixtures: synthetic data sets, isolated caches, and the real-data switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import trainer._env  # noqa: F401
from tests.synth import make_dataset

REAL_KVASIR_SEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kvasir-seg"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's caches (segsweep data cache, Keras weights cache)."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("SEGSWEEP_CACHE", str(base / "segsweep-cache"))
    monkeypatch.setenv("KERAS_HOME", str(base / "keras-home"))
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
