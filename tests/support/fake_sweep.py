"""Fabricate sweep folders through the sweep-folder API (``sweeps.folder``), with a real Optuna study.

The reports tests build on these instead of running a sweep: each trial gets trial.json,
folds/fold_NN.json and cv.json as the trainer writes them, and the study ``optuna.db`` holds the same
trials (same parameters, states and values) under the sweep's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna

from segsweep.base.files import write_json_atomic
from sweeps.folder import STUDY_TRIAL_ID_ATTR, SweepFolder, update_trial_record, write_spec_record
from tests.support import TINY_ENCODER
from tests.support.fake_cv import fake_image_scores
from trainer.config import CVConfig
from trainer.results import CV_FILE, CVResult, EpochRecord, FoldResult, fold_path

#: The parameters a quick space proposes, as Optuna distributions (and the tests' tiny encoder).
DISTRIBUTIONS: dict[str, optuna.distributions.BaseDistribution] = {
    "encoder": optuna.distributions.CategoricalDistribution(["mobilenetv2", "mobilenet", "resnet18", TINY_ENCODER]),
    "weights": optuna.distributions.CategoricalDistribution(["imagenet", "none"]),
    "batch_size": optuna.distributions.CategoricalDistribution([4, 8]),
    "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
}

#: A recorded space (``make_sweep(space=...)``) over the fake trials' parameters and epochs 4 to 8, like ``cpu``.
SPACE_WITH_EPOCHS: dict[str, Any] = {
    "name": "tiny",
    "description": "the fake trials' parameters and epochs",
    "params": {
        "encoder": {"type": "categorical", "choices": ["resnet18", "mobilenetv2"]},
        "weights": {"type": "categorical", "choices": ["imagenet", "none"]},
        "batch_size": {"type": "categorical", "choices": [4, 8]},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "epochs": {"type": "int", "low": 4, "high": 8, "step": 2},
    },
    "fixed": {"image_size": 64, "folds": 2},
}


_OPTUNA_STATES = {
    "COMPLETE": optuna.trial.TrialState.COMPLETE,
    "PRUNED": optuna.trial.TrialState.PRUNED,
    "FAILED": optuna.trial.TrialState.FAIL,
    "RUNNING": optuna.trial.TrialState.RUNNING,
}


@dataclass
class FakeTrial:
    """One trial to fabricate: its parameters, state and the Dice of each fold it finished."""

    params: dict[str, Any]
    dice: list[float]
    state: str = "COMPLETE"
    n_folds: int = 2
    reason: str | None = None
    epochs: int = 4
    lr_drops: list[list[int]] = field(default_factory=list)  # per fold
    #: The starting point's label (trial.json's ``start``), for a trial that ran one.
    start: str | None = None
    #: Each fold's per-image Dice (IoU 0.1 below), in place of scores spread around the fold's Dice.
    image_dice: list[list[float]] | None = None
    #: False for a trial recorded before folds kept per-image scores.
    image_scores: bool = True
    #: Each fold's validation IoU per epoch (``epochs`` of them), in place of a curve rising to the end.
    val_iou: list[list[float]] | None = None


def default_trials() -> list[FakeTrial]:
    """Five trials: three complete (pretrained and not, two encoders), one pruned, one failed."""
    return [
        FakeTrial({"encoder": "mobilenetv2", "weights": "imagenet", "batch_size": 8, "lr": 1e-3},
                  [0.62, 0.66], lr_drops=[[2], [2, 3]]),
        FakeTrial({"encoder": "mobilenetv2", "weights": "none", "batch_size": 4, "lr": 3e-3}, [0.50, 0.58]),
        FakeTrial({"encoder": "resnet18", "weights": "imagenet", "batch_size": 8, "lr": 2e-4}, [0.60, 0.61],
                  lr_drops=[[3], []]),
        FakeTrial({"encoder": "mobilenet", "weights": "none", "batch_size": 4, "lr": 5e-3}, [0.30],
                  state="PRUNED", reason="stopped by ASHA after fold 1"),
        FakeTrial({"encoder": "resnet18", "weights": "none", "batch_size": 8, "lr": 8e-3}, [],
                  state="FAILED", reason="NaN loss in fold 1, epoch 2"),
    ]  # fmt: skip


def _fold(
    number: int,
    dice: float,
    epochs: int,
    drops: list[int],
    stems: list[str],
    image_dice: list[float] | None,
    val_iou: list[float] | None = None,
) -> FoldResult:
    lr = 1e-3
    history = []
    for epoch in range(1, epochs + 1):
        history.append(
            EpochRecord(
                epoch,
                loss=1.0 - 0.1 * epoch,
                val_loss=1.05 - 0.09 * epoch,
                val_iou=val_iou[epoch - 1] if val_iou else dice * (0.6 + 0.1 * epoch) / (0.6 + 0.1 * epochs) - 0.1,
                lr=lr,
            )
        )
        if epoch in drops:
            lr /= 10
    return FoldResult(
        fold=number,
        n_train=len(stems) // 2,
        n_val=len(stems) // 2,
        dice=dice,
        iou=dice - 0.1,
        epochs_run=epochs,
        lr_drops=drops,
        history=history,
        seconds=1.5,
        val_stems=stems,
        val_dice=image_dice if image_dice is not None else fake_image_scores(dice, len(stems)),
        val_iou=[d - 0.1 for d in image_dice] if image_dice is not None else fake_image_scores(dice - 0.1, len(stems)),
    )


def make_sweep(
    storage: Path,
    name: str = "quick1",
    trials: list[FakeTrial] | None = None,
    *,
    data: Path | str = "/data/kvasir-seg",
    image_size: int = 64,
    limit: int | None = 12,
    with_study: bool = True,
    space: dict[str, Any] | None = None,
) -> Path:
    """Write STORAGE/NAME as a sweep would and return its folder; ``space`` (a space in the YAML format)
    is recorded as its ``space_definition``."""
    trials = default_trials() if trials is None else trials
    folder = SweepFolder.at(storage, name)
    path = folder.path
    path.mkdir(parents=True)
    spec = {
        "name": name, "data": str(data), "space": "quick", "trials": len(trials), "seed": 0,
        "overrides": {"limit": limit, "image_size": image_size, "folds": 2, "epochs": None},
        **({"space_definition": space} if space is not None else {}),
    }  # fmt: skip
    write_spec_record(folder, spec)
    study = None
    if with_study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=name, storage=folder.optuna_url, direction="maximize")
    for number, trial in enumerate(trials):
        trial_id = f"trial_{number:05d}"
        config = CVConfig(
            encoder=trial.params["encoder"], weights=trial.params["weights"],
            batch_size=trial.params["batch_size"], lr=trial.params["lr"], epochs=trial.epochs,
            folds=trial.n_folds, image_size=image_size, limit=limit,
        ).to_dict()  # fmt: skip
        trial_dir = folder.trial_dir(trial_id)
        per_fold = len(trial.image_dice[0]) if trial.image_dice else 6
        folds = [
            _fold(i + 1, d, trial.epochs, trial.lr_drops[i] if i < len(trial.lr_drops) else [],
                  [f"case{j:03d}" for j in range(i * per_fold, (i + 1) * per_fold)],
                  trial.image_dice[i] if trial.image_dice else None, trial.val_iou[i] if trial.val_iou else None)
            for i, d in enumerate(trial.dice)
        ]  # fmt: skip
        if not trial.image_scores:  # as folds were written before per-image scores were kept
            folds = [replace(f, val_stems=[], val_dice=[], val_iou=[]) for f in folds]
        for fold in folds:
            write_json_atomic(fold_path(trial_dir, fold.fold), fold.to_dict())
        cv = CVResult(
            config=config,
            data={"root": str(data), "n_images": limit},
            n_folds=trial.n_folds,
            folds=folds,
            seconds=3.0,
            complete=len(folds) == trial.n_folds,
        )
        write_json_atomic(trial_dir / CV_FILE, cv.to_dict())
        update_trial_record(
            trial_dir, trial_id=trial_id, number=number, params=trial.params, state=trial.state,
            reason=trial.reason, config=config, n_folds=trial.n_folds, folds_done=len(folds),
            mean_dice=cv.mean["dice"] if folds else None,
            started="2025-01-01T00:00:00", ended="2025-01-01T00:01:00", start=trial.start,
        )  # fmt: skip
        if study is not None:
            state = _OPTUNA_STATES[trial.state]
            value = cv.mean["dice"] if trial.state in ("COMPLETE", "PRUNED") and folds else None
            frozen = optuna.trial.create_trial(
                state=state,
                value=value if state == optuna.trial.TrialState.COMPLETE else None,
                params=trial.params,
                distributions=DISTRIBUTIONS,
                intermediate_values={f.fold: f.dice for f in folds},
                user_attrs={STUDY_TRIAL_ID_ATTR: trial_id},
            )
            study.add_trial(frozen)
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
