"""Paired pruning (sweeps._paired): a trial stops once the incumbent beats it on the same images."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from sweeps import spec as sweep_spec
from sweeps._paired import PairedScheduler, paired_prune_reason
from sweeps._trainable import pruned_reason
from sweeps.folder import format_leaderboard, load_sweep, read_events, read_trial_record
from sweeps.runner import make_scheduler, run_sweep
from tests.support import fake_cv as fake
from tests.support.fake_sweep import FakeTrial, make_sweep
from tests.support.ray import tiny_sweep_spec
from tests.support.synth import make_dataset

N_PER_FOLD = 20
BASE = [0.5 + 0.3 * math.sin(i) for i in range(2 * N_PER_FOLD)]


def _trial(lr: float, shifts: list[float], *, folds: int = 2, state: str = "COMPLETE") -> FakeTrial:
    """A trial whose image i scores BASE[i] + shifts[i] on the folds it finished."""
    images = [BASE[i] + shifts[i] for i in range(len(BASE))]
    per_fold = [images[f * N_PER_FOLD : (f + 1) * N_PER_FOLD] for f in range(folds)]
    params = {"encoder": "resnet18", "weights": "none", "batch_size": 8, "lr": lr}
    return FakeTrial(params, [sum(d) / len(d) for d in per_fold], image_dice=per_fold, state=state)


def _decide(sweep_dir: Path, trial_id: str, folds_done: int = 1, n_folds: int = 2) -> str:
    scheduler = PairedScheduler(sweep_dir)
    return str(
        scheduler.on_trial_result(
            None, SimpleNamespace(trial_id=trial_id), {"folds_done": folds_done, "n_folds": n_folds, "dice": 0.5}
        )
    )


def _alternating(above: float, below: float) -> list[float]:
    return [above if i % 2 == 0 else -below for i in range(len(BASE))]


def test_a_trial_worse_on_the_same_images_is_pruned_with_its_paired_figures(tmp_path: Path) -> None:
    # Fold 1 of the challenger: 0.05 under the incumbent on most images, above it on a few.
    shifts = [-0.08 if i % 4 else 0.04 for i in range(len(BASE))]
    sweep_dir = make_sweep(tmp_path, "s", [_trial(1e-3, [0.0] * 40), _trial(2e-3, shifts, folds=1, state="RUNNING")])
    assert _decide(sweep_dir, "trial_00001") == TrialScheduler.STOP
    record = read_trial_record(sweep_dir / "trials" / "trial_00001")
    assert record.pruned_by is not None
    assert record.pruned_by.startswith(
        "worse than the incumbent #0 (trial_00000) on the same 20 images after 1 of 2 folds: Dice -0.050, 95 % interval"
    )
    # The driver (callbacks) and the trial's trackers (the trainable) give this reason for PRUNED.
    assert pruned_reason({"folds_done": 1, "n_folds": 2, "dice": 0.4}, record) == record.pruned_by


def test_a_tie_with_the_incumbent_runs_on(tmp_path: Path) -> None:
    # Lower mean (-0.005) but as often above as below: the paired interval spans 0.
    sweep_dir = make_sweep(
        tmp_path, "s", [_trial(1e-3, [0.0] * 40), _trial(2e-3, _alternating(0.05, 0.06), folds=1, state="RUNNING")]
    )
    assert _decide(sweep_dir, "trial_00001") == TrialScheduler.CONTINUE
    assert read_trial_record(sweep_dir / "trials" / "trial_00001").pruned_by is None


def test_a_better_trial_and_a_trial_without_an_incumbent_run_on(tmp_path: Path) -> None:
    better = make_sweep(tmp_path, "a", [_trial(1e-3, [0.0] * 40), _trial(2e-3, [0.05] * 40, folds=1, state="RUNNING")])
    assert _decide(better, "trial_00001") == TrialScheduler.CONTINUE
    # The only other trial is itself unfinished: nothing to pair with yet.
    alone = make_sweep(
        tmp_path,
        "b",
        [_trial(1e-3, [0.0] * 40, folds=1, state="RUNNING"), _trial(2e-3, [-0.3] * 40, folds=1, state="RUNNING")],
    )
    assert _decide(alone, "trial_00001") == TrialScheduler.CONTINUE


def test_the_last_fold_is_never_pruned_and_a_handful_of_images_is_no_evidence(tmp_path: Path) -> None:
    sweep_dir = make_sweep(tmp_path, "s", [_trial(1e-3, [0.0] * 40), _trial(2e-3, [-0.3] * 40)])
    assert _decide(sweep_dir, "trial_00001", folds_done=2) == TrialScheduler.CONTINUE
    sweep = load_sweep(tmp_path, "s")
    incumbent, challenger = sweep.trials
    challenger.folds[0].val_stems = challenger.folds[0].val_stems[:5]  # 5 paired images
    challenger.folds[0].val_dice = challenger.folds[0].val_dice[:5]
    challenger.folds[0].val_iou = challenger.folds[0].val_iou[:5]
    challenger.folds = challenger.folds[:1]
    assert paired_prune_reason(challenger, incumbent) is None


def test_paired_is_the_default_and_asha_stays_selectable(tmp_path: Path) -> None:
    assert sweep_spec.SweepSpec.__dataclass_fields__["scheduler"].default == "paired"
    assert type(make_scheduler("paired", 3, tmp_path)).__name__ == "PairedScheduler"
    assert type(make_scheduler("asha", 3, tmp_path)).__name__ == "AsyncHyperBandScheduler"
    assert type(make_scheduler("paired", 1, tmp_path)).__name__ == "FIFOScheduler"


@pytest.mark.slow
def test_a_real_sweep_prunes_on_paired_evidence_and_every_record_gives_one_reason(
    tmp_path: Path, local_ray: None
) -> None:
    # The stand-in CV scores a higher learning rate better, image by image (tests.support.fake_cv):
    # the starting point (lr 1e-2) completes first and every later proposal is worse on its images.
    spec = tiny_sweep_spec(tmp_path, "p", {"fold_seconds": 0.1}, trials=3, concurrency=1, seed=1)
    spec = dataclasses.replace(
        spec,
        data=str(make_dataset(tmp_path / "data36", 36)),
        start=[{"label": "best-lr", "source": "test", "values": {"lr": 1e-2, "encoder": "resnet18"}}],
    )
    assert spec.scheduler == "paired"
    outcome = run_sweep(spec, cv_runner=fake.fake_run_cv)

    assert outcome.finished
    sweep = load_sweep(tmp_path / "out", "p")
    first, *others = sweep.trials
    assert first.start == "best-lr" and first.state == "COMPLETE" and first.folds_done == 3
    assert others and all(t.state == "PRUNED" and t.folds_done == 1 for t in others), format_leaderboard(sweep)
    for trial in others:
        record = read_trial_record(trial.path)
        assert trial.reason == record.pruned_by
        assert (trial.reason or "").startswith(f"worse than the incumbent {first.label} on the same 12 images")
        ends = [e for e in read_events(trial.path) if e["event"] == "trial_end"]
        assert ends and ends[-1]["reason"] == trial.reason


def test_a_sweep_folder_it_cannot_read_lets_the_trial_run_on_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shifts = [-0.08 if i % 4 else 0.04 for i in range(len(BASE))]
    sweep_dir = make_sweep(tmp_path, "s", [_trial(1e-3, [0.0] * 40), _trial(2e-3, shifts, folds=1, state="RUNNING")])

    def unreadable(*args: object) -> None:
        raise OSError("Stale file handle")  # a network file system's hiccup, say

    monkeypatch.setattr("sweeps._paired.load_sweep", unreadable)
    assert _decide(sweep_dir, "trial_00001") == TrialScheduler.CONTINUE
    said = capsys.readouterr().out
    assert said.startswith("[segsweep] paired pruning: cannot compare trial trial_00001 after fold 1 (")
    assert said.rstrip().endswith("it runs on")
