"""Starting points (--start, a space's start:) and warm starts (--warm-start) on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from search_spaces import SearchSpace, load_space
from segsweep.base.errors import ConfigError
from sweeps._start import (
    StartEntry,
    add_warm_start_trials,
    enqueue_start_points,
    prepare_warm_start,
    read_start_file,
    resolve_start_points,
    warm_start_trials,
)
from sweeps.folder import STUDY_START_ATTR, STUDY_WARM_START_ATTR, SweepFolder, format_leaderboard, load_sweep
from sweeps.runner import run_sweep
from sweeps.spec import SweepSpec
from tests.support import fake_cv as fake
from tests.support.fake_sweep import make_sweep
from tests.support.ray import tiny_sweep_spec

HAND_PICK = {"encoder": "resnet18", "arch": "unet", "weights": "none", "batch_size": 8, "epochs": 12, "lr": 1e-3,
             "loss": "bce_dice", "folds": 3, "image_size": 128, "seed": 0, "augment": True}  # fmt: skip


def test_start_from_best_json_cv_json_and_a_yaml_list(tmp_path: Path) -> None:
    cpu = load_space("cpu")
    best = tmp_path / "report" / "best.json"
    best.parent.mkdir()
    # Another sweep's winner at 64 px and 2 folds: its data and fold settings are this sweep's.
    best.write_text(json.dumps({"config": {**HAND_PICK, "image_size": 64, "folds": 2}, "sweep": "s1",
                                "trial_id": "t7"}))  # fmt: skip
    cv = tmp_path / "handpicked" / "cv.json"
    cv.parent.mkdir()
    cv.write_text(json.dumps({"config": HAND_PICK, "folds": []}))
    listing = tmp_path / "starts.yaml"
    listing.write_text(yaml.safe_dump([{"label": "mine", "encoder": "seresnet18", "lr": 2e-3}, {"loss": "dice"}]))
    entries = [*read_start_file(best), *read_start_file(cv), *read_start_file(listing)]
    points = resolve_start_points(entries, cpu, {"seed": 0})
    assert [p.label for p in points] == ["s1/t7", "handpicked", "mine", "starts.yaml#2"]
    searched = {k: v for k, v in HAND_PICK.items() if k in cpu.params}
    assert points[0].params == points[1].params == searched
    assert points[2].params == {"encoder": "seresnet18", "lr": 2e-3}  # partial: the rest is sampled
    # --epochs on the command line wins over a starting point's epochs.
    assert "epochs" not in resolve_start_points(entries[:1], cpu, {"epochs": 2})[0].params


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": 0.1}, r"starts.yaml: starting point 'starts.yaml#1': lr 0.1 lies outside the space 'cpu' \(range"),
        ({"encoder": "vgg16"}, r"encoder 'vgg16' lies outside the space 'cpu' \(choices"),
        ({"weights": "imagenet"}, r"weights 'imagenet' lies outside the space 'cpu', which fixes weights 'none'"),
        ({"lr_factor": 0.5}, r"lr_factor 0.5 lies outside the space 'cpu', which does not search"),
        ({"learning_rate": 1e-3}, r"starts.yaml: starting point 'starts.yaml#1': unknown key\(s\) learning_rate"),
    ],
)
def test_a_start_outside_the_space_or_naming_an_unknown_field_is_one_line(values: dict, message: str) -> None:
    entry = StartEntry(label="starts.yaml#1", source="starts.yaml", values=values)
    with pytest.raises(ConfigError, match=message):
        resolve_start_points([entry], load_space("cpu"), {})


def test_builtin_spaces_start_from_the_paper_and_the_hand_pick() -> None:
    from sweeps._start import start_entries

    paper = load_space("paper")
    (table_1,) = resolve_start_points(start_entries(paper.start, paper.source), paper, {})
    assert table_1.params == {"encoder": "efficientnetb1", "weights": "imagenet", "batch_size": 30, "epochs": 20,
                              "lr": 1e-3}  # fmt: skip
    cpu = load_space("cpu")
    points = resolve_start_points(start_entries(cpu.start, cpu.source), cpu, {})
    assert [p.label for p in points] == ["paper-128px", "hand-pick"]
    assert points[1].params == {k: v for k, v in HAND_PICK.items() if k in cpu.params}


def test_starting_points_are_enqueued_once() -> None:
    cpu = load_space("cpu")
    from sweeps._start import start_entries

    points = resolve_start_points(start_entries(cpu.start, cpu.source), cpu, {})
    study = optuna.create_study(direction="maximize")
    assert enqueue_start_points(study, points) == 2
    assert enqueue_start_points(study, points) == 0  # a resumed sweep's new searcher: not twice
    first = study.ask()
    cpu.define_by_run(first)
    assert first.user_attrs[STUDY_START_ATTR] == "paper-128px" and first.params["encoder"] == "efficientnetb0"


@pytest.mark.slow
def test_starting_points_run_first_and_are_marked(tmp_path: Path, local_ray: None) -> None:
    start = tmp_path / "start.yaml"
    start.write_text(yaml.safe_dump([{"label": "known", "lr": 5e-3, "encoder": "resnet18", "epochs": 1}]))
    spec = tiny_sweep_spec(tmp_path, "s", {"fold_seconds": 0.1}, trials=3, concurrency=1, scheduler="none")
    spec.start = [e.to_dict() for e in read_start_file(start)]
    outcome = run_sweep(spec, cv_runner=fake.fake_run_cv)
    assert outcome.finished
    sweep = load_sweep(tmp_path / "out", "s")
    assert len(sweep.trials) == 3  # the starting point counts toward --trials
    first = sweep.trials[0]
    assert first.number == 0 and first.start == "known" and first.params == {"lr": 5e-3, "encoder": "resnet18"}
    assert [t.start for t in sweep.trials[1:]] == [None, None]
    study = optuna.load_study(study_name="s", storage=SweepFolder(sweep.path).optuna_url)
    assert study.trials[0].user_attrs[STUDY_START_ATTR] == "known"
    board = format_leaderboard(sweep)
    assert "start" in board.splitlines()[1] and "known" in board
    from sweeps import Sweep

    assert Sweep.open("s", tmp_path / "out").trials().set_index("number").loc[0, "start"] == "known"


#: The space tests.support.fake_sweep's trials were drawn from (its DISTRIBUTIONS, 4 epochs).
FAKE_SWEEP_SPACE = """\
name: fabricated
params:
  encoder: {type: categorical, choices: [mobilenetv2, mobilenet, resnet18, vgg16]}
  weights: {type: categorical, choices: [imagenet, none]}
  batch_size: {type: categorical, choices: [4, 8]}
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
fixed:
  epochs: 4
"""


def _earlier_sweep(tmp_path: Path) -> tuple[dict, SearchSpace]:
    """A fabricated earlier sweep whose sweep.json records data digest k1 and the space it searched."""
    earlier = make_sweep(tmp_path)
    (tmp_path / "fabricated.yaml").write_text(FAKE_SWEEP_SPACE)
    space = load_space(tmp_path / "fabricated.yaml")
    record = json.loads((earlier / "sweep.json").read_text())
    record.update(data_key="k1", space_definition=space.to_dict())
    (earlier / "sweep.json").write_text(json.dumps(record))
    return record, space


def test_warm_start_on_the_same_data_gives_the_sampler_the_scored_trials(tmp_path: Path) -> None:
    record, space = _earlier_sweep(tmp_path)
    spec = SweepSpec(name="again", data=record["data"], space="fabricated", trials=4, storage=str(tmp_path),
                     overrides=record["overrides"], warm_start="quick1", space_definition=space.to_dict())  # fmt: skip
    trials = prepare_warm_start(spec, space, "k1")
    assert len(trials) == 3 and spec.start == []  # the three complete trials, none re-run
    assert spec.warm_start_mode == "3 scored trials of sweep 'quick1' given to the sampler"
    study = optuna.create_study(direction="maximize")
    assert add_warm_start_trials(study, trials) == 3 and add_warm_start_trials(study, trials) == 0
    assert sorted(t.value for t in study.trials) == sorted(
        t.mean["dice"] for t in load_sweep(tmp_path, "quick1").completed()
    )
    assert warm_start_trials(SweepFolder(tmp_path / "quick1"), space)[0].distributions["lr"].log


def test_warm_start_on_other_data_makes_its_best_trials_starting_points(tmp_path: Path) -> None:
    record, space = _earlier_sweep(tmp_path)
    spec = SweepSpec(name="other", data="/elsewhere", space="fabricated", trials=4, storage=str(tmp_path),
                     overrides=record["overrides"], warm_start="quick1", space_definition=space.to_dict())  # fmt: skip
    assert prepare_warm_start(spec, space, "k2") == []
    best = [t.trial_id for t in load_sweep(tmp_path, "quick1").completed()]
    assert [e["label"] for e in spec.start] == [f"quick1/{t}" for t in best]
    assert spec.warm_start_mode == "sweep 'quick1' it ran on other data: its best 3 trials became starting points"
    # They are checked against the space like any starting point, the sweep's data settings left out.
    points = resolve_start_points([StartEntry.from_dict(e) for e in spec.start], space, spec.cv_overrides())
    assert points[0].params == load_sweep(tmp_path, "quick1").completed()[0].params


@pytest.mark.slow
def test_a_warm_started_sweep_runs_only_its_own_trials_and_its_sampler_holds_the_earlier_ones(
    tmp_path: Path, local_ray: None
) -> None:
    first = tiny_sweep_spec(tmp_path, "a", {"fold_seconds": 0.05}, trials=2, concurrency=1, scheduler="none")
    assert run_sweep(first, cv_runner=fake.fake_run_cv).finished
    (tmp_path / "out" / "b").mkdir()
    (tmp_path / "out" / "b" / "fake.json").write_text(json.dumps({"fold_seconds": 0.05}))
    second = SweepSpec(name="b", data=first.data, space=first.space, storage=first.storage, trials=2,
                       tracker="none", concurrency=1, scheduler="none", warm_start="a")  # fmt: skip
    assert run_sweep(second, cv_runner=fake.fake_run_cv).finished

    earlier, sweep = load_sweep(tmp_path / "out", "a"), load_sweep(tmp_path / "out", "b")
    assert len(sweep.trials) == 2 and all(t.state == "COMPLETE" for t in sweep.trials)  # its own trials only
    study = optuna.load_study(study_name="b", storage=SweepFolder(sweep.path).optuna_url)
    given = [t for t in study.trials if STUDY_WARM_START_ATTR in t.user_attrs]
    assert len(study.trials) == 4 and sorted(t.value for t in given) == sorted(
        t.mean["dice"] for t in earlier.completed()
    )
    scored = [t.params for t in earlier.trials]
    assert all(t.params not in scored for t in sweep.trials)  # no configuration the earlier sweep scored
    assert "2 scored trials of sweep 'a' given to the sampler" in format_leaderboard(sweep)
