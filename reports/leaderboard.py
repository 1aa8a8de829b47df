"""Choosing the winner of a sweep, and the comparisons a report shows beside it."""

from __future__ import annotations

from dataclasses import dataclass

from segsweep.base.errors import SegsweepError
from sweeps.folder import SweepFolder, SweepResults, TrialResult
from trainer.config import loads_encoder_weights

WINNER_RULE = (
    "The winner is the trial with the best mean cross-validation Dice among the trials that completed "
    "all their folds (pruned, failed and running trials are not eligible: a mean over some folds is "
    "not comparable with a mean over all): the first of the leaderboard's ranking."
)


@dataclass(frozen=True)
class WinnerChoice:
    """The winner, the runner-up if any, and the gap between them in the winner's fold std."""

    winner: TrialResult
    runner_up: TrialResult | None
    eligible: int

    @property
    def gap(self) -> float | None:
        """Winner's minus runner-up's mean Dice (None without a runner-up)."""
        if self.runner_up is None:
            return None
        return self.winner.mean["dice"] - self.runner_up.mean["dice"]

    @property
    def gap_in_std(self) -> float | None:
        """The gap in units of the winner's fold standard deviation of Dice (None if undefined)."""
        gap, std = self.gap, self.winner.std["dice"]
        if gap is None or not std > 0:
            return None
        return gap / std

    def gap_sentence(self) -> str:
        if self.runner_up is None:
            return "There is no runner-up: only one trial completed all its folds."
        gap = self.gap
        assert gap is not None
        text = (
            f"The runner-up, trial {self.runner_up.label}, has mean Dice {self.runner_up.mean['dice']:.4f}, "
            f"{gap:.4f} below the winner"
        )
        if self.gap_in_std is None:
            return text + " (the winner's fold standard deviation is 0, so the gap has no unit)."
        closeness = (
            "within one fold standard deviation: the two are not clearly separated"
            if self.gap_in_std < 1
            else "more than one fold standard deviation"
        )
        return (
            text
            + f": {self.gap_in_std:.2f} times the winner's fold std "
            + f"({self.winner.std['dice']:.4f}), {closeness}."
        )


def pick_winner(sweep: SweepResults) -> WinnerChoice:
    """Apply :data:`WINNER_RULE`, or say why no trial can win."""
    eligible = sweep.completed()
    if not eligible:
        states: dict[str, int] = {}
        for trial in sweep.trials:
            states[trial.state] = states.get(trial.state, 0) + 1
        found = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "no trials"
        raise SegsweepError(
            f"sweep {sweep.name!r} ({sweep.path}) has no trial that completed all its folds ({found}); "
            f"there is no winner to report yet: let `segsweep sweep run` finish a trial, or "
            f"`segsweep sweep resume {SweepFolder(sweep.path).cli_args}` an interrupted sweep"
        )
    return WinnerChoice(eligible[0], eligible[1] if len(eligible) > 1 else None, len(eligible))


def is_pretrained(trial: TrialResult) -> bool:
    """Whether the trial's encoder started from weights, by the rule training applied to the value."""
    return loads_encoder_weights(trial.config.get("weights", trial.params.get("weights", "imagenet")))


def encoder_of(trial: TrialResult) -> str:
    return str(trial.config.get("encoder", trial.params.get("encoder", "?")))


@dataclass(frozen=True)
class PretrainingComparison:
    best_pretrained: TrialResult | None
    best_untrained: TrialResult | None
    #: encoder -> (best pretrained, best untrained), for encoders that completed both.
    per_encoder: dict[str, tuple[TrialResult, TrialResult]]


def compare_pretraining(sweep: SweepResults) -> PretrainingComparison:
    """Best pretrained and best untrained trial overall and per encoder (eligible trials only)."""
    eligible = sweep.completed()  # best first, so the first seen is the best
    best: dict[tuple[str, bool], TrialResult] = {}
    for trial in eligible:
        best.setdefault((encoder_of(trial), is_pretrained(trial)), trial)
    pretrained = next((t for t in eligible if is_pretrained(t)), None)
    untrained = next((t for t in eligible if not is_pretrained(t)), None)
    encoders = sorted({e for e, _ in best})
    per_encoder = {e: (best[(e, True)], best[(e, False)]) for e in encoders if (e, True) in best and (e, False) in best}
    return PretrainingComparison(pretrained, untrained, per_encoder)


__all__ = [
    "WINNER_RULE",
    "PretrainingComparison",
    "WinnerChoice",
    "compare_pretraining",
    "pick_winner",
]
