"""Say when the space is too small (sweeps.folder._edges): a winner at the edge of a numeric range with the
evidence that the optimum lies beyond, the widened range, and the ``--warm-start`` command; in ``sweep status``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from reports.report import build_report, write_report
from search_spaces import SearchSpace
from sweeps._start import prepare_warm_start, resolve_start_points, start_entries, sweep_start_points
from sweeps.cli import build_parser, spec_from_args
from sweeps.folder import SweepResults, format_leaderboard, load_sweep, space_edges
from tests.support.fake_sweep import SPACE_WITH_EPOCHS, FakeTrial, make_sweep

# The sweeps search SPACE_WITH_EPOCHS: epochs 4 to 8 in steps of 2, lr 1e-4 to 1e-2 on a log scale.
RISING = [0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.58, 0.60]  # best at the last epoch
PLATEAU = [0.30, 0.45, 0.55, 0.60, 0.59, 0.60, 0.58, 0.59]  # best at epoch 4 of 8


def _trial(dice: float, lr: float = 1e-3, epochs: int = 6, val_iou: list[float] | None = None, **kw: Any) -> FakeTrial:
    params = {"encoder": "resnet18", "weights": "none", "batch_size": 8, "lr": lr, "epochs": epochs}
    curves = [val_iou, val_iou] if val_iou is not None else None
    return FakeTrial(params, [dice, dice], epochs=epochs, val_iou=curves, **kw)


def _sweep(tmp_path: Path, trials: list[FakeTrial]) -> SweepResults:
    make_sweep(tmp_path, "s", trials, space=SPACE_WITH_EPOCHS, with_study=False)
    return load_sweep(tmp_path, "s")


def test_epochs_at_the_upper_bound_still_improving_is_flagged_with_the_command(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, [_trial(0.70, epochs=8, val_iou=RISING), _trial(0.60), _trial(0.55, lr=5e-3)])
    edges = space_edges(sweep)
    assert edges is not None
    [flag] = edges.flags
    assert (flag.param, flag.side, flag.value) == ("epochs", "upper", 8)
    assert "still rising at the end in 2 of 2 folds" in flag.evidence
    assert flag.widened == {"type": "int", "low": 4, "high": 16, "step": 2}  # the upper bound doubled
    assert edges.widened_space is not None
    widened = SearchSpace.from_dict(edges.widened_space)  # a space segsweep reads
    assert widened.params["epochs"].high == 16
    assert widened.params["lr"] == SearchSpace.from_dict(SPACE_WITH_EPOCHS).params["lr"]
    # The winner at the widened most epochs is a starting point of the widened space, valid in it.
    longer = {"encoder": "resnet18", "weights": "none", "batch_size": 8, "lr": 1e-3, "epochs": 16}
    assert edges.longer_winner == {"label": "s/trial_00000-16-epochs", **longer}
    [point] = resolve_start_points(start_entries(widened.start, "widened"), widened, {})
    assert (point.label, point.params) == ("s/trial_00000-16-epochs", longer)
    status = format_leaderboard(sweep)
    file = tmp_path / "s" / "report" / "widened-space.yaml"
    command = (
        f"segsweep sweep run --warm-start s --storage {tmp_path} --space {file} --data /data/kvasir-seg "
        "--name s-wide --trials 3 --limit 12 --image-size 64 --folds 2"
    )
    assert command in status
    assert "epochs: {type: int, low: 4, high: 16, step: 2}" in status
    # What a warm start from another space does, said where the command is.
    assert (
        "its best 3 trials run again first as starting points, then the widened space's `start:` entries, among"
        in status
    )
    assert "the winner at 16 epochs (s/trial_00000-16-epochs)" in status


@pytest.mark.parametrize(
    ("curve", "drops"),
    [
        pytest.param(PLATEAU, [], id="plateaued"),
        # Rising again only after the plateau rule cut the rate at the end of epoch 5: the schedule, not more epochs.
        pytest.param([0.30, 0.45, 0.55, 0.60, 0.59, 0.62, 0.63, 0.64], [5], id="rising-after-a-cut"),
    ],
)
def test_epochs_at_the_upper_bound_without_improvement_is_not_flagged(
    tmp_path: Path, curve: list[float], drops: list[int]
) -> None:
    winner = _trial(0.70, epochs=8, val_iou=curve, lr_drops=[drops, drops])
    sweep = _sweep(tmp_path, [winner, _trial(0.60), _trial(0.55, lr=5e-3)])
    assert space_edges(sweep) is None
    assert "Space too small?" not in format_leaderboard(sweep)


def test_lr_at_a_bound_with_the_best_trials_crowding_is_flagged(tmp_path: Path) -> None:
    trials = [_trial(0.70, lr=1.1e-4), _trial(0.69, lr=1.5e-4), _trial(0.68, lr=2.5e-4), _trial(0.50, lr=3e-3)]
    edges = space_edges(_sweep(tmp_path, trials))
    assert edges is not None
    [flag] = edges.flags
    assert (flag.param, flag.side) == ("lr", "lower")
    assert "the best 3 trials all lie in the lowest quarter of it (lr 0.00011, 0.00015, 0.00025)" in flag.evidence
    # Moved down by the range's log-width (a factor of 100): the new range spans twice the old on its log scale.
    assert flag.widened == {"type": "float", "low": 1e-6, "high": 1e-2, "log": True}
    assert "lr 0.00011 is at the lower bound of the space's range 0.0001 to 0.01 (log scale)" in flag.sentence()


def test_lr_at_a_bound_without_the_crowd_is_not_flagged(tmp_path: Path) -> None:
    # The winner sits at the bound, but the third best is mid-range: no sign the optimum lies below.
    trials = [_trial(0.70, lr=1.1e-4), _trial(0.69, lr=1.5e-4), _trial(0.68, lr=1e-3)]
    assert space_edges(_sweep(tmp_path, trials)) is None


def test_a_winner_in_the_middle_flags_nothing(tmp_path: Path) -> None:
    trials = [_trial(0.70, lr=1e-3, epochs=6), _trial(0.65, lr=1.2e-3), _trial(0.60, lr=8e-4)]
    sweep = _sweep(tmp_path, trials)
    assert space_edges(sweep) is None
    assert "Space too small?" not in format_leaderboard(sweep)


def test_an_overridden_parameter_is_not_judged(tmp_path: Path) -> None:
    # `--epochs 8` over the space: its trials never ran the space's epochs, whatever their histories say.
    sweep = _sweep(tmp_path, [_trial(0.7, epochs=8, val_iou=RISING), _trial(0.6)])
    sweep.spec.specification["overrides"] = {**sweep.spec.overrides, "epochs": 8}
    assert space_edges(sweep) is None


def test_a_sweep_without_a_recorded_space_flags_nothing(tmp_path: Path) -> None:
    # Judged against the space the sweep ran, never a built-in or file as it reads now.
    make_sweep(tmp_path, "s", [_trial(0.7, epochs=8, val_iou=RISING), _trial(0.6)], with_study=False)
    assert space_edges(load_sweep(tmp_path, "s")) is None


def test_linear_and_stepped_ranges_widen_by_their_width_and_stay_valid(tmp_path: Path) -> None:
    # lr_factor 0.1 to 0.5 (linear): its lower bound less the width would be negative, so it is halved;
    # batch_size 4 to 16 in steps of 4: the upper bound moves out by the width, on the same grid.
    space = {
        "name": "linear",
        "params": {
            "batch_size": {"type": "int", "low": 4, "high": 16, "step": 4},
            "lr_factor": {"type": "float", "low": 0.1, "high": 0.5},
        },
        "fixed": {"image_size": 64, "folds": 2},
    }
    trials = [
        FakeTrial({"encoder": "resnet18", "weights": "none", "batch_size": 16, "lr": 1e-3, "lr_factor": f}, [d, d])
        for f, d in [(0.1, 0.7), (0.12, 0.69), (0.15, 0.68), (0.4, 0.5)]
    ]
    make_sweep(tmp_path, "s", trials, space=space, with_study=False)
    edges = space_edges(load_sweep(tmp_path, "s"))
    assert edges is not None and edges.widened_space is not None
    assert {f.param: (f.side, f.widened) for f in edges.flags} == {
        "batch_size": ("upper", {"type": "int", "low": 4, "high": 28, "step": 4}),
        "lr_factor": ("lower", {"type": "float", "low": 0.05, "high": 0.5}),
    }
    assert edges.longer_winner is None  # epochs not searched: no longer-trained winner to start from
    SearchSpace.from_dict(edges.widened_space)


def test_the_printed_command_runs_the_warm_start_the_hint_describes(tmp_path: Path) -> None:
    # The report's command, parsed by `sweep run`, in the space the report wrote: another space than the
    # earlier sweep's, so its best trials become starting points, then the winner at the widened epochs.
    sweep = _sweep(tmp_path, [_trial(0.70, epochs=8, val_iou=RISING), _trial(0.60)])
    record = json.loads((sweep.path / "sweep.json").read_text())
    (sweep.path / "sweep.json").write_text(json.dumps({**record, "data_key": "k1"}))
    report = build_report(load_sweep(tmp_path, "s"))
    write_report(report, sweep.folder.report_dir, ["json"])
    argv = shlex.split(report.best["space_edges"]["command"])
    assert argv[:3] == ["segsweep", "sweep", "run"]
    spec = spec_from_args(build_parser().parse_args(argv[1:]))
    space = spec.load_space()
    assert space.params["epochs"].high == 16
    spec.space_definition = space.to_dict()  # as sweep run records it
    assert prepare_warm_start(spec, space, "k1") == []  # nothing handed to the sampler ...
    assert spec.warm_start_mode == "sweep 's' it searched another space: its best 2 trials became starting points"
    labels = [point.label for point in sweep_start_points(spec, space)]
    assert labels == ["s/trial_00000", "s/trial_00001", "s/trial_00000-16-epochs"]  # ... as the hint says
