"""studies/kvasir-cpu/run_study.py: the parts that need no training (its steps' outputs are the study)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

STUDY = Path(__file__).resolve().parents[1] / "studies" / "kvasir-cpu" / "run_study.py"


def _run_study() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_study", STUDY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_step_runs_in_one_process_at_a_time(tmp_path: Path) -> None:
    study = _run_study()
    first = study._step_lock(tmp_path / "retrain-default.lock")
    assert first is not None
    assert study._step_lock(tmp_path / "retrain-default.lock") is None  # a second run of the script
    assert study._step_lock(tmp_path / "retrain-handpicked.lock") is not None  # other steps go on
    first.close()
    again = study._step_lock(tmp_path / "retrain-default.lock")
    assert again is not None
    again.close()


def test_outputs_inside_the_repository_are_refused(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    study = _run_study()
    monkeypatch.setattr("sys.argv", ["run_study.py", "--out", str(STUDY.parents[2] / "runs" / "study")])
    assert study.main() == 2
    assert "is inside the repository" in capsys.readouterr().err


def test_the_second_run_counts_every_epoch_and_what_the_running_folds_still_need(tmp_path: Path) -> None:
    import json

    study = _run_study()
    sweep = tmp_path / "kvasir-cpu-2"

    def events(trial: str, lines: list[dict[str, object]]) -> None:
        (sweep / "trials" / trial).mkdir(parents=True)
        (sweep / "trials" / trial / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))

    epoch = {"event": "epoch", "epochs": 4}
    events("done", [{"event": "fold_start"}, {**epoch, "seconds": 60}, {**epoch, "seconds": 60},
                    {"event": "fold_end"}, {"event": "trial_end"}])  # fmt: skip
    events("running", [{"event": "fold_start"}, {**epoch, "seconds": 30}])
    spent, coming = study.trial_minutes(sweep)
    assert (spent, coming) == (2.5, 1.5)  # 150 s trained; 3 epochs of 30 s left in the running fold
    # Stopped at its budget: done once no trial runs (a parked one waits for the resume that never comes).
    (sweep / "trials" / "running" / "trial.json").write_text(json.dumps({"state": "RUNNING"}))
    (tmp_path / "kvasir-cpu-2.budget.json").write_text(json.dumps({"stopped": "2026-12-02T01:00:00"}))
    assert not study._sweep_done_or_spent(sweep)
    (sweep / "trials" / "running" / "trial.json").write_text(json.dumps({"state": "RUNNING", "parked": True}))
    assert study._sweep_done_or_spent(sweep)
