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


def test_the_budget_waits_for_the_hand_pick_and_scales_by_its_minutes(tmp_path: Path) -> None:
    import json

    study = _run_study()
    sweep = tmp_path / "kvasir-cpu-2"
    trial = sweep / "trials" / "hand"
    trial.mkdir(parents=True)
    (trial / "trial.json").write_text(json.dumps({"start": "hand-pick", "state": "RUNNING"}))
    seconds = study.REFERENCE_HAND_PICK_MINUTES * 60 * 2.5  # a machine 2.5x slower than the reference
    (trial / "events.jsonl").write_text(json.dumps({"event": "epoch", "epochs": 1, "seconds": seconds}) + "\n")
    assert study.machine_scale(sweep) is None  # unknown until the hand pick completes
    (trial / "trial.json").write_text(json.dumps({"start": "hand-pick", "state": "COMPLETE"}))
    assert abs(study.machine_scale(sweep) - 2.5) < 1e-9


def test_a_snapshot_carries_the_records_and_no_weights_to_an_empty_folder(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    study = _run_study()
    monkeypatch.setattr(study, "SNAPSHOT_DIR", tmp_path / "state")
    out = tmp_path / "out"
    trial = out / "sweeps" / "kvasir-cpu-2" / "trials" / "t1"
    for relative, text in {
        "trial.json": "{}",
        "folds/fold_01.json": "{}",
        "models/fold_01/weights.h5": "w",
        "checkpoints/fold_02.npz": "c",
    }.items():
        (trial / relative).parent.mkdir(parents=True, exist_ok=True)
        (trial / relative).write_text(text)
    (out / "data").mkdir()
    (out / "data" / "image.jpg").symlink_to(trial / "trial.json")
    monkeypatch.setattr("sys.argv", ["run_study.py", "--run", "second", "--out", str(tmp_path / "no"), "--snapshot"])
    assert study.main() == 2  # a mistyped --out: one line, nothing written
    assert "holds no study" in capsys.readouterr().err and not (tmp_path / "state").exists()
    monkeypatch.setattr("sys.argv", ["run_study.py", "--run", "second", "--out", str(out), "--snapshot"])
    assert study.main() == 0
    monkeypatch.setattr("sys.argv", ["run_study.py", "--run", "second", "--out", str(out), "--restore"])
    assert study.main() == 2  # nothing is overwritten
    assert "restore into an empty --out" in capsys.readouterr().err
    moved = tmp_path / "moved"
    out.rename(moved)
    assert study.main() == 0
    kept = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert kept == [
        "out.txt",
        "sweeps/kvasir-cpu-2/trials/t1/folds/fold_01.json",
        "sweeps/kvasir-cpu-2/trials/t1/trial.json",
    ]
    # Ray Tune's state names the folder by its path: another --out is refused with the one it needs.
    monkeypatch.setattr("sys.argv", ["run_study.py", "--run", "second", "--out", str(tmp_path / "x"), "--restore"])
    assert study.main() == 2
    assert "restore it there" in capsys.readouterr().err
