"""`segsweep ui`: both dashboards on 127.0.0.1 for a sweep folder, and a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from sweeps.folder import SweepFolder, write_spec_record
from sweeps.ui import free_port
from tests.support.tracking import drive
from trainer.tracking import finish_sweep_tracking, open_trackers, start_sweep_tracking

pytestmark = pytest.mark.slow


def make_sweep_folder(storage: Path, name: str) -> Path:
    """A sweep folder with a tiny Optuna study and MLflow runs nested sweep > trial > fold."""
    import optuna

    folder = SweepFolder.at(storage, name)
    sweep = folder.path
    write_spec_record(folder, {"name": name, "space": "quick", "trials": 2})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=folder.optuna_url, direction="maximize")
    study.optimize(lambda t: -((t.suggest_float("lr", 1e-4, 1e-2, log=True) - 1e-3) ** 2), n_trials=2)
    ctx = start_sweep_tracking("mlflow", sweep, name, {"space": "quick"})
    for trial in ("t0", "t1"):
        root = sweep / "trials" / trial
        drive(open_trackers(None, root=root, run_name=trial, params={"lr": 1e-3}, parent=ctx), root)
    finish_sweep_tracking(ctx, {"best_dice": 0.65})
    return sweep


def ui_command() -> list[str]:
    return [str(Path(sys.executable).parent / "segsweep"), "ui"]


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_ui_serves_both_dashboards_and_stops_every_process(tmp_path: Path) -> None:
    make_sweep_folder(tmp_path / "sweeps", "s1")
    port_mlflow, port_optuna = free_port(), free_port()
    ui = subprocess.Popen(
        [*ui_command(), "s1", "--storage", str(tmp_path / "sweeps"),
         "--port-mlflow", str(port_mlflow), "--port-optuna", str(port_optuna)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    try:
        printed = []
        deadline = time.monotonic() + 120
        assert ui.stdout is not None
        while time.monotonic() < deadline:
            line = ui.stdout.readline()
            if not line:
                break
            printed.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(printed)
        assert f"http://127.0.0.1:{port_mlflow}" in text and f"http://127.0.0.1:{port_optuna}" in text, text + (
            ui.stderr.read() if ui.poll() is not None and ui.stderr else ""
        )
        experiments = get_json(f"http://127.0.0.1:{port_mlflow}/api/2.0/mlflow/experiments/search?max_results=10")
        assert "s1" in {e["name"] for e in experiments["experiments"]}  # type: ignore[index]
        studies = get_json(f"http://127.0.0.1:{port_optuna}/api/studies")
        assert [s["study_name"] for s in studies["study_summaries"]] == ["s1"]  # type: ignore[index]
        descendants = psutil.Process(ui.pid).children(recursive=True)
        assert len(descendants) >= 2
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=60) == 0
        _gone, alive = psutil.wait_procs(descendants, timeout=10)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        if ui.poll() is None:
            for child in psutil.Process(ui.pid).children(recursive=True):
                child.kill()
            ui.kill()
            ui.wait()


def test_ui_without_sweep_data_is_a_clear_error(tmp_path: Path) -> None:
    write_spec_record(SweepFolder.at(tmp_path / "sweeps", "other"), {"name": "other", "trials": 1})
    result = subprocess.run(
        [*ui_command(), "nope", "--storage", str(tmp_path / "sweeps")],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert result.returncode == 2
    assert "no sweep named 'nope'" in result.stderr and "sweeps there: other" in result.stderr
