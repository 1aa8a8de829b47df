"""The sweep's Optuna side on tiny real studies: pruned, failed and complete trials, reconciliation."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces import load_space
from segsweep.base.files import write_json_atomic
from sweeps._optuna import (
    completion_state,
    make_searcher,
    n_startup_trials,
    rebuild_study,
    reconcile_study,
    space_exhausted,
)
from sweeps.folder import (
    OBJECTIVE,
    STUDY_EXHAUSTED_ATTR,
    STUDY_REASON_ATTR,
    STUDY_REPEAT_ATTR,
    STUDY_START_ATTR,
    STUDY_TRIAL_ID_ATTR,
    SweepFolder,
    TrialRecord,
    read_trial_record,
    update_trial_record,
    write_spec_record,
)
from trainer.results import FoldResult, fold_path


def _result(folds_done: int, n_folds: int, dice: float) -> dict[str, float]:
    return {
        "dice": dice,
        "iou": dice * 0.8,
        "folds_done": folds_done,
        "n_folds": n_folds,
        "training_iteration": folds_done,
    }


def _load(sweep: Path, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=SweepFolder(sweep).optuna_url)


def test_pruned_complete_and_failed_trials_enter_the_study_as_such(tmp_path: Path) -> None:
    space = load_space("quick")
    searcher = make_searcher(tmp_path, "s", space.define_by_run, trials=4, concurrency=2, seed=3)
    configs = {tid: searcher.suggest(tid) for tid in ("t1", "t2", "t3")}
    assert all(c and "encoder" in c and "lr" in c for c in configs.values())

    # t1 finishes both folds; t2 is stopped by the scheduler after fold 1; t3 fails.
    searcher.on_trial_result("t1", _result(1, 2, 0.6))
    searcher.on_trial_complete("t1", _result(2, 2, 0.7))  # the last result comes only with the end
    searcher.on_trial_result("t2", _result(1, 2, 0.3))
    searcher.on_trial_complete("t2", _result(1, 2, 0.3))  # what Ray passes for an ASHA stop
    update_trial_record(SweepFolder(tmp_path).trial_dir("t3"), reason="TrainingError: loss became NaN")
    searcher.on_trial_complete("t3", error=True)

    trials = {t.user_attrs[STUDY_TRIAL_ID_ATTR]: t for t in _load(tmp_path).get_trials()}
    assert trials["t1"].state == TrialState.COMPLETE and trials["t1"].value == pytest.approx(0.7)
    assert trials["t1"].intermediate_values == {1: 0.6, 2: 0.7}
    assert trials["t2"].state == TrialState.PRUNED
    assert trials["t2"].intermediate_values == {1: 0.3}
    assert trials["t3"].state == TrialState.FAIL
    assert trials["t3"].user_attrs[STUDY_REASON_ATTR] == "TrainingError: loss became NaN"
    # The searcher writes each proposal's Optuna number and parameters into trial.json.
    for tid, frozen in trials.items():
        record = read_trial_record(SweepFolder(tmp_path).trial_dir(tid))
        assert record.number == frozen.number and record.params == frozen.params


def test_stock_ray_searcher_would_record_a_stopped_trial_as_complete(tmp_path: Path) -> None:
    """Why segsweep subclasses OptunaSearch: Ray's own records a one-fold mean as a final value."""
    stock = OptunaSearch(space=load_space("quick").define_by_run, metric="dice", mode="max", seed=0)
    stock.suggest("t")
    stock.on_trial_result("t", _result(1, 2, 0.3))
    stock.on_trial_complete("t", _result(1, 2, 0.3))
    assert stock._ot_study.get_trials()[0].state == TrialState.COMPLETE


def test_repeated_fold_reports_after_a_restore_are_ignored(tmp_path: Path) -> None:
    searcher = make_searcher(tmp_path, "s", load_space("quick").define_by_run, 4, 1, 0)
    searcher.suggest("t")
    searcher.on_trial_result("t", _result(1, 2, 0.5))
    searcher.on_trial_result("t", _result(1, 2, 0.5))  # the restored trial reports fold 1 again
    searcher.on_trial_complete("t", _result(2, 2, 0.6))
    searcher.on_trial_complete("t", _result(2, 2, 0.6))  # told twice: no error
    (frozen,) = _load(tmp_path).get_trials()
    assert frozen.state == TrialState.COMPLETE and frozen.intermediate_values == {1: 0.5, 2: 0.6}


def test_searcher_state_pickles_and_continues_the_same_study(tmp_path: Path) -> None:
    searcher = make_searcher(tmp_path, "s", load_space("quick").define_by_run, 4, 1, 0)
    searcher.suggest("t1")
    saved = tmp_path / "searcher.pkl"
    searcher.save(str(saved))
    restored = make_searcher(tmp_path, "s", load_space("quick").define_by_run, 4, 1, 0)
    restored.restore(str(saved))
    restored.on_trial_result("t1", _result(1, 1, 0.4))
    restored.on_trial_complete("t1", _result(1, 1, 0.4))
    restored.suggest("t2")
    states = [t.state for t in _load(tmp_path).get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.RUNNING]
    pickle.dumps(restored)


def test_a_lost_study_is_rebuilt_from_the_trial_records_and_the_saved_searcher_goes_on(tmp_path: Path) -> None:
    # `sweep resume` after optuna.db was deleted went on with no study at all.
    space, sweep = load_space("quick"), tmp_path / "s"
    folder = SweepFolder(sweep)
    write_spec_record(folder, {"name": "s"})
    searcher = make_searcher(sweep, "s", space.define_by_run, 4, 1, 0)
    for trial_id in ("done", "pruned", "failed", "going"):
        searcher.suggest(trial_id)

    def fold_ends(trial_id: str, dices: list[float]) -> None:
        for k, dice in enumerate(dices, start=1):
            fold = FoldResult(
                fold=k,
                n_train=4,
                n_val=2,
                dice=dice,
                iou=0.8 * dice,
                epochs_run=1,
                lr_drops=[],
                history=[],
                seconds=1.0,
            )
            write_json_atomic(fold_path(folder.trial_dir(trial_id), k), fold.to_dict())
            searcher.on_trial_result(trial_id, _result(k, 2, sum(dices[:k]) / k))

    fold_ends("done", [0.5, 0.7])
    searcher.on_trial_complete("done", _result(2, 2, 0.6))
    fold_ends("pruned", [0.3])
    searcher.on_trial_complete("pruned", _result(1, 2, 0.3))
    update_trial_record(folder.trial_dir("failed"), reason="NaN loss in fold 1")
    update_trial_record(folder.trial_dir("done"), start="hand-pick")  # a starting point stays marked
    searcher.on_trial_complete("failed", error=True)
    fold_ends("going", [0.4])
    for trial_id, state in (("done", "COMPLETE"), ("pruned", "PRUNED"), ("failed", "FAILED")):
        update_trial_record(folder.trial_dir(trial_id), state=state)
    saved = tmp_path / "searcher.pkl"
    searcher.save(str(saved))  # what Ray's experiment state holds
    before = _load(sweep).get_trials()
    folder.optuna_db.unlink()

    assert rebuild_study(sweep, "s", space) == 4
    after = _load(sweep).get_trials()
    for old, new in zip(before, after, strict=True):
        assert (new.number, new.state, new.params, new.distributions) == (
            old.number,
            old.state,
            old.params,
            old.distributions,
        )
        assert new.value == pytest.approx(old.value) and new.intermediate_values == pytest.approx(
            old.intermediate_values
        )
        assert new.user_attrs[STUDY_TRIAL_ID_ATTR] == old.user_attrs[STUDY_TRIAL_ID_ATTR]
    assert after[2].user_attrs[STUDY_REASON_ATTR] == "NaN loss in fold 1"
    assert after[0].user_attrs[STUDY_START_ATTR] == "hand-pick"
    assert _load(sweep).metric_names == [OBJECTIVE.display_name]  # optuna-dashboard names it, as on the first run
    # Ray's saved searcher refers to the study's trials by storage id: it finishes the running one.
    restored = make_searcher(sweep, "s", space.define_by_run, 4, 1, 0)
    restored.restore(str(saved))
    restored.on_trial_complete("going", _result(2, 2, 0.45))
    going = _load(sweep).get_trials()[3]
    assert going.state == TrialState.COMPLETE and going.intermediate_values == pytest.approx({1: 0.4, 2: 0.45})


def test_completion_state() -> None:
    assert completion_state(_result(2, 2, 0.5), error=False) == (TrialState.COMPLETE, 0.5)
    assert completion_state(_result(1, 2, 0.5), error=False) == (TrialState.PRUNED, None)
    assert completion_state(_result(2, 2, float("nan")), error=False)[0] == TrialState.FAIL
    assert completion_state(None, error=False)[0] == TrialState.FAIL
    assert completion_state(_result(2, 2, 0.5), error=True)[0] == TrialState.FAIL


def test_reconcile_finishes_trials_a_dead_driver_left_running(tmp_path: Path) -> None:
    searcher = make_searcher(tmp_path, "s", load_space("quick").define_by_run, 4, 1, 0)
    for tid in ("done", "orphan"):
        searcher.suggest(tid)
    records = {
        "done": TrialRecord(state="COMPLETE", mean_dice=0.42),
        "orphan": read_trial_record(SweepFolder(tmp_path).trial_dir("orphan")),  # RUNNING: never started
    }
    assert reconcile_study(tmp_path, "s", records) == 2
    trials = {t.user_attrs[STUDY_TRIAL_ID_ATTR]: t for t in _load(tmp_path).get_trials()}
    assert trials["done"].state == TrialState.COMPLETE and trials["done"].value == pytest.approx(0.42)
    assert trials["orphan"].state == TrialState.FAIL
    assert "driver stopped" in trials["orphan"].user_attrs[STUDY_REASON_ATTR]


@pytest.mark.parametrize(("trials", "concurrency", "expected"), [(4, 2, 2), (4, 1, 2), (100, 4, 10), (30, 8, 8)])
def test_startup_trials_scale_with_the_budget(trials: int, concurrency: int, expected: int) -> None:
    assert n_startup_trials(trials, concurrency) == expected


def test_study_names_its_objective_and_a_resumed_study_keeps_the_name(tmp_path: Path) -> None:
    assert OBJECTIVE.display_name == "mean CV Dice"  # what optuna-dashboard shows instead of "Objective 0"
    searcher = make_searcher(tmp_path, "s", load_space("quick").define_by_run, 4, 1, 0)
    searcher.suggest("t1")
    assert _load(tmp_path).metric_names == [OBJECTIVE.display_name]
    saved = tmp_path / "searcher.pkl"
    searcher.save(str(saved))
    # A study made before its objective was named (an older sweep), then resumed: named on restore.
    optuna.create_study(study_name="old", storage=SweepFolder(tmp_path).optuna_url, direction="maximize")
    old = make_searcher(tmp_path, "old", load_space("quick").define_by_run, 4, 1, 0)
    old._ot_study = _load(tmp_path, "old")
    old.save(str(saved))
    restored = make_searcher(tmp_path, "old", load_space("quick").define_by_run, 4, 1, 0)
    restored.restore(str(saved))
    restored.suggest("t2")
    assert _load(tmp_path, "old").metric_names == [OBJECTIVE.display_name]
    assert _load(tmp_path).metric_names == [OBJECTIVE.display_name]


_FOUR_CONFIGURATIONS = """\
name: four
description: two encoders by two batch sizes, nothing continuous
params:
  encoder:
    type: categorical
    choices: [mobilenetv2, resnet18]
  batch_size:
    type: categorical
    choices: [4, 8]
fixed:
  weights: none
  image_size: 64
  folds: 2
  epochs: 1
  lr: 1.0e-3
"""


def _run_searcher(searcher: OptunaSearch, n: int, score: float = 0.5) -> list[object]:
    """Ask ``n`` times as Ray would, finishing each proposal with ``score``; the answers, in order."""
    answers: list[object] = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        answers.append(config)
        if isinstance(config, dict):
            searcher.on_trial_complete(f"t{i}", _result(2, 2, score + 0.01 * i))
    return answers


def test_a_proposal_repeating_a_scored_configuration_is_answered_from_the_study(tmp_path: Path) -> None:
    (tmp_path / "four.yaml").write_text(_FOUR_CONFIGURATIONS)
    space = load_space(tmp_path / "four.yaml")
    searcher = make_searcher(tmp_path, "s", space.define_by_run, trials=8, concurrency=1, seed=0)
    answers = _run_searcher(searcher, 5)
    trained = [a for a in answers if isinstance(a, dict)]
    keys = {(a["encoder"], a["batch_size"]) for a in trained}
    # Each of the four configurations trains once; then the space is exhausted and the search ends.
    assert len(trained) == len(keys) == 4
    assert answers[4] == Searcher.FINISHED
    study = _load(tmp_path)
    repeats = [t for t in study.trials if STUDY_REPEAT_ATTR in t.user_attrs]
    assert repeats and all(t.state == TrialState.COMPLETE for t in repeats)
    by_number = {t.number: t for t in study.trials}
    assert all(t.value == by_number[t.user_attrs[STUDY_REPEAT_ATTR]].value for t in repeats)
    assert all(t.params == by_number[t.user_attrs[STUDY_REPEAT_ATTR]].params for t in repeats)
    assert not any(STUDY_TRIAL_ID_ATTR in t.user_attrs for t in repeats)  # no Ray trial, no trial folder
    # The study says why the search ended: the driver's end reads it (sweeps.runner), so does `sweep list`.
    assert space_exhausted(tmp_path, "s") == study.user_attrs[STUDY_EXHAUSTED_ATTR]
    assert study.user_attrs[STUDY_EXHAUSTED_ATTR].startswith("search space exhausted after 4 scored configurations")


def test_a_warm_started_configuration_is_not_trained_again(tmp_path: Path) -> None:
    (tmp_path / "four.yaml").write_text(_FOUR_CONFIGURATIONS)
    space = load_space(tmp_path / "four.yaml")
    searcher = make_searcher(tmp_path, "s", space.define_by_run, trials=8, concurrency=1, seed=0)
    assert searcher._ot_study is not None
    earlier = []
    for encoder, batch_size in (("mobilenetv2", 4), ("resnet18", 8), ("resnet18", 4)):
        fixed = optuna.trial.FixedTrial({"encoder": encoder, "batch_size": batch_size})
        space.define_by_run(fixed)
        earlier.append(
            optuna.trial.create_trial(
                value=0.6, params=fixed.params, distributions=fixed.distributions, state=TrialState.COMPLETE
            )
        )
    searcher._ot_study.add_trials(earlier)  # what --warm-start does with an earlier sweep's trials
    [only, finished] = _run_searcher(searcher, 2)
    assert isinstance(only, dict) and (only["encoder"], only["batch_size"]) == ("mobilenetv2", 8)
    assert finished == Searcher.FINISHED
