"""The winner against a starting point on a test set, image by image (``report --test-prediction``).

``segsweep predict MODEL --masks DIR`` writes each image's Dice into its ``metrics.json`` with the
configuration the model was trained with. Given the winner's prediction and a starting point's of
the same test set, the report pairs them by image stem and states the paired mean difference with
the bootstrap interval of the cross-validation evidence (:func:`sweeps.folder.difference_over_images`:
one home for the statistics). Which trial a prediction is of comes from its model's configuration
(its seed aside, which ``retrain --seed`` changes; the sentence then names the seed), never from the
folder's name: a prediction whose configuration is neither the winner's nor a
starting point's, of other images, or unfinished, is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reports.predict import COMPLETE_STATE, read_prediction_record
from segsweep.base.errors import ConfigError, SegsweepError
from sweeps.folder import (
    PairedDifference,
    SweepResults,
    TrialResult,
    difference_over_images,
    rank_trials,
)
from trainer.config import CVConfig

#: The prediction variant compared: the plain one (every prediction with masks has it).
VARIANT = "plain"
_OPTION = "--test-prediction"


@dataclass(frozen=True)
class TestPrediction:
    """One ``predict --masks`` output: its folder, test set, per-image Dice and the trial it is of."""

    folder: Path
    images: str
    masks: str
    dice: dict[str, float]  # image stem -> plain Dice
    trial: TrialResult
    #: The model's training seed where ``retrain --seed`` gave it another than the trial's, else None.
    retrained_seed: int | None = None

    @property
    def test_set(self) -> str:
        """The test set's name: its folder (``medico2020_val`` for ``medico2020_val/images``)."""
        images = Path(self.images)
        return images.parent.name if images.name == "images" and images.parent.name else images.name


@dataclass(frozen=True)
class TestComparison:
    """The winner minus one starting point on one test set (their predictions paired by stem)."""

    test_set: str
    images: str  # the images folder the predictions read
    difference: PairedDifference
    winner_folder: Path
    other_folder: Path
    winner_seed: int | None = None  # set where the model was retrained with another seed than its trial's
    other_seed: int | None = None

    def sentence(self) -> str:
        """``On medico2020_val: +0.070 Dice over your starting point hand-pick, 95 % interval ...``."""
        label = self.difference.other.start or self.difference.other.label
        said = self.difference.versus_starting_point(label, "no image has a finite Dice in both")
        seeds = [f"{who} retrained with seed {seed}" for who, seed in
                 (("the winner", self.winner_seed), (label, self.other_seed)) if seed is not None]  # fmt: skip
        return f"On the test set {self.test_set}, the winner's prediction: {said}" + (
            f" ({'; '.join(seeds)})." if seeds else "."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_set": self.test_set,
            "images": self.images,
            "variant": VARIANT,
            "winner_prediction": str(self.winner_folder),
            "other_prediction": str(self.other_folder),
            "winner_retrained_seed": self.winner_seed,
            "other_retrained_seed": self.other_seed,
            **self.difference.to_dict(),
            "sentence": self.sentence(),  # `sweep status` repeats it from best.json
        }


#: Configuration fields a prediction's model may differ in from its trial: ``retrain --seed`` trains the
#: same configuration from another draw (to measure what a test score owes to it).
_NOT_COMPARED = ("seed",)


def _configuration(values: Any, where: str) -> dict[str, Any]:
    """A configuration in CVConfig's full form, so recorded and defaulted fields compare equal."""
    if not isinstance(values, dict):
        raise ConfigError(f"{_OPTION} {where}: no model configuration recorded; rerun `segsweep predict` with --masks")
    return CVConfig.from_dict(values, source=where).to_dict()


def _compared(config: dict[str, Any]) -> dict[str, Any]:
    """The fields by which a prediction's model is matched to a trial."""
    return {key: value for key, value in config.items() if key not in _NOT_COMPARED}


def _model_configuration(metrics: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The predicting model's configuration: metrics.json's (predictions since segsweep kept it there),
    else the model bundle's at the path metrics.json names."""
    if "config" in metrics:
        return _configuration(metrics["config"], str(folder / "metrics.json"))
    from trainer.bundle import load_bundles

    try:
        bundle = load_bundles(str(metrics.get("model", "")))[0]
    except SegsweepError:
        raise ConfigError(
            f"{_OPTION} {folder}: its metrics.json does not record the model's configuration and the model "
            f"{metrics.get('model')} is not there to read it from; rerun `segsweep predict` (with --masks) into it"
        ) from None
    return _configuration(bundle.config.to_dict(), str(bundle.path))


def read_test_prediction(folder: Path, sweep: SweepResults, candidates: Sequence[TrialResult]) -> TestPrediction:
    """``folder``'s scored prediction, matched by configuration to one of ``candidates`` (winner first)."""
    record = read_prediction_record(folder)
    if record is None:
        raise ConfigError(f"{_OPTION} {folder}: not a segsweep prediction (no readable prediction.json)")
    if record.get("state") != COMPLETE_STATE:
        raise ConfigError(f"{_OPTION} {folder}: the prediction did not finish; rerun its `segsweep predict` command")
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{_OPTION} {folder}: no readable metrics.json, so no per-image scores; predict with --masks"
        ) from None
    if metrics.get("overlap_with_training"):
        n = len(metrics["overlap_with_training"])
        raise ConfigError(f"{_OPTION} {folder}: {n} of its images were the model's training images: not a test set")
    dice = {
        str(row["image"]): float(row["dice"])
        for row in metrics.get("per_image", [])
        if isinstance(row, dict) and "image" in row and row.get("dice") is not None
    }
    if not dice:
        raise ConfigError(f"{_OPTION} {folder}: its metrics.json holds no per-image Dice; predict with --masks")
    config = _model_configuration(metrics, folder)
    configs = {t.trial_id: _configuration(t.config, f"trial {t.trial_id} configuration") for t in candidates}
    matching = [t for t in candidates if _compared(configs[t.trial_id]) == _compared(config)]
    if not matching:
        names = ", ".join(
            f"{t.label} ({'winner' if t is candidates[0] else f'starting point {t.start}'})" for t in candidates
        )
        model = f"{config['arch']}/{config['encoder']}, lr {config['lr']:g}, {config['epochs']} epochs"
        raise ConfigError(
            f"{_OPTION} {folder}: its model's configuration ({model}) is not that of the winner or of a starting "
            f"point of sweep {sweep.name} ({names}); predict with a model retrained from one of them "
            f"(`segsweep retrain {sweep.name} [--trial ID]`)"
        )
    source = metrics.get("source") if isinstance(metrics.get("source"), dict) else {}
    named = [t for t in matching if t.trial_id == (source or {}).get("trial")]
    trial = (named or matching)[0]
    seed = int(config["seed"])
    retrained = seed if seed != configs[trial.trial_id]["seed"] else None
    return TestPrediction(folder, str(metrics.get("images")), str(metrics.get("masks")), dice, trial, retrained)


def test_set_evidence(sweep: SweepResults, winner: TrialResult, folders: Sequence[Path]) -> list[TestComparison]:
    """The winner against each starting point on each test set the given predictions scored."""
    ranked = rank_trials(sweep.trials)
    candidates = [winner, *(t for t in ranked if t.start is not None and t is not winner)]
    predictions = [read_test_prediction(Path(folder), sweep, candidates) for folder in folders]
    by_set: dict[tuple[str, str], list[TestPrediction]] = {}
    for prediction in predictions:
        by_set.setdefault((prediction.images, prediction.masks), []).append(prediction)
    incomplete = [group for group in by_set.values() if not any(p.trial is winner for p in group) or len(group) < 2]
    if len(by_set) > 1 and incomplete:
        sets = "; ".join(f"{images} (masks {masks}): {', '.join(str(p.folder) for p in group)}"
                         for (images, masks), group in by_set.items())  # fmt: skip
        raise ConfigError(
            f"{_OPTION}: the predictions are of {len(by_set)} different test sets ({sets}); each test set needs the "
            "winner's prediction and a starting point's of the same images and masks"
        )
    comparisons = []
    for (images, _masks), group in by_set.items():
        folders_of = ", ".join(str(p.folder) for p in group)
        ours = [p for p in group if p.trial is winner]
        if len(ours) != 1:
            said = "none is" if not ours else f"{len(ours)} are"
            raise ConfigError(
                f"{_OPTION}: of the predictions of {images} ({folders_of}), {said} of the winner {winner.label}; "
                "pass one prediction of the winner and one of each starting point per test set"
            )
        others = [p for p in group if p.trial is not winner]
        if not others or len({p.trial.trial_id for p in others}) != len(others):
            raise ConfigError(
                f"{_OPTION}: the predictions of {images} ({folders_of}) need exactly one of each starting point "
                "besides the winner's"
            )
        mine = ours[0]
        for other in sorted(others, key=lambda p: ranked.index(p.trial)):
            if set(other.dice) != set(mine.dice):
                differ = sorted(set(other.dice) ^ set(mine.dice))
                raise ConfigError(
                    f"{_OPTION}: {mine.folder} and {other.folder} scored different images of {images} "
                    f"({len(differ)} differ, e.g. {', '.join(differ[:3])}); predict both on the same images"
                )
            differences = [mine.dice[stem] - other.dice[stem] for stem in sorted(mine.dice)]
            role = f"starting point {other.trial.start}"
            comparisons.append(
                TestComparison(
                    mine.test_set,
                    images,
                    difference_over_images(differences, other.trial, role),
                    mine.folder,
                    other.folder,
                    mine.retrained_seed,
                    other.retrained_seed,
                )
            )
    return comparisons


__all__ = ["TestComparison", "TestPrediction", "read_test_prediction", "test_set_evidence"]
