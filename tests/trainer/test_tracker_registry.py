"""A new tracker is one module plus one registry line: the stand-in of tests/support/jsonl_tracker.py,
registered with one line, is a ``--tracker`` choice and gets the run life cycle of a real (tiny)
cross-validation and the sweep's, as MLflow does, ending COMPLETE, PRUNED or FAILED alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segsweep.base.errors import ConfigError
from tests.support import TINY_ENCODER
from tests.support.jsonl_tracker import LOG_FILE, JsonLinesTracker, read_events
from tests.support.synth import make_dataset
from tests.support.tracking import drive
from trainer.config import CVConfig
from trainer.data import PreparedData, prepare_dataset
from trainer.reporter import COMPLETE, FAILED, PRUNED, MultiReporter, Reporter, StoppedEarly
from trainer.results import FoldResult
from trainer.tracking import (
    TRACKER_BACKENDS,
    finish_sweep_tracking,
    open_trackers,
    parse_tracker_names,
    register_tracker,
    start_sweep_tracking,
    tracker_help,
)

PLANTED_TOKEN = "planted-registry-token-7d1e9a"


@pytest.fixture
def jsonl() -> Iterator[None]:
    register_tracker(JsonLinesTracker)  # the registry line a new tracker adds in trainer/tracking/__init__.py
    yield
    del TRACKER_BACKENDS[JsonLinesTracker.key]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    root = make_dataset(tmp_path_factory.mktemp("registry-data"), 8)
    return prepare_dataset(root, 64, cache_dir=tmp_path_factory.mktemp("registry-cache"))


def _mlflow_runs(root: Path) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids, max_results=1000))


def test_a_registered_tracker_is_a_tracker_choice(jsonl: None, capsys: pytest.CaptureFixture[str]) -> None:
    from sweeps.cli import build_parser
    from sweeps.folder import SweepFolder

    assert parse_tracker_names("jsonl, mlflow") == ("jsonl", "mlflow")
    assert parse_tracker_names(None) == ("mlflow",)  # not on by default: it says no default_when
    with pytest.raises(ConfigError, match=r"unknown tracker 'wandb'; .*mlflow, neptune, jsonl, or none"):
        parse_tracker_names("wandb")
    assert tracker_help() == (
        "comma-separated trackers: mlflow, neptune, jsonl, or none "
        "(default: mlflow, plus neptune when NEPTUNE_PROJECT is set)"
    )
    for verb in (["cv"], ["sweep", "run"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*verb, "--help"])
        assert "mlflow, neptune, jsonl, or none" in " ".join(capsys.readouterr().out.split())
    # The sweep folder names the files a tracker owns by asking the tracker.
    assert SweepFolder(Path("s1")).tracker_path("jsonl", "log") == Path("s1") / LOG_FILE
    assert SweepFolder(Path("s1")).mlflow_db == Path("s1/mlflow.db")


class _Ender(Reporter):
    """Ends a run as a sweep's scheduler (PRUNED after fold 1) or an error in fold 2 (FAILED) does."""

    def __init__(self, how: str) -> None:
        self.how = how

    def on_fold_start(self, fold: int, n_train: int, n_val: int) -> None:
        if self.how == FAILED and fold == 2:
            raise RuntimeError("fold 2 broke")

    def on_fold_end(self, result: FoldResult, completed: list[FoldResult], preview: object) -> None:
        if self.how == PRUNED:
            raise StoppedEarly("pruned after fold 1")


@pytest.mark.slow
@pytest.mark.parametrize("how", [COMPLETE, PRUNED, FAILED])
def test_stand_in_gets_the_life_cycle_of_a_real_cv_as_mlflow_does(
    jsonl: None, tiny_data: PreparedData, tmp_path: Path, how: str
) -> None:
    from trainer.cv import run_cv

    config = CVConfig(encoder=TINY_ENCODER, weights="none", image_size=64, folds=2, epochs=1, batch_size=2)
    out = tmp_path / "out"
    params = {**config.to_dict(), "extra": {"api_token": PLANTED_TOKEN}}
    reporter = MultiReporter([open_trackers("mlflow,jsonl", root=out, run_name="cv", params=params), _Ender(how)])
    if how == COMPLETE:
        run_cv(config, tiny_data, out, reporter)
    else:
        with pytest.raises(StoppedEarly if how == PRUNED else RuntimeError):
            run_cv(config, tiny_data, out, reporter)

    events = read_events(out / LOG_FILE)
    assert PLANTED_TOKEN not in (out / LOG_FILE).read_text()  # params reach every backend redacted
    assert [e["event"] for e in events if e["event"] not in ("epoch",)] == [
        "run_start", "fold_start", "fold_end",
        *(["fold_start", "fold_end"] if how == COMPLETE else ["fold_start"] if how == FAILED else []),
        "run_end",
    ]  # fmt: skip
    assert events[0]["params"]["encoder"] == TINY_ENCODER and events[0]["parent"] is None
    epochs = {(e["fold"], e["epoch"]) for e in events if e["event"] == "epoch"}
    assert epochs == {(e["fold"], 1) for e in events if e["event"] == "fold_end"}  # one epoch per finished fold
    assert all(e["preview"] for e in events if e["event"] == "fold_end")
    end = events[-1]
    # MLflow recorded the same run: the same state and reason, the same finished folds and scores.
    runs = _mlflow_runs(out)
    (cv,) = [r for r in runs if r.data.tags["segsweep.kind"] == "cv"]
    assert (end["state"], end["reason"]) == (cv.data.tags["segsweep.state"], cv.data.tags["segsweep.reason"])
    assert end["state"] == how
    finished = {int(r.data.tags["segsweep.fold"]): r.data.metrics["dice"] for r in runs
                if r.data.tags["segsweep.kind"] == "fold" and "dice" in r.data.metrics}  # fmt: skip
    assert {e["fold"]: e["dice"] for e in events if e["event"] == "fold_end"} == pytest.approx(finished)


def test_stand_in_gets_the_sweep_life_cycle_as_mlflow_does(jsonl: None, tmp_path: Path) -> None:
    sweep = tmp_path / "s1"
    ctx = start_sweep_tracking("mlflow,jsonl", sweep, "s1", {"space": "quick", "api_token": PLANTED_TOKEN})
    assert ctx.trackers == ("mlflow", "jsonl")
    assert ctx.part("jsonl") == {"log": str(sweep.resolve() / LOG_FILE), "run": "s1"}
    for trial in ("t0", "t1"):
        root = sweep / "trials" / trial
        drive(open_trackers(None, root=root, run_name=trial, params={"lr": 1e-3}, parent=ctx), root)
    finish_sweep_tracking(ctx, {"best_trial": "t1", "trials": 2})

    assert not list(sweep.glob(f"trials/*/{LOG_FILE}"))  # trials log into the sweep's file
    events = read_events(sweep / LOG_FILE)
    assert PLANTED_TOKEN not in (sweep / LOG_FILE).read_text()
    assert (events[0]["event"], events[-1]["event"]) == ("sweep_start", "sweep_end")
    assert events[-1]["summary"] == {"best_trial": "t1", "trials": 2}
    starts = [e for e in events if e["event"] == "run_start"]
    assert [(e["run"], e["parent"]) for e in starts] == [("t0", "s1"), ("t1", "s1")]
    assert [e["state"] for e in events if e["event"] == "run_end"] == [COMPLETE, COMPLETE]
    # MLflow, beside it: the sweep's run finished, its two trials nested under it.
    runs = _mlflow_runs(sweep)
    (top,) = [r for r in runs if r.data.tags.get("segsweep.kind") == "sweep"]
    assert top.info.status == "FINISHED" and top.data.tags["segsweep.state"] == COMPLETE
    trials = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == top.info.run_id)
    assert trials == ["t0", "t1"]


def test_a_failing_stand_in_warns_and_the_sweep_goes_on(
    jsonl: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.tracking import TrackingWarning

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise OSError("disk full")

    monkeypatch.setattr(JsonLinesTracker, "start_sweep", classmethod(broken))
    with pytest.warns(TrackingWarning, match=r"JSON lines tracking is off for this sweep: .*disk full"):
        ctx = start_sweep_tracking("jsonl,mlflow", tmp_path / "s1", "s1", {})
    assert ctx.trackers == ("mlflow",)


def test_a_misspelt_tracker_names_the_closest() -> None:
    from trainer.tracking import parse_tracker_names

    with pytest.raises(ConfigError, match=r"unknown tracker 'mlfow'; did you mean 'mlflow'\? use a comma-separated"):
        parse_tracker_names("mlfow")
