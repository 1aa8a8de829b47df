"""The report's CV-to-test gap flag and the sweep's best-so-far curve over wall time."""

from __future__ import annotations

from pathlib import Path

from reports.report import best_so_far, build_report, generalisation_gap_sentence, render_markdown
from sweeps.folder import SweepFolder, append_event, load_sweep, record_test_scores, update_trial_record
from tests.support import TINY_ENCODER
from tests.support.fake_sweep import FakeTrial, make_sweep

PARAMS = {"encoder": TINY_ENCODER, "weights": "none", "batch_size": 4, "lr": 1e-3}


def _set_times(sweep_dir: Path, trial_id: str, started: str, ended: str) -> None:
    update_trial_record(
        SweepFolder(sweep_dir).trial_dir(trial_id), started=f"2025-01-01T{started}", ended=f"2025-01-01T{ended}"
    )


def test_best_so_far_follows_trial_end_times(tmp_path: Path) -> None:
    trials = [
        FakeTrial(PARAMS, [0.5, 0.5]),
        FakeTrial({**PARAMS, "lr": 2e-3}, [0.7, 0.7]),
        FakeTrial({**PARAMS, "lr": 3e-3}, [0.6, 0.6]),  # ends after the better one: no new best
        FakeTrial({**PARAMS, "lr": 4e-3}, [0.9], state="PRUNED"),  # never counts
    ]
    path = make_sweep(tmp_path, "s", trials)
    _set_times(path, "trial_00000", "00:00:00", "00:10:00")
    _set_times(path, "trial_00001", "00:00:00", "00:30:00")
    _set_times(path, "trial_00002", "00:10:00", "00:40:00")
    _set_times(path, "trial_00003", "00:30:00", "00:35:00")
    sweep = load_sweep(tmp_path, "s")

    points = best_so_far(sweep)

    assert [(seconds, round(dice, 4)) for seconds, dice, _ in points] == [(600.0, 0.5), (1800.0, 0.7)]
    text = render_markdown(build_report(sweep))
    section = text.split("## Best so far over wall time")[1].split("## ")[0]
    assert "| 10.0 | 0.5000 |" in section and "| 30.0 | 0.7000 |" in section
    assert "figures/best_so_far.png" in section


def test_best_so_far_leaves_out_the_pause_of_a_stopped_and_resumed_sweep(tmp_path: Path) -> None:
    path = make_sweep(tmp_path, "s", [FakeTrial(PARAMS, [0.5, 0.5]), FakeTrial({**PARAMS, "lr": 2e-3}, [0.7, 0.7])])
    events = {
        "trial_00000": [("attempt", "00:00:00"), ("fold_end", "00:10:00"), ("trial_end", "00:10:00")],
        # Runs beside trial 0, is stopped at 00:20, and goes on when the sweep resumes five hours later.
        "trial_00001": [("attempt", "00:05:00"), ("fold_end", "00:20:00"), ("attempt", "05:00:00"),
                        ("fold_end", "05:20:00"), ("trial_end", "05:20:00")],
    }  # fmt: skip
    for trial_id, lines in events.items():
        for event, time in lines:
            append_event(SweepFolder(path).trial_dir(trial_id), event, time=f"2025-01-01T{time}+00:00")
        _set_times(path, trial_id, lines[0][1] + "+00:00", lines[-1][1] + "+00:00")

    sweep = load_sweep(tmp_path, "s")
    points = best_so_far(sweep)

    # Running time: 00:00-00:20 (both trials) and 05:00-05:20, 40 minutes, not 320.
    assert [(seconds, round(dice, 4)) for seconds, dice, _ in points] == [(600.0, 0.5), (2400.0, 0.7)]
    # The provenance block gives the same running time. The driver's run records had none of it: a
    # driver killed with its machine writes no run (the study's sweep read 115 min against 176).
    assert sweep.spec.runs == [] and sweep.running_seconds() == 2400.0
    md = render_markdown(build_report(sweep))
    assert "; the sweep ran 40.0 min of wall time (its trials' attempts, pauses left out)." in md


def test_gap_larger_than_twice_the_fold_std_is_flagged() -> None:
    assert "FLAG" in generalisation_gap_sentence(0.70, 0.02, 0.60)
    assert "selection overfit" in generalisation_gap_sentence(0.70, 0.02, 0.60)
    assert "FLAG" not in generalisation_gap_sentence(0.70, 0.06, 0.60)
    assert "FLAG" in generalisation_gap_sentence(0.60, 0.02, 0.70)


def test_table2_states_the_winners_gap(tmp_path: Path) -> None:
    path = make_sweep(tmp_path, "s", [FakeTrial(PARAMS, [0.70, 0.72])])
    rows = [{"variant": "plain", "n_images": 120, "dice_mean": 0.55, "dice_std": 0.2, "iou_mean": 0.5,
             "iou_std": 0.2}]  # fmt: skip
    record_test_scores(path, "trial_00000", {"images": "/t", "out": str(tmp_path / "p"), "rows": rows})
    table2 = render_markdown(build_report(load_sweep(tmp_path, "s"))).split("## Table 2")[1].split("## ")[0]
    assert "CV-to-test gap" in table2 and "+0.1600" in table2 and "FLAG" in table2


def test_the_report_calls_the_running_trials_of_a_stopped_sweep_stopped_as_status_does(tmp_path: Path) -> None:
    from sweeps.folder import format_leaderboard

    trials = [FakeTrial(PARAMS, [0.5, 0.5]), FakeTrial({**PARAMS, "lr": 2e-3}, [0.6], state="RUNNING")]
    make_sweep(tmp_path, "s", trials)  # no driver holds the sweep: it was stopped, or its machine was
    sweep = load_sweep(tmp_path, "s")
    assert "STOPPED" in format_leaderboard(sweep)
    md = render_markdown(build_report(sweep))
    assert "| trials | 2 (1 complete, 1 stopped) |" in md and "running" not in md.split("## Winner")[0]
    assert "| #1 (trial_00001) | STOPPED | 1/2 |" in md.split("## Run times and provenance")[1]


def test_the_optimisation_history_draws_a_running_trial_as_not_finished_not_as_completed(tmp_path: Path) -> None:
    from reports._figures import optimisation_history

    trials = [
        FakeTrial(PARAMS, [0.5, 0.5]),
        FakeTrial({**PARAMS, "lr": 2e-3}, [0.4], state="PRUNED"),
        FakeTrial({**PARAMS, "lr": 3e-3}, [0.7], state="RUNNING"),  # one fold of two: a partial mean
    ]
    make_sweep(tmp_path, "s", trials)
    figure = optimisation_history(load_sweep(tmp_path, "s").trials)
    drawn = {trace.name.split(" ")[0]: list(trace.x) for trace in figure.data if trace.mode == "markers"}
    assert drawn == {"completed": [0], "pruned": [1], "not": [2]}
