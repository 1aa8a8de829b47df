"""`segsweep retrain` stopped mid-training resumes after its last epoch (tiny data, a hand-written cv folder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support import TINY_ENCODER
from trainer.bundle import load_bundle, retrain_checkpoint_path
from trainer.config import CVConfig
from trainer.files import write_json_atomic
from trainer.results import CVResult, EpochRecord, FoldResult

CONFIG = CVConfig(encoder=TINY_ENCODER, weights="none", image_size=64, folds=2, epochs=3, batch_size=2)


@pytest.fixture()
def cv_folder(kvasir_seg_dir: Path, tmp_path: Path) -> Path:
    """A finished cross-validation whose folds cut the learning rate after epoch 2."""
    folder = tmp_path / "cv"
    history = [EpochRecord(e, 1.0, 1.0, 0.1, 1e-3) for e in (1, 2, 3)]
    folds = [FoldResult(n, 6, 6, 0.5, 0.4, 3, [2], history, 1.0) for n in (1, 2)]
    result = CVResult(config=CONFIG.to_dict(), data={"path": str(kvasir_seg_dir)}, n_folds=2, folds=folds,
                      seconds=2.0, complete=True)  # fmt: skip
    write_json_atomic(folder / "cv.json", result.to_dict())
    return folder


def test_retrain_stopped_after_an_epoch_resumes_there_and_ends_as_if_never_stopped(
    cv_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sweeps.cli import main
    from trainer.checkpoint import EpochCheckpoint

    assert main(["retrain", str(cv_folder), "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    capsys.readouterr()

    save = EpochCheckpoint.save

    def save_then_stop(self: EpochCheckpoint, model: object, state: object) -> None:
        save(self, model, state)  # type: ignore[arg-type]
        if state.epoch == 2:  # type: ignore[attr-defined]
            raise KeyboardInterrupt  # Ctrl-C (or SIGTERM: a Slurm time limit) just after epoch 2

    out = tmp_path / "cut"
    with monkeypatch.context() as patch:
        patch.setattr(EpochCheckpoint, "save", save_then_stop)
        assert main(["retrain", str(cv_folder), "--out", str(out), "--quiet"]) == 130
    checkpoint = retrain_checkpoint_path(out)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"segsweep: interrupted; finished epochs are kept in {checkpoint}; "
        "the same command resumes after the last of them"
    )
    assert checkpoint.is_file() and not out.exists()

    assert main(["retrain", str(cv_folder), "--out", str(out), "--quiet"]) == 0
    assert f"resuming {checkpoint} after epoch 2" in capsys.readouterr().err
    assert not checkpoint.exists()
    whole, resumed = load_bundle(tmp_path / "whole"), load_bundle(out)
    history = [json.loads((b.path / "history.json").read_text()) for b in (whole, resumed)]
    assert [h["epoch"] for h in history[1]] == [1, 2, 3]
    assert [h["lr"] for h in history[1]] == [h["lr"] for h in history[0]] == pytest.approx([1e-3, 1e-3, 1e-4])
    np.testing.assert_allclose([h["loss"] for h in history[1]], [h["loss"] for h in history[0]], rtol=1e-5)
    for a, b in zip(whole.load_model().get_weights(), resumed.load_model().get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
