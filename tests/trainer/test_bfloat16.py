"""bfloat16 training (``--mixed-precision bf16``, and ``auto`` on a CPU that has it): what a fold records
is what its saved model predicts, and a resumed run keeps the precision its finished folds ran with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.support import TINY_ENCODER
from tests.support.synth import make_dataset
from trainer import models
from trainer.config import CVConfig
from trainer.cv import run_cv
from trainer.data import prepare_dataset

TINY = {"encoder": TINY_ENCODER, "weights": "none", "image_size": 64, "batch_size": 4, "epochs": 1, "folds": 2}


@pytest.fixture
def precision(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test sets the process's precision itself; later tests get float32 models again."""
    monkeypatch.setattr(models, "_runtime", None)
    monkeypatch.setattr(models, "_resolved", None)
    yield
    import tf_keras

    monkeypatch.setattr(models, "_runtime", None)
    monkeypatch.setattr(models, "_resolved", None)
    tf_keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory):
    root = make_dataset(tmp_path_factory.mktemp("bf16data"), 8)
    return prepare_dataset(root, 64, cache_dir=tmp_path_factory.mktemp("cache"))


def test_a_bfloat16_fold_records_what_its_saved_model_predicts(precision: None, tiny_data, tmp_path: Path) -> None:
    from trainer.bundle import load_bundles
    from trainer.metrics import medai_scores
    from trainer.training import predict_probabilities

    settings = models.configure_tensorflow(mixed_precision="bf16")
    assert settings.mixed_precision_policy == "mixed_bfloat16" and settings.mixed_precision_enabled
    result = run_cv(CVConfig(**TINY), tiny_data, tmp_path, keep_models=True)
    runtime = json.loads((tmp_path / "cv.json").read_text())["runtime"]
    assert runtime["mixed_precision_policy"] == "mixed_bfloat16" and models.precision_label(runtime) == "on (bfloat16)"
    trained = models.model_for_fold(CVConfig(**TINY))  # the process's model: it trained in bfloat16
    assert any(layer.compute_dtype == "bfloat16" for layer in trained.layers)
    # The fold's scores came from float32 inference, as every later reader of its bundle predicts.
    for fold, bundle in zip(result.folds, load_bundles(tmp_path / "models"), strict=True):
        rows = [tiny_data.stems.index(stem) for stem in fold.val_stems]
        masks = np.asarray(tiny_data.masks[rows])[..., 0]
        probabilities = predict_probabilities(bundle.load_model(), np.asarray(tiny_data.images[rows]), bundle.config)
        assert medai_scores(masks, probabilities)["mean_dice"] == pytest.approx(fold.dice, abs=1e-6)


def test_a_run_resumed_under_auto_keeps_its_finished_folds_precision(
    precision: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import trainer.cv

    # The finished folds ran in float32 (auto on a machine or version without bfloat16) ...
    finished = SimpleNamespace(runtime={"mixed_precision": "auto", "mixed_precision_enabled": False, "threads": 1})
    monkeypatch.setattr(trainer.cv, "read_cv_result", lambda out_dir: finished)
    (tmp_path / "cv.json").write_text("{}")  # read through the stand-in above
    # ... and the run resumes where auto resolves to bfloat16: the remaining folds run in float32 too.
    monkeypatch.setattr(models, "cpu_has_bf16", lambda cpuinfo=None: True)
    assert models.configure_tensorflow(mixed_precision="auto").mixed_precision_policy == "mixed_bfloat16"
    runtime = trainer.cv._runtime_with_earlier_folds(tmp_path, [finished], models.runtime_settings().to_dict())
    assert runtime["mixed_precision_policy"] == "float32" and "earlier" not in runtime
    assert runtime["mixed_precision_reason"] == "auto: off, as the run it resumes ran"
    assert models.mixed_precision_policy() == "float32"  # what the fold's model is built with
    assert "warning" not in capsys.readouterr().err
    # An explicit choice stands, and the record keeps both, said in one line.
    monkeypatch.setattr(models, "_runtime", None)
    models.configure_tensorflow(mixed_precision="bf16")
    runtime = trainer.cv._runtime_with_earlier_folds(tmp_path, [finished], models.runtime_settings().to_dict())
    assert runtime["mixed_precision_policy"] == "mixed_bfloat16" and runtime["earlier"] == finished.runtime
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "ran with mixed precision off; the remaining folds run with it on (bfloat16)" in err[0]


def test_a_retrain_under_auto_trains_in_float32_when_the_trials_folds_did(
    precision: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    retrain_module = importlib.import_module("reports.retrain")  # reports.retrain is also the function's name
    monkeypatch.setattr(models, "cpu_has_bf16", lambda cpuinfo=None: True)
    trial = SimpleNamespace(path=tmp_path)
    folds_ran = {"mixed_precision_enabled": False}
    monkeypatch.setattr(retrain_module, "read_cv_result", lambda path: SimpleNamespace(runtime=folds_ran))
    assert models.configure_tensorflow(mixed_precision="auto").mixed_precision_policy == "mixed_bfloat16"
    retrain_module._keep_float32_of_the_folds(trial)  # type: ignore[arg-type]
    settings = models.runtime_settings()
    assert settings.mixed_precision_policy == "float32"
    assert settings.mixed_precision_reason == "auto: off, as the trial's folds ran"
    # Folds in bfloat16 (or float16 from a GPU) leave auto to this machine; an explicit choice stands.
    monkeypatch.setattr(models, "_runtime", None)
    models.configure_tensorflow(mixed_precision="auto")
    folds_ran = {"mixed_precision_enabled": True, "mixed_precision_policy": "mixed_float16"}
    retrain_module._keep_float32_of_the_folds(trial)  # type: ignore[arg-type]
    assert models.runtime_settings().mixed_precision_policy == "mixed_bfloat16"
    monkeypatch.setattr(models, "_runtime", None)
    models.configure_tensorflow(mixed_precision="bf16")
    folds_ran = {"mixed_precision_enabled": False}
    retrain_module._keep_float32_of_the_folds(trial)  # type: ignore[arg-type]
    assert models.runtime_settings().mixed_precision_policy == "mixed_bfloat16"


def test_auto_keeps_float32_for_encoders_not_measured_faster_and_each_run_starts_afresh(
    precision: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "cpu_has_bf16", lambda cpuinfo=None: True)
    assert models.configure_tensorflow(mixed_precision="auto").mixed_precision_policy == "mixed_bfloat16"
    slower = models.precision_for_run(CVConfig(encoder="efficientnetb0", weights="none"))
    assert slower.mixed_precision_policy == "float32"
    assert slower.mixed_precision_reason == "auto: no GPU visible; bfloat16 is not measured faster for efficientnetb0"
    # The next run of the process (a reused sweep worker's next trial) starts from auto's resolution again.
    assert models.precision_for_run(CVConfig(encoder="resnet18", weights="none")).mixed_precision_policy == (
        "mixed_bfloat16")  # fmt: skip
    models.follow_recorded_precision({"mixed_precision_enabled": False})  # a resumed trial's adjustment
    assert models.precision_for_run(CVConfig(encoder="seresnet18", weights="none")).mixed_precision_policy == (
        "mixed_bfloat16")  # fmt: skip
    models.configure_tensorflow(mixed_precision="bf16")  # asked for: every encoder
    assert models.precision_for_run(CVConfig(encoder="efficientnetb0", weights="none")).mixed_precision_policy == (
        "mixed_bfloat16")  # fmt: skip
