"""The winner's paired evidence (sweeps.folder._evidence): against the starting points and the runner-up,
image by image over the out-of-fold images, with a seeded bootstrap interval; shown by ``sweep status``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sweeps.cli import main
from sweeps.folder import BOOTSTRAP_SEED, format_leaderboard, load_sweep, paired_bootstrap, winner_evidence
from tests.support.fake_sweep import FakeTrial, make_sweep

#: Two folds of 20 images: the starting point's per-image Dice, spread like real images.
N_PER_FOLD = 20
BASE = [0.5 + 0.3 * math.sin(i) for i in range(2 * N_PER_FOLD)]


def _trial(lr: float, shifts: list[float], *, start: str | None = None, folds: int = 2, **kw: object) -> FakeTrial:
    """A trial whose image i scores BASE[i] + shifts[i]; fold Dice is the mean of its images, as trainer writes."""
    images = [BASE[i] + shifts[i] for i in range(len(BASE))]
    per_fold = [images[f * N_PER_FOLD : (f + 1) * N_PER_FOLD] for f in range(folds)]
    params = {"encoder": "resnet18", "weights": "imagenet", "batch_size": 8, "lr": lr}
    return FakeTrial(
        params,
        [sum(d) / len(d) for d in per_fold],
        image_dice=per_fold,
        start=start,
        **kw,  # type: ignore[arg-type]
    )


def _alternating(above: float, below: float) -> list[float]:
    return [above if i % 2 == 0 else -below for i in range(len(BASE))]


def test_a_clear_win_over_the_starting_point_has_an_interval_above_zero(tmp_path: Path) -> None:
    make_sweep(tmp_path, "s", [_trial(1e-3, [0.0] * 40, start="hand-pick"), _trial(2e-3, _alternating(0.06, -0.04))])
    evidence = winner_evidence(load_sweep(tmp_path, "s"))
    assert evidence is not None and evidence.winner.trial_id == "trial_00001"
    [start] = evidence.differences  # the runner-up is the starting point: compared once
    assert start.role == "starting point hand-pick (runner-up)"
    assert start.n_pairs == 40 and start.mean == pytest.approx(0.05) and start.low > 0 and start.verdict == "beat"
    assert evidence.headline == (
        f"Winner trial #1 (trial_00001): +0.050 Dice over your starting point hand-pick, 95 % interval "
        f"{start.low:+.3f} to {start.high:+.3f}, 40 paired images."
    )
    assert evidence.tied == []


def test_a_tie_is_reported_as_a_tie(tmp_path: Path) -> None:
    # The winner's mean is higher (+0.005), but image by image it is as often worse as better.
    make_sweep(tmp_path, "s", [_trial(1e-3, [0.0] * 40, start="hand-pick"), _trial(2e-3, _alternating(0.06, 0.05))])
    evidence = winner_evidence(load_sweep(tmp_path, "s"))
    assert evidence is not None and evidence.winner.trial_id == "trial_00001"
    [start] = evidence.differences
    assert start.low < 0 < start.high and start.verdict == "tie"
    assert evidence.headline is not None
    assert evidence.headline.startswith(
        "Winner trial #1 (trial_00001): tied with your starting point hand-pick: +0.005"
    )
    assert [t.trial_id for t in evidence.tied] == ["trial_00000"]


def test_a_loss_to_a_starting_point_the_scheduler_stopped(tmp_path: Path) -> None:
    # The starting point was pruned after fold 1, where it beat the winner on every image.
    make_sweep(
        tmp_path,
        "s",
        [_trial(1e-3, [0.1] * 40, start="hand-pick", folds=1, state="PRUNED"), _trial(2e-3, [0.0] * 40)],
    )
    sweep = load_sweep(tmp_path, "s")
    evidence = winner_evidence(sweep)
    assert evidence is not None and evidence.winner.trial_id == "trial_00001"
    [start] = evidence.differences
    assert start.n_pairs == N_PER_FOLD and start.high < 0 and start.verdict == "did not beat"
    assert evidence.headline is not None
    assert evidence.headline.startswith(
        "Winner trial #1 (trial_00001): did not beat your starting point hand-pick: -0.100"
    )
    assert "pruned after 1 fold(s)" in format_leaderboard(sweep)


def test_a_winner_that_is_a_starting_point_says_so(tmp_path: Path) -> None:
    make_sweep(tmp_path, "s", [_trial(1e-3, [0.0] * 40, start="hand-pick"), _trial(2e-3, [-0.05] * 40)])
    evidence = winner_evidence(load_sweep(tmp_path, "s"))
    assert evidence is not None
    assert evidence.headline == (
        "Winner trial #0 (trial_00000) is your starting point hand-pick: no other trial reached a higher mean CV Dice."
    )
    assert [d.role for d in evidence.differences] == ["runner-up"]


def test_without_starting_points_no_headline_but_the_runner_up_and_ties(tmp_path: Path) -> None:
    make_sweep(
        tmp_path,
        "s",
        [_trial(1e-3, [0.0] * 40), _trial(2e-3, _alternating(0.06, 0.05)), _trial(3e-3, [-0.1] * 40)],
    )
    evidence = winner_evidence(load_sweep(tmp_path, "s"))
    assert evidence is not None and evidence.headline is None
    assert [(d.role, d.other.trial_id, d.verdict) for d in evidence.differences] == [
        ("runner-up", "trial_00000", "tie"),
        ("trial", "trial_00002", "beat"),
    ]
    assert [t.trial_id for t in evidence.tied] == ["trial_00000"]


def test_old_trials_without_per_image_scores_say_why_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_sweep(
        tmp_path,
        "s",
        [
            _trial(1e-3, [0.0] * 40, start="hand-pick", image_scores=False),
            _trial(2e-3, [0.05] * 40, image_scores=False),
        ],
    )
    evidence = winner_evidence(load_sweep(tmp_path, "s"))
    assert evidence is not None and evidence.headline is None and evidence.differences == []
    [note] = evidence.notes
    assert note.startswith("No paired evidence: the winner's folds record no per-image scores")
    assert main(["sweep", "status", "s", "--storage", str(tmp_path)]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if "paired" in line.lower()] == [note]


def test_a_starting_point_without_per_image_scores_is_named_not_compared(tmp_path: Path) -> None:
    make_sweep(
        tmp_path, "s", [_trial(1e-3, [0.0] * 40, start="hand-pick", image_scores=False), _trial(2e-3, [0.05] * 40)]
    )
    evidence = winner_evidence(load_sweep(tmp_path, "s"))
    assert evidence is not None
    assert evidence.headline == (
        "Winner trial #1 (trial_00001): not compared with your starting point hand-pick: no image scored by both "
        "in the same fold: no finished fold yet, or folds written before per-image scores were kept."
    )
    assert evidence.differences[0].verdict is None and "#0 (trial_00000)" in evidence.notes[0]


def test_no_winner_yet_no_evidence(tmp_path: Path) -> None:
    make_sweep(tmp_path, "s", [_trial(1e-3, [0.0] * 40, folds=1, state="RUNNING")])
    assert winner_evidence(load_sweep(tmp_path, "s")) is None


def test_the_bootstrap_is_seeded_same_numbers_twice(tmp_path: Path) -> None:
    differences = np.random.default_rng(1).normal(0.01, 0.05, size=880)
    first, second = paired_bootstrap(differences), paired_bootstrap(differences.copy())
    assert first == second and first[1] < first[0] < first[2]
    make_sweep(tmp_path, "s", [_trial(1e-3, [0.0] * 40, start="hand-pick"), _trial(2e-3, _alternating(0.06, 0.05))])
    a, b = winner_evidence(load_sweep(tmp_path, "s")), winner_evidence(load_sweep(tmp_path, "s"))
    assert a is not None and b is not None and a.to_dict() == b.to_dict()
    assert str(BOOTSTRAP_SEED) in a.to_dict()["method"]


def test_status_shows_the_headline_comparisons_and_ties(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_sweep(tmp_path, "s", [_trial(1e-3, [0.0] * 40, start="hand-pick"), _trial(2e-3, _alternating(0.06, 0.05))])
    assert main(["sweep", "status", "s", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Winner trial #1 (trial_00001): tied with your starting point hand-pick: +0.005 Dice, 95 % interval" in out
    assert "winner - starting point hand-pick (runner-up) #0 (trial_00000): +0.005 Dice" in out
    assert "Statistically tied with the winner (interval contains 0): #0 (trial_00000)." in out
