"""The sweep folder's typed records: every writer of trial.json writes what TrialRecord holds, and
the readers refuse what it does not (an unknown field, a wrong type, a newer format).

The writers run as the sweep runs them: the searcher proposing, the trainable's reporter and park,
the driver's callback and its reconciliation after a driver death, the tests' fabricated sweeps,
and (``slow``) a real sweep on a local Ray with the stand-in cross-validation.
"""

from __future__ import annotations

import io
import json
import threading
import tokenize
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from search_spaces import load_space
from sweeps._callbacks import SweepCallback
from sweeps._optuna import make_searcher
from sweeps._trainable import TuneFoldReporter, wait_while_stopping
from sweeps.cli import main
from sweeps.folder import (
    FORMAT_VERSION,
    DamagedRecord,
    SweepFolder,
    SweepRecord,
    TrialRecord,
    clear_stop_request,
    load_sweep,
    read_progress,
    read_spec_record,
    read_trial_record,
    request_stop,
    summarise_sweep,
    update_trial_record,
    write_spec_record,
)
from sweeps.runner import _reconcile
from sweeps.spec import SweepSpec
from tests.support import TINY_ENCODER
from tests.support.fake_sweep import FakeTrial, make_sweep
from trainer.config import CVConfig

REPO = Path(__file__).resolve().parents[2]
_TRIAL = {"encoder": TINY_ENCODER, "weights": "none", "batch_size": 4, "lr": 1e-3}


def assert_trial_records_follow_the_schema(sweep_dir: Path) -> int:
    """Every trial.json under ``sweep_dir`` is a TrialRecord of this format, read strictly, and
    holds nothing the record leaves out (it writes back byte for byte the same object); returns how many."""
    paths = sorted(SweepFolder(sweep_dir).trials_dir.glob("*/trial.json"))
    for path in paths:
        written = json.loads(path.read_text())
        assert written.get("format") == FORMAT_VERSION, path
        record = TrialRecord.from_dict(written, path)  # strict: raises for an unknown field or type
        assert record.to_dict() == written, path
        assert record.trial_id == path.parent.name, path
    return len(paths)


# --- every writer ---------------------------------------------------------------------------------


def test_a_fabricated_sweep_writes_schema_records(tmp_path: Path) -> None:
    pruned = FakeTrial(_TRIAL, [0.4], state="PRUNED", reason="stopped by the scheduler")
    make_sweep(tmp_path, "s", [FakeTrial(_TRIAL, [0.5, 0.6]), pruned])
    assert assert_trial_records_follow_the_schema(tmp_path / "s") == 2


def test_the_searcher_and_the_driver_callback_write_schema_records(tmp_path: Path) -> None:
    write_spec_record(SweepFolder(tmp_path), {"name": "s", "trials": 4})
    searcher = make_searcher(tmp_path, "s", load_space("quick").define_by_run, 4, 1, 0)
    for trial_id in ("done", "pruned", "failed", "retried"):
        searcher.suggest(trial_id)  # the searcher's writer: number, params, proposed, start
    callback = SweepCallback(tmp_path, "s")

    def trial(trial_id: str, folds_done: int = 0) -> Any:
        return SimpleNamespace(trial_id=trial_id, last_result={"folds_done": folds_done, "n_folds": 2, "dice": 0.5},
                               get_pickled_error=lambda: None, get_error=lambda: None)  # fmt: skip

    callback.on_trial_complete(0, [], trial("done", 2))
    callback.on_trial_complete(0, [], trial("pruned", 1))
    callback.on_trial_error(0, [], trial("failed"))
    callback.on_trial_recover(0, [], trial("retried"))
    assert assert_trial_records_follow_the_schema(tmp_path) == 4
    states = {t: read_trial_record(SweepFolder(tmp_path).trial_dir(t)).state for t in ("done", "pruned", "failed")}
    assert states == {"done": "COMPLETE", "pruned": "PRUNED", "failed": "FAILED"}


def test_the_trainable_reporter_and_park_write_schema_records(tmp_path: Path) -> None:
    sweep = SweepFolder(tmp_path)
    folder = sweep.trial_dir("t")
    update_trial_record(folder, trial_id="t")
    TuneFoldReporter(folder).on_cv_start(CVConfig(encoder=TINY_ENCODER, epochs=1, folds=2), 2, folder)
    request_stop(sweep, "a test stops the sweep")
    parked = threading.Thread(target=wait_while_stopping, args=(sweep, folder))
    parked.start()
    while not read_trial_record(folder).parked:
        parked.join(0.05)
    clear_stop_request(sweep)
    parked.join(10)
    record = read_trial_record(folder)
    assert record.n_folds == 2 and record.parked is False
    assert assert_trial_records_follow_the_schema(tmp_path) == 1


def test_the_reconciliation_after_a_driver_death_writes_schema_records(tmp_path: Path) -> None:
    running = [FakeTrial(_TRIAL, [0.5, 0.6], state="RUNNING"), FakeTrial(_TRIAL, [0.5], state="RUNNING"),
               FakeTrial(_TRIAL, [], state="RUNNING")]  # fmt: skip
    make_sweep(tmp_path, "s", running)
    spec = SweepSpec(name="s", data=str(tmp_path / "data"), space="quick", trials=3, storage=str(tmp_path))
    _reconcile(spec, {"trial_00000": "TERMINATED", "trial_00001": "ERROR"})  # trial_00002: never recorded by Ray
    states = [t.state for t in load_sweep(tmp_path, "s").trials]
    assert states == ["COMPLETE", "FAILED", "FAILED"]
    assert assert_trial_records_follow_the_schema(tmp_path / "s") == 3


@pytest.mark.slow
def test_a_real_sweep_writes_schema_records(tmp_path: Path, local_ray: None) -> None:
    """Searcher, trainable, callback and driver on a local Ray: proposals, attempts, a retried crash,
    a fatal NaN failure, ASHA's pruning and completions."""
    from sweeps.runner import run_sweep
    from tests.support import fake_cv as fake
    from tests.support.ray import tiny_sweep_spec

    spec = tiny_sweep_spec(tmp_path, "r", {"fold_seconds": 0.2, "roles": ["plain", "nan", "crash_once"]},
                           trials=5, concurrency=1, scheduler="asha", seed=1)  # fmt: skip
    assert run_sweep(spec, cv_runner=fake.fake_run_cv).finished
    assert assert_trial_records_follow_the_schema(tmp_path / "out" / "r") == 5
    records = [read_trial_record(t.path) for t in load_sweep(tmp_path / "out", "r").trials if t.path]
    assert {r.state for r in records} >= {"COMPLETE", "FAILED"}
    assert any(r.fatal_reason for r in records) and any(len(r.attempts or []) > 1 for r in records)


def test_only_the_sweep_folder_names_trial_json_and_sweep_json() -> None:
    """No module outside sweeps/folder opens these records itself (it would bypass the schema)."""
    named = []
    for package in ("trainer", "sweeps", "reports", "search_spaces", "segsweep"):
        for path in (REPO / package).rglob("*.py"):
            if path.parent.name == "folder" and path.parent.parent.name == "sweeps":
                continue
            tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
            if any(t.type == tokenize.STRING and t.string.strip("\"'") in ("trial.json", "sweep.json") for t in tokens):
                named.append(str(path.relative_to(REPO)))
    assert named == []


# --- the records' strictness -----------------------------------------------------------------------


def _write(trial_dir: Path, values: dict[str, Any]) -> Path:
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "trial.json").write_text(json.dumps(values))
    return trial_dir / "trial.json"


def test_a_typo_in_an_update_is_an_error_at_once_and_writes_nothing(tmp_path: Path) -> None:
    update_trial_record(tmp_path, trial_id="t", state="RUNNING")
    before = (tmp_path / "trial.json").read_bytes()
    with pytest.raises(TypeError, match=r"unknown field.*'folds_don'"):
        update_trial_record(tmp_path, folds_don=2)
    with pytest.raises(TypeError, match="'n_folds' must be int or null, found '2'"):
        update_trial_record(tmp_path, n_folds="2")
    with pytest.raises(TypeError, match="'parked' must be bool"):
        update_trial_record(tmp_path, parked=1)
    assert (tmp_path / "trial.json").read_bytes() == before


def test_none_clears_a_field(tmp_path: Path) -> None:
    update_trial_record(tmp_path, trial_id="t", error="OSError: disk gone")
    assert "error" not in update_trial_record(tmp_path, error=None).to_dict()
    assert json.loads((tmp_path / "trial.json").read_text()) == {"trial_id": "t", "format": FORMAT_VERSION}


def test_a_record_with_an_unknown_field_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {"trial_id": "t", "state": "COMPLETE", "colour": "red", "format": FORMAT_VERSION})
    with pytest.raises(DamagedRecord, match=rf"^{path}: unknown field\(s\) 'colour'"):
        read_trial_record(tmp_path)
    with pytest.raises(DamagedRecord):  # and an update does not drop it
        update_trial_record(tmp_path, state="FAILED")
    assert json.loads(path.read_text())["colour"] == "red"


def test_a_record_with_a_value_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, {"trial_id": "t", "number": "three", "format": FORMAT_VERSION})
    with pytest.raises(DamagedRecord, match=rf"^{path}: 'number' must be int or null, found 'three'"):
        read_trial_record(tmp_path)


def test_a_record_of_a_newer_format_is_refused_not_rewritten(tmp_path: Path) -> None:
    path = _write(tmp_path, {"trial_id": "t", "format": FORMAT_VERSION + 1, "new_field": 1})
    with pytest.raises(DamagedRecord, match=rf"{path}: record format {FORMAT_VERSION + 1} is not one this"):
        update_trial_record(tmp_path, state="FAILED")
    assert json.loads(path.read_text())["new_field"] == 1


def test_a_record_written_before_formats_still_reads(tmp_path: Path) -> None:
    _write(tmp_path, {"trial_id": "t", "number": 0, "params": {"lr": 0.001}, "state": "COMPLETE",
                      "config": {"lr": 0.001}, "n_folds": 2, "retired_field": True})  # fmt: skip
    record = read_trial_record(tmp_path)
    assert (record.number, record.state, record.n_folds, record.format) == (0, "COMPLETE", 2, None)
    assert update_trial_record(tmp_path, reason="x").format == FORMAT_VERSION


def test_status_of_a_sweep_with_a_foreign_trial_record_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_sweep(tmp_path, "s", [FakeTrial(_TRIAL, [0.5, 0.6])])
    path = SweepFolder.at(tmp_path, "s").trial_dir("trial_00000") / "trial.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "colour": "red"}))
    assert main(["sweep", "status", "s", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "'colour'" in err and "Traceback" not in err


def test_sweep_json_reads_as_a_sweep_record_and_keeps_its_runs(tmp_path: Path) -> None:
    spec = SweepSpec(name="s", data="/data", space="quick", trials=3, storage=str(tmp_path), threads=2)
    spec.write()
    record = read_spec_record(spec.folder)
    record.runs.append({"ended": "2025-01-01T00:00:00+00:00", "finished": True})
    write_spec_record(spec.folder, record)
    spec.write()  # a resume writes the specification again: the runs stay
    again = read_spec_record(spec.folder)
    assert isinstance(again, SweepRecord) and again.runs[0]["finished"] and again.format == FORMAT_VERSION
    assert (again.trials, again.data, again.space, again.threads) == (3, "/data", "quick", 2)
    assert SweepSpec.read(tmp_path, "s").threads == 2


def test_an_old_sweep_json_reads_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    old = SweepRecord.from_dict({"name": "o", "trials": 2, "max_failures": 5}, "sweep.json")
    assert old.specification["trial_retries"] == 5 and "max_failures" not in old.specification
    with pytest.raises(DamagedRecord, match="record format 99"):
        SweepRecord.from_dict({"name": "n", "format": 99}, tmp_path / "sweep.json")
    with pytest.raises(DamagedRecord, match="'runs' must be a list"):
        SweepRecord.from_dict({"name": "n", "runs": "yesterday"}, tmp_path / "sweep.json")


# --- one eligibility rule ----------------------------------------------------------------------------


def test_status_list_and_the_live_view_pick_the_ranking_s_winner(tmp_path: Path) -> None:
    """The live view and `sweep list` read trial.json, the ranking the fold files: one rule for both."""
    make_sweep(tmp_path, "s", [
        FakeTrial(_TRIAL, [0.9], n_folds=2, state="COMPLETE"),  # not every fold: may not win
        FakeTrial(_TRIAL, [0.8, 0.8], state="PRUNED"),  # pruned: may not win
        FakeTrial(_TRIAL, [0.5, 0.7]),
        FakeTrial(_TRIAL, [0.4, 0.5]),
    ])  # fmt: skip
    sweep = load_sweep(tmp_path, "s")
    winner = sweep.completed()[0]
    progress = read_progress(sweep.folder)
    assert progress.best is not None and progress.best[0] == winner.label
    assert progress.best[1] == pytest.approx(winner.mean["dice"])
    assert summarise_sweep(sweep.folder).best_dice == pytest.approx(winner.mean["dice"])
