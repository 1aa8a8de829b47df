"""Tokens and passwords never reach anything segsweep writes: a real cross-validation with both
trackers and planted secrets, then every byte under the output folder is searched for them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.support import TINY_ENCODER
from tests.support.tracking import find_secrets, neptune_operations
from trainer.config import CVConfig
from trainer.tracking import TrackingWarning, open_trackers

pytestmark = pytest.mark.slow

PLANTED_KEY = "planted-neptune-key-5e0c1b7a92"
PLANTED_PASSWORD = "planted-db-password-84d2f61c"
PLANTED_CONFIG_TOKEN = "planted-config-token-3b9e07aa"


def planted_token(port: int) -> str:
    address = f"http://127.0.0.1:{port}"
    payload = {"api_address": address, "api_url": address, "api_key": PLANTED_KEY}
    return base64.b64encode(json.dumps(payload).encode()).decode()


def test_no_token_reaches_any_file_the_run_writes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kvasir_seg_dir: Path,
    silent_server: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trainer.cv import run_cv
    from trainer.data import prepare_dataset

    token = planted_token(silent_server)
    monkeypatch.setenv("NEPTUNE_API_TOKEN", token)
    monkeypatch.setenv("NEPTUNE_PROJECT", "workspace/project")
    monkeypatch.setenv("WAREHOUSE_DB_PASSWORD", PLANTED_PASSWORD)
    # An online Neptune run is attempted (token and project given) against a server that never answers.
    monkeypatch.setenv("SEGSWEEP_NEPTUNE_INIT_TIMEOUT", "3")
    config = CVConfig(
        encoder=TINY_ENCODER, weights="none", image_size=64, folds=2, epochs=1, batch_size=2, limit=8, augment=False
    )
    data = prepare_dataset(kvasir_seg_dir, 64, limit=8)
    out = tmp_path / "out"
    params = {**config.to_dict(), "extra": {"api_token": PLANTED_CONFIG_TOKEN, "note": f"pw={PLANTED_PASSWORD}"}}
    reporter = open_trackers("mlflow,neptune", root=out, run_name="cv", params=params)
    with pytest.warns(TrackingWarning, match="offline"):
        result = run_cv(config, data, out, reporter, verbose=True)
    assert result.complete and len(result.folds) == 2

    # The trackers really wrote: MLflow's store and Neptune's offline data with fold series and images.
    assert (out / "mlflow.db").is_file() and list((out / "mlartifacts").rglob("fold_0*.png"))
    ops = neptune_operations(out / ".neptune")
    assert any(op["path"] == ["folds", "02", "val_iou"] for _, op in ops)
    assert sum(op["type"] == "UploadFile" for _, op in ops) == 2

    secrets = [token, PLANTED_KEY, PLANTED_PASSWORD, PLANTED_CONFIG_TOKEN]
    assert find_secrets(out, secrets) == []
    captured = capsys.readouterr()
    assert not [s for s in secrets if s in captured.out + captured.err]
