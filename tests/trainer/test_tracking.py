"""Trackers as reporter sinks: MLflow and Neptune (offline) driven through the reporter hooks."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from segsweep.base.errors import ConfigError
from tests.support.tracking import drive, loopback_token, make_fold, make_preview, neptune_operations
from trainer.config import CVConfig
from trainer.reporter import FoldPreview, Reporter
from trainer.tracking import (
    TrackingContext,
    TrackingWarning,
    open_trackers,
    parse_tracker_names,
    redact_params,
    start_sweep_tracking,
)

# --- names and secrets ------------------------------------------------------------------------------


def test_tracker_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_tracker_names(None) == ("mlflow",)
    monkeypatch.setenv("NEPTUNE_PROJECT", "ws/proj")
    assert parse_tracker_names(None) == ("mlflow", "neptune")
    assert parse_tracker_names("neptune, mlflow,neptune") == ("neptune", "mlflow")
    assert parse_tracker_names("none") == ()
    with pytest.raises(ConfigError, match=r"unknown tracker .wandb..*mlflow, neptune"):
        parse_tracker_names("mlflow,wandb")
    assert type(open_trackers("none", root=Path("."), run_name="x", params={})) is Reporter


def test_redact_params(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SERVICE_PASSWORD", "hunter2-hunter2")
    params = {
        "lr": 0.1,
        "extra": {"api_token": "abcdefgh123", "note": "pw hunter2-hunter2 and abcdefgh123"},
        "Secret": "x" * 10,
    }
    assert redact_params(params) == {"lr": 0.1, "extra": {"note": "pw [redacted] and [redacted]"}}


def test_context_round_trips_through_json() -> None:
    ctx = TrackingContext(
        trackers=("mlflow",),
        sweep_name="s",
        parts={"mlflow": {"tracking_uri": "sqlite:////x/mlflow.db", "experiment_id": "1", "parent_run_id": "abc"}},
    )
    assert TrackingContext.from_json(ctx.to_json()) == ctx
    # tracking.json keeps its format (each tracker's keys prefixed with its name): older sweeps resume.
    assert ctx.to_dict()["mlflow_parent_run_id"] == "abc"
    older = {"trackers": ["mlflow"], "sweep_name": "s", "mlflow_tracking_uri": "sqlite:////x/mlflow.db",
             "mlflow_experiment_id": "1", "mlflow_parent_run_id": "abc", "neptune_mode": None,
             "neptune_project": None, "neptune_data_dir": None, "neptune_sweep_id": None, "extra": {}}  # fmt: skip
    assert TrackingContext.from_dict(older) == ctx and ctx.part("neptune") is None


# --- MLflow -------------------------------------------------------------------------------------------


def _client(root: Path):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _runs(root: Path) -> list:  # type: ignore[type-arg]
    client = _client(root)
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids, max_results=1000))


def test_mlflow_cv_run_with_fold_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    out = tmp_path / "out"
    drive(
        open_trackers("mlflow", root=out, run_name="cv-run", params={"lr": 1e-3, "encoder": "mobilenetv2"}),
        out,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "mlflow.db").is_file()
    runs = _runs(out)
    (cv,) = [r for r in runs if r.data.tags.get("segsweep.kind") == "cv"]
    folds = sorted((r for r in runs if r.data.tags.get("segsweep.kind") == "fold"), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in folds] == ["fold 01", "fold 02"]
    assert all(r.data.tags["mlflow.parentRunId"] == cv.info.run_id for r in folds)
    assert cv.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in folds)
    assert cv.data.params["lr"] == "0.001" and cv.data.params["encoder"] == "mobilenetv2"
    assert cv.data.metrics["mean_dice"] == pytest.approx(0.65)
    assert cv.data.metrics["std_dice"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    client = _client(out)
    history = client.get_metric_history(folds[0].info.run_id, "val_iou")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert set(folds[0].data.metrics) >= {"loss", "val_loss", "val_iou", "lr", "dice", "iou"}
    assert folds[1].data.tags["lr_drops"] == "2"
    assert [m.step for m in client.get_metric_history(folds[0].info.run_id, "lr_drop")] == [2]
    art = Path(folds[0].info.artifact_uri.removeprefix("file://")) / "preview" / "fold_01.png"
    assert art.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(art).startswith(str(out / "mlartifacts"))


def test_mlflow_resume_reuses_run_and_replaces_partial_fold(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # First attempt: fold 1 finishes, fold 2 starts and dies after an epoch.
    tracker = open_trackers("mlflow", root=out, run_name="cv", params={"lr": 1e-3})
    done = drive(tracker, out, folds=(1,), finish=False)
    tracker = open_trackers("mlflow", root=out, run_name="cv", params={"lr": 1e-3})
    tracker.on_cv_start(CVConfig(folds=2), 2, out)
    tracker.on_fold_start(2, 6, 2)
    tracker.on_epoch(2, 1, {"loss": 9.0, "val_loss": 9.0, "val_iou": 0.0, "lr": 1e-3})
    tracker.close()
    statuses = {r.info.run_name: r.info.status for r in _runs(out)}
    assert statuses == {"cv": "KILLED", "fold 01": "FINISHED", "fold 02": "KILLED"}
    # Resume: fold 2 runs again from scratch.
    drive(open_trackers("mlflow", root=out, run_name="cv", params={"lr": 1e-3}), out, folds=(2,), done=done)
    runs = _runs(out)
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [
        ("cv", "FINISHED"),
        ("fold 01", "FINISHED"),
        ("fold 02", "FINISHED"),
    ]
    fold2 = next(r for r in runs if r.info.run_name == "fold 02")
    assert _client(out).get_metric_history(fold2.info.run_id, "loss")[0].value == 1.0


def test_fold_resumed_from_a_checkpoint_logs_its_earlier_epochs_in_the_new_fold_run(tmp_path: Path) -> None:
    from trainer.results import EpochRecord

    out = tmp_path / "out"
    tracker = open_trackers("mlflow", root=out, run_name="cv", params={"lr": 1e-3})
    tracker.on_cv_start(CVConfig(folds=1), 1, out)
    tracker.on_fold_start(1, 6, 2)
    before = [EpochRecord(1, 0.9, 0.8, 0.1, 1e-3), EpochRecord(2, 0.7, 0.6, 0.2, 1e-3)]
    tracker.on_fold_resumed(1, before)  # what run_cv calls when the fold goes on from epoch 2
    tracker.on_epoch(1, 3, {"loss": 0.5, "val_loss": 0.4, "val_iou": 0.3, "lr": 1e-4})
    tracker.close()
    (fold,) = [r for r in _runs(out) if r.info.run_name == "fold 01"]
    history = _client(out).get_metric_history(fold.info.run_id, "val_iou")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]


def test_failing_tracker_warns_once_and_the_run_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    ctx = TrackingContext(
        trackers=("mlflow",), parts={"mlflow": {"tracking_uri": f"sqlite:///{blocker}/sub/mlflow.db"}}
    )
    tracker = open_trackers(None, root=tmp_path / "out", run_name="cv", params={}, parent=ctx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drive(tracker, tmp_path / "out")
    tracking = [w for w in caught if issubclass(w.category, TrackingWarning)]
    assert len(tracking) == 1, [str(w.message) for w in caught]
    assert "MLflow tracking stopped" in str(tracking[0].message)


# --- Neptune ------------------------------------------------------------------------------------------


def test_neptune_offline_lands_in_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    drive(open_trackers("neptune", root=out, run_name="cv-run", params={"lr": 1e-3, "limit": None}), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    ops = neptune_operations(out / ".neptune")
    assert ops, "no offline Neptune data under the run folder"
    series = {}
    for _, op in ops:
        if op["type"] == "LogFloats":
            series.setdefault("/".join(op["path"]), []).extend((v["step"], v["value"]) for v in op["values"])
    assert series["folds/01/val_iou"] == [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]
    assert {"folds/02/loss", "folds/02/lr", "folds/02/val_loss", "cv/fold_dice"} <= set(series)
    assigned = {"/".join(op["path"]): op.get("value") for _, op in ops if op["type"].startswith("Assign")}
    assert assigned["parameters/lr"] == 1e-3 and assigned["parameters/limit"] == "None"
    assert assigned["folds/01/dice"] == pytest.approx(0.6) and assigned["cv/mean/dice"] == pytest.approx(0.65)
    uploads = [(d, op) for d, op in ops if op["type"] == "UploadFile"]
    assert ["/".join(op["path"]) for _, op in uploads] == ["folds/01/preview", "folds/02/preview"]
    for run_dir, op in uploads:
        assert op["file_path"] is None  # contents, not a path outside the folder
        assert (run_dir / "upload_path" / op["tmp_file_name"]).read_bytes()[:4] == b"\x89PNG"


def test_neptune_online_server_that_never_answers_falls_back_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, silent_server: int
) -> None:
    from trainer.tracking import _neptune

    monkeypatch.setenv("NEPTUNE_API_TOKEN", loopback_token(silent_server))
    monkeypatch.setenv("NEPTUNE_PROJECT", "workspace/project")
    monkeypatch.delenv("NEPTUNE_MODE", raising=False)
    assert _neptune.resolve_mode() == "async"
    out = tmp_path / "out"
    tracker = _neptune.NeptuneTracker(root=out, run_name="cv", params={}, init_timeout=3)
    started = time.monotonic()
    with pytest.warns(TrackingWarning, match="did not answer within 3 s.*offline"):
        drive(tracker, out)
    assert time.monotonic() - started < 30
    assert tracker.mode == "offline"
    assert any("/".join(op["path"]) == "folds/02/val_iou" for _, op in neptune_operations(out / ".neptune"))


def test_neptune_mode_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.tracking._neptune import resolve_mode

    assert resolve_mode() == "offline"
    monkeypatch.setenv("NEPTUNE_MODE", "debug")
    assert resolve_mode() == "debug"
    assert resolve_mode("offline") == "offline"
    monkeypatch.setenv("NEPTUNE_MODE", "sync")
    with pytest.raises(ConfigError, match="NEPTUNE_MODE"):
        resolve_mode()


# --- sweep nesting (in-process) -----------------------------------------------------------------------


def test_sweep_context_nests_trials_and_folds(tmp_path: Path) -> None:
    from trainer.tracking import finish_sweep_tracking

    sweep = tmp_path / "s1"
    ctx = start_sweep_tracking("mlflow,neptune", sweep, "s1", {"space": "quick", "trials": 2})
    assert ctx.trackers == ("mlflow", "neptune")
    ctx = TrackingContext.from_json(ctx.to_json())
    for trial in ("t0", "t1"):
        drive(
            open_trackers(None, root=sweep / "trials" / trial, run_name=trial, params={"lr": 1e-3}, parent=ctx),
            sweep / "trials" / trial,
        )
    finish_sweep_tracking(ctx, {"best_trial": "t1", "best_dice": 0.65, "trials": 2})
    runs = _runs(sweep)
    by_id = {r.info.run_id: r for r in runs}
    (top,) = [r for r in runs if r.data.tags.get("segsweep.kind") == "sweep"]
    assert top.info.status == "FINISHED" and top.data.metrics["best_dice"] == 0.65
    trials = [r for r in runs if r.data.tags.get("segsweep.kind") == "trial"]
    assert sorted(r.info.run_name for r in trials) == ["t0", "t1"]
    assert all(r.data.tags["mlflow.parentRunId"] == top.info.run_id for r in trials)
    folds = [r for r in runs if r.data.tags.get("segsweep.kind") == "fold"]
    assert len(folds) == 4
    assert all(by_id[r.data.tags["mlflow.parentRunId"]].data.tags["segsweep.kind"] == "trial" for r in folds)
    assert not list(sweep.glob("trials/*/mlflow.db")) and not list(sweep.glob("trials/*/.neptune"))
    names = {op.get("value") for _, op in neptune_operations(sweep / ".neptune") if op["path"] == ["sys", "name"]}
    assert names == {"s1", "t0", "t1"}


# --- preview ------------------------------------------------------------------------------------------


def test_preview_png_draws_true_and_predicted_contours_losslessly() -> None:
    import cv2

    from trainer.preview import PREDICTED_COLOUR, TRUE_COLOUR, preview_png, render_preview

    preview = make_preview(size=64, k=3)
    rgb = render_preview(preview, tile=128)
    assert rgb.shape[0] == 128 + 22 and rgb.shape[1] == 3 * 128 + 2 * 4
    for colour in (TRUE_COLOUR, PREDICTED_COLOUR):
        assert (rgb == np.array(colour, dtype=np.uint8)).all(axis=-1).sum() > 100
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(preview_png(preview, tile=128), np.uint8), 1), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decoded, rgb)
    with pytest.raises(ValueError, match="no images"):
        render_preview(FoldPreview((), preview.images[:0], preview.true_masks[:0], preview.probabilities[:0]))


def test_a_preview_caption_shortens_a_long_name_and_never_cuts_its_dice() -> None:
    import cv2

    from trainer.preview import _caption

    # A Kvasir-SEG stem with the report's "best: " before it ran past a 256 px tile, cutting its Dice.
    text = _caption("best: cju5vi4nxlc530817uoqm2m7a", "  Dice 0.98", 248)
    assert text.endswith("..  Dice 0.98") and text.startswith("best: cju5vi4")
    assert cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] <= 248
    assert _caption("fold 1: img3", "  Dice 0.50", 248) == "fold 1: img3  Dice 0.50"  # short: as it is


# --- how a run ended: the same states in MLflow, Neptune and a sweep's trial.json ---------------------


def test_run_states_map_to_mlflow_statuses_and_neptune_fields() -> None:
    from sweeps.folder import TRIAL_STATES
    from trainer.reporter import COMPLETE, FAILED, INTERRUPTED, PRUNED, RUNNING
    from trainer.tracking._mlflow import RUN_STATUS
    from trainer.tracking._neptune import FAILED_FIELD, REASON_FIELD, STATE_FIELD, state_fields

    assert set(TRIAL_STATES) <= set(RUN_STATUS)  # every trial.json state has its MLflow status
    assert RUN_STATUS == {RUNNING: "RUNNING", COMPLETE: "FINISHED", PRUNED: "FINISHED", FAILED: "FAILED",
                          INTERRUPTED: "KILLED"}  # fmt: skip
    assert state_fields(PRUNED, "stopped") == {STATE_FIELD: "PRUNED", REASON_FIELD: "stopped", FAILED_FIELD: False}
    assert state_fields(FAILED, "NaN")[FAILED_FIELD] is True
    assert state_fields(COMPLETE)[FAILED_FIELD] is False and state_fields(INTERRUPTED)[STATE_FIELD] == "INTERRUPTED"


def _end(reporter: Reporter, out: Path, how: str) -> None:
    """Two folds of which one finished, then the run ends ``how``: as run_cv tells its reporters."""
    reporter.on_cv_start(CVConfig(encoder="mobilenetv2", folds=2), 2, out)
    drive_fold = make_fold(1)
    reporter.on_fold_start(1, 6, 2)
    reporter.on_fold_end(drive_fold, [drive_fold], make_preview())
    if how != "PRUNED":
        reporter.on_fold_start(2, 6, 2)  # fold 2 fails or is interrupted midway
        reporter.on_epoch(2, 1, {"loss": 1.0, "val_loss": 1.0, "val_iou": 0.1, "lr": 1e-3})
    if how in ("PRUNED", "FAILED"):
        reporter.on_cv_incomplete(how, f"the reason it was {how}")
    reporter.close()


@pytest.mark.parametrize(("how", "status", "fold_2"), [("PRUNED", "FINISHED", None), ("FAILED", "FAILED", "FAILED"),
                                                       ("INTERRUPTED", "KILLED", "KILLED")])  # fmt: skip
def test_mlflow_run_ends_pruned_failed_or_interrupted_with_its_finished_folds(
    tmp_path: Path, how: str, status: str, fold_2: str | None
) -> None:
    out = tmp_path / "out"
    _end(open_trackers("mlflow", root=out, run_name="cv-run", params={}), out, how)
    runs = _runs(out)
    (cv,) = [r for r in runs if r.data.tags["segsweep.kind"] == "cv"]
    assert (cv.info.status, cv.data.tags["segsweep.state"]) == (status, how)
    assert cv.data.tags["segsweep.reason"] == ("interrupted before the run ended" if how == "INTERRUPTED"
                                               else f"the reason it was {how}")  # fmt: skip
    folds = {r.data.tags["segsweep.fold"]: r for r in runs if r.data.tags["segsweep.kind"] == "fold"}
    assert folds["1"].info.status == "FINISHED" and folds["1"].data.metrics["dice"] == pytest.approx(0.6)
    assert "segsweep.interrupted" not in folds["1"].data.tags
    if fold_2 is None:
        assert "2" not in folds
    else:
        assert folds["2"].info.status == fold_2 and folds["2"].data.tags["segsweep.interrupted"] == "true"


def test_mlflow_complete_run_and_a_resumed_one_record_their_state(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _end(open_trackers("mlflow", root=out, run_name="cv-run", params={}), out, "INTERRUPTED")
    drive(open_trackers("mlflow", root=out, run_name="cv-run", params={}), out, folds=(2,), done=[make_fold(1)])
    (cv,) = [r for r in _runs(out) if r.data.tags["segsweep.kind"] == "cv"]
    assert (cv.info.status, cv.data.tags["segsweep.state"], cv.data.tags["segsweep.reason"]) == (
        "FINISHED", "COMPLETE", "")  # fmt: skip


@pytest.mark.parametrize("how", ["PRUNED", "FAILED", "INTERRUPTED", "COMPLETE"])
def test_neptune_run_records_how_it_ended(tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEPTUNE_MODE", "offline")
    out = tmp_path / "out"
    reporter = open_trackers("neptune", root=out, run_name="cv-run", params={})
    if how == "COMPLETE":
        drive(reporter, out)
    else:
        _end(reporter, out, how)
    assigned: dict[str, object] = {}
    for _, op in neptune_operations(out / ".neptune"):
        if op["type"].startswith("Assign"):
            assigned["/".join(op["path"])] = op.get("value")  # the last assignment wins, as in Neptune
    assert assigned["segsweep/state"] == how and assigned["sys/failed"] is (how == "FAILED")
    assert assigned["folds/01/dice"] == pytest.approx(0.6)


def test_mlflow_experiment_is_a_model_training_one(tmp_path: Path) -> None:
    from trainer.tracking._mlflow import EXPERIMENT_KIND_TAG, experiment_id_for, make_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = make_client(uri)
    new = experiment_id_for(client, "fresh", uri)
    # MLflow 3's UI opens an experiment on its runs table for this kind (its GenAI overview otherwise).
    assert client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    older = client.create_experiment("older")  # made by a segsweep that did not mark it
    assert experiment_id_for(client, "older", uri) == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    client.set_experiment_tag(older, EXPERIMENT_KIND_TAG, "genai_development")  # a user's own choice stays
    experiment_id_for(client, "older", uri)
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == "genai_development"
