"""Done-when of the tracking issue: a quick sweep with ``--tracker mlflow,neptune`` leaves, in its
folder, an MLflow store whose runs nest sweep > trial > fold with per-epoch histories (read through
a real MLflow server's REST API on 127.0.0.1), Neptune offline data with fold series and images,
and no trace of the tokens planted in its environment."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sweeps.ui import free_port, mlflow_command, start_dashboard, stop_dashboards, wait_ready
from tests.support.tracking import find_secrets, neptune_operations

# The Done-when of the tracking issue, end to end; tests/trainer/test_tracking.py covers the same
# nesting and token hygiene per reporter in seconds.
pytestmark = [pytest.mark.slow, pytest.mark.long]

PLANTED_KEY = "planted-sweep-neptune-key-91c4d2"
PLANTED_PASSWORD = "planted-sweep-password-6ab0e3"
EPOCHS = 2


def rest(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_quick_sweep_nests_runs_and_keeps_tokens_out(tmp_path: Path, kvasir_seg_dir: Path) -> None:
    token = base64.b64encode(json.dumps({"api_address": "http://127.0.0.1:9", "api_key": PLANTED_KEY}).encode())
    env = {
        **os.environ,
        "NEPTUNE_API_TOKEN": token.decode(),
        "NEPTUNE_PROJECT": "workspace/project",
        "NEPTUNE_MODE": "offline",
        "SERVICE_PASSWORD": PLANTED_PASSWORD,
    }
    storage = tmp_path / "sweeps"
    command = [
        str(Path(sys.executable).parent / "segsweep"), "sweep", "run", "--data", str(kvasir_seg_dir),
        "--space", "quick", "--trials", "2", "--concurrency", "1", "--limit", "8", "--epochs", str(EPOCHS),
        "--scheduler", "none", "--name", "s1", "--storage", str(storage), "--tracker", "mlflow,neptune",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sweep = storage / "s1"
    assert (sweep / "mlflow.db").is_file() and (sweep / "tracking.json").is_file()

    # The sweep itself (this is also the CLI sweep test with real training): progress, leaderboard, study.
    assert "best so far" in done.stdout
    status = subprocess.run(
        [command[0], "sweep", "status", "s1", "--storage", str(storage)], capture_output=True, text=True, timeout=120
    )
    assert status.returncode == 0, status.stderr
    assert "2/2 trials proposed; 2 complete" in status.stdout and "encoder" in status.stdout
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2

    # MLflow, through a real server's REST API on 127.0.0.1.
    port = free_port()
    server = start_dashboard("MLflow UI", mlflow_command(sweep, port), port, "/health", tmp_path)
    try:
        wait_ready([server])
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        experiment = rest(base, "/experiments/get-by-name?experiment_name=s1")["experiment"]
        runs = rest(base, "/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000})
        runs = runs["runs"]
        kinds: dict[str, list[dict[str, Any]]] = {}
        for run in runs:
            kinds.setdefault(tags(run).get("segsweep.kind", "?"), []).append(run)
        (top,) = kinds["sweep"]
        assert top["info"]["status"] == "FINISHED"  # the driver closed the sweep's run with its summary
        trials = kinds["trial"]
        assert len(trials) == 2
        assert {tags(t)["mlflow.parentRunId"] for t in trials} == {top["info"]["run_id"]}
        for trial in trials:
            folds = [f for f in kinds["fold"] if tags(f)["mlflow.parentRunId"] == trial["info"]["run_id"]]
            assert sorted(tags(f)["segsweep.fold"] for f in folds) == ["1", "2"]
            for fold in folds:
                for key in ("loss", "val_loss", "val_iou", "lr"):
                    history = rest(base, f"/metrics/get-history?run_id={fold['info']['run_id']}&metric_key={key}")
                    assert [m["step"] for m in history["metrics"]] == list(range(1, EPOCHS + 1)), key
                metrics = {m["key"] for m in fold["data"]["metrics"]}
                assert {"dice", "iou"} <= metrics
            trial_metrics = {m["key"] for m in trial["data"]["metrics"]}
            assert {"mean_dice", "std_dice", "mean_iou", "std_iou"} <= trial_metrics
            params = {p["key"] for p in trial["data"]["params"]}
            assert {"encoder", "lr", "batch_size", "epochs"} <= params
    finally:
        stop_dashboards([server])

    # Neptune offline data inside the sweep folder: one run per trial with fold series and images.
    ops = neptune_operations(sweep / ".neptune")
    by_run: dict[Path, list[dict[str, Any]]] = {}
    for run_dir, op in ops:
        by_run.setdefault(run_dir, []).append(op)
    trial_runs = [
        o for o in by_run.values() if {"path": ["segsweep", "kind"], "type": "AssignString", "value": "trial"} in o
    ]
    assert len(trial_runs) == 2
    for run_ops in trial_runs:
        series = {"/".join(op["path"]) for op in run_ops if op["type"] == "LogFloats"}
        assert {"folds/01/val_iou", "folds/02/loss"} <= series
        assert sum(op["type"] == "UploadFile" for op in run_ops) == 2
    assert not (tmp_path / ".neptune").exists() and not (tmp_path / "mlruns").exists()

    secrets = [token.decode(), PLANTED_KEY, PLANTED_PASSWORD]
    assert find_secrets(sweep, secrets) == []
    assert not [s for s in secrets if s in done.stdout + done.stderr]
