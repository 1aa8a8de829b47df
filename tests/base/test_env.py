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


_ONEDNN = """
import os
import segsweep.base.env
from trainer.models import configure_tensorflow
print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), configure_tensorflow().onednn_opts)
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "1 1"), ("0", "0 0")])
def test_onednn_kernels_are_on_unless_the_user_chose(given: str | None, expected: str) -> None:
    # TensorFlow enables them itself only on AVX-512 CPUs; on AVX2 ones they train ~2x the images/s.
    import os

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if given is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = given
    done = subprocess.run(
        [sys.executable, "-c", _ONEDNN], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected
