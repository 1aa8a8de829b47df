"""The sweep folder read back: one ranking everywhere, the values trials ran with, damaged records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.folder import SweepFolder, format_leaderboard, load_sweep, rank_trials
from tests.support import TINY_ENCODER
from tests.support.fake_sweep import FakeTrial, default_trials, make_sweep


def _order_in(text: str, trial_ids: list[str]) -> list[str]:
    """The trial ids as they appear, top to bottom, in a rendered leaderboard."""
    positions = {tid: text.index(f"({tid})") for tid in trial_ids}
    return sorted(trial_ids, key=positions.__getitem__)


def test_status_report_and_api_list_trials_in_one_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    running = FakeTrial({"encoder": "resnet18", "weights": "none", "batch_size": 4, "lr": 1e-3}, [0.9],
                        state="RUNNING")  # fmt: skip
    make_sweep(tmp_path, "s", [*default_trials(), running], data=tmp_path / "data")
    ids = [t.trial_id for t in rank_trials(load_sweep(tmp_path, "s").trials)]
    # complete by Dice (0.64, 0.605, 0.54), then running, pruned, failed
    assert ids == ["trial_00000", "trial_00002", "trial_00001", "trial_00005", "trial_00003", "trial_00004"]

    assert main(["sweep", "status", "s", "--storage", str(tmp_path)]) == 0
    status = capsys.readouterr().out
    assert _order_in(status, ids) == ids
    assert main(["report", "s", "--storage", str(tmp_path), "--format", "md"]) == 0
    capsys.readouterr()
    report = (tmp_path / "s" / "report" / "report.md").read_text()
    board = report[report.index("## Leaderboard") :]
    board = board[: board.index("\n## ", 5)]
    assert _order_in(board, ids) == ids
    rows = [line for line in board.splitlines() if line.startswith("|") and "(trial_0000" in line]
    ranks = [row.split("|")[1].strip() for row in rows]
    assert ranks == ["1", "2", "3", "-", "-", "-"]


def test_leaderboard_and_winner_show_the_values_trials_ran_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Optuna proposed epochs 2; the sweep ran with --epochs 1 (the fake's configuration epochs).
    trial = FakeTrial({"encoder": TINY_ENCODER, "weights": "none", "batch_size": 4, "lr": 1e-3, "epochs": 2},
                      [0.6, 0.7], epochs=1)  # fmt: skip
    make_sweep(tmp_path, "s", [trial], data=tmp_path / "data", with_study=False)
    assert main(["sweep", "status", "s", "--storage", str(tmp_path)]) == 0
    status = capsys.readouterr().out
    row = next(line for line in status.splitlines() if "(trial_00000)" in line)
    assert " 1* " in row and " 2 " not in row
    assert "epochs: proposed 2" in status
    assert main(["report", "s", "--storage", str(tmp_path), "--format", "md,json"]) == 0
    report = (tmp_path / "s" / "report" / "report.md").read_text()
    assert re.search(r"Winner: trial #0 \(trial_00000\), .*epochs=1 .*epochs proposed 2", report)
    assert json.loads((tmp_path / "s" / "report" / "best.json").read_text())["config"]["epochs"] == 1


def test_damaged_trial_json_is_rebuilt_from_the_other_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_sweep(tmp_path, "s", data=tmp_path / "data")
    record = SweepFolder.at(tmp_path, "s").trial_dir("trial_00000") / "trial.json"
    before = format_leaderboard(load_sweep(tmp_path, "s"))
    damaged = record.read_bytes()[:40]
    record.write_bytes(damaged)  # cut short, as a full disk leaves it

    assert main(["sweep", "status", "s", "--storage", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert f"warning: {record} is damaged" in captured.err and "Traceback" not in captured.err
    # Number and parameters from the study, configuration and folds from cv.json and the fold files.
    assert captured.out.rstrip("\n") == before
    assert main(["report", "s", "--storage", str(tmp_path), "--format", "json"]) == 0
    assert json.loads((tmp_path / "s" / "report" / "best.json").read_text())["trial_id"] == "trial_00000"
    assert record.read_bytes() == damaged  # reading repairs nothing on disk and loses nothing
    assert (record.parent / "trial.json.damaged").read_bytes() == damaged


def test_damaged_fold_file_is_read_from_cv_json_by_status_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_sweep(tmp_path, "s", data=tmp_path / "data")
    fold = SweepFolder.at(tmp_path, "s").trial_dir("trial_00000") / "folds" / "fold_02.json"
    fold.write_text(fold.read_text()[:25])
    assert main(["sweep", "status", "s", "--storage", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if "(trial_00000)" in line)
    assert row.split()[0] == "1" and "2/2" in row and "COMPLETE" in row
    assert "fold(s) 2 read from cv.json" in captured.err
    assert main(["report", "s", "--storage", str(tmp_path), "--format", "json"]) == 0
    best = json.loads((tmp_path / "s" / "report" / "best.json").read_text())
    assert best["trial_id"] == "trial_00000" and len(best["cv"]["folds"]) == 2


@pytest.mark.parametrize("verb", [["sweep", "status"], ["report"], ["sweep", "resume"]])
def test_damaged_sweep_json_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: list[str]
) -> None:
    make_sweep(tmp_path, "s", data=tmp_path / "data")
    spec = SweepFolder.at(tmp_path, "s").spec_file
    damaged = spec.read_bytes()[:30]
    spec.write_bytes(damaged)
    assert main([*verb, "s", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{spec} is damaged" in err and "restore it from a backup" in err
    assert spec.read_bytes() == damaged


def test_one_objective_steers_the_study_the_scheduler_the_ranking_and_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from reports import report
    from search_spaces import load_space
    from sweeps import _callbacks, _optuna, _start, _trainable, runner
    from sweeps.folder import OBJECTIVE, Objective, _progress, _ranking

    consumers = (_optuna, runner, _ranking, _progress, _trainable, _callbacks, _start, report)
    assert all(module.OBJECTIVE is OBJECTIVE for module in consumers)  # one object, no copy of its values
    assert (OBJECTIVE.metric, OBJECTIVE.direction, OBJECTIVE.display_name) == ("dice", "max", "mean CV Dice")

    # A stand-in objective with the other direction: the study, ASHA, the leaderboard and the report follow.
    lower = Objective(metric="dice", direction="min", display_name="mean CV Dice, lower is better")
    for module in consumers:
        monkeypatch.setattr(module, "OBJECTIVE", lower)
    (tmp_path / "study").mkdir()
    searcher = _optuna.make_searcher(tmp_path / "study", "s", load_space("quick").define_by_run, 4, 1, 0)
    study = optuna.load_study(study_name="s", storage=SweepFolder(tmp_path / "study").optuna_url)
    assert searcher._mode == "min" and study.direction == optuna.study.StudyDirection.MINIMIZE
    scheduler = runner.make_scheduler("asha", 3, tmp_path / "study")
    assert (scheduler._metric, scheduler._mode) == ("dice", "min")

    make_sweep(tmp_path, "s", default_trials(), data=tmp_path / "data")
    sweep = load_sweep(tmp_path, "s")
    ids = [t.trial_id for t in rank_trials(sweep.trials)]
    # complete by Dice, lowest first now (0.54, 0.605, 0.64), then pruned, failed
    assert ids[:3] == ["trial_00001", "trial_00002", "trial_00000"]
    assert report.best_so_far(sweep)[0][1] == min(t.mean["dice"] for t in sweep.completed())
