"""The environment segsweep sets before its libraries start: what they no longer print."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_LIBRARIES = """
import segsweep.base.env
import segmentation_models
import mlflow
mlflow.set_tracking_uri("sqlite:///{db}")
mlflow.create_experiment("e")
print("done")
"""


@pytest.mark.slow  # imports TensorFlow and creates an MLflow database in a fresh interpreter
def test_segmentation_models_banner_and_mlflow_info_lines_are_not_printed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LIBRARIES.format(db=tmp_path / "mlflow.db")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert "Segmentation Models" not in done.stdout + done.stderr
    assert "INFO mlflow" not in done.stderr, done.stderr
