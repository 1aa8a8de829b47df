"""The winner with its evidence: paired, per-image comparisons with the starting points and the runner-up.

Every trial of a sweep validates each image in the same fold (same seed, same folds), so the winner
and another trial can be compared image by image on their out-of-fold Dice
(:func:`~sweeps.folder.pair_image_scores`). The paired mean difference gets a 95 % percentile
bootstrap interval over images, drawn from a fixed seed so a rerun of ``status`` or ``report``
prints the same numbers. ``sweep status`` and the report both read this module; it holds no
ranking of its own (the winner and runner-up are the first two of :func:`rank_trials`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeps.folder._ranking import is_eligible, rank_trials
from sweeps.folder._records import read_json_record
from sweeps.folder._sweep_results import SweepResults, TrialResult, pair_image_scores

BOOTSTRAP_RESAMPLES = 10_000
#: Fixed so the same sweep folder always gives the same intervals.
BOOTSTRAP_SEED = 20
CONFIDENCE = 0.95
#: Resamples drawn at a time: 10,000 x 880 indices at once would take 70 MB.
_CHUNK = 1_000
#: Trials beyond the starting points and the runner-up checked for a tie with the winner: each
#: comparison costs a bootstrap, and ``sweep status`` must stay quick on a sweep of hundreds.
TIE_CHECK_TOP = 10

BEAT, TIE, WORSE = "beat", "tie", "did not beat"
_UNPAIRED = (
    "no image scored by both in the same fold: no finished fold yet, or folds written before per-image scores were kept"
)


@dataclass(frozen=True)
class PairedDifference:
    """The winner minus one other trial, in out-of-fold Dice over the images both validated in one fold."""

    other: TrialResult
    role: str  # "starting point <label>", "runner-up" or "trial"
    n_pairs: int
    mean: float  # NaN without pairs
    low: float
    high: float

    @property
    def verdict(self) -> str | None:
        """BEAT (interval above 0), WORSE (below 0), TIE (contains 0); None without paired images."""
        if self.n_pairs == 0:
            return None
        if self.low > 0:
            return BEAT
        if self.high < 0:
            return WORSE
        return TIE

    def interval(self) -> str:
        """``95 % interval +0.012 to +0.050, 880 paired images``."""
        return f"{100 * CONFIDENCE:.0f} % interval {self.low:+.3f} to {self.high:+.3f}, {self.n_pairs} paired images"

    def figures(self) -> str:
        """``+0.031 Dice, 95 % interval +0.012 to +0.050, 880 paired images``."""
        return f"{self.mean:+.3f} Dice, {self.interval()}"

    def versus_starting_point(self, label: str, unpaired: str) -> str:
        """The verdict as a clause: ``+0.031 Dice over your starting point hand-pick, 95 % interval ...``,
        ``tied with ...``, ``did not beat ...``, or ``not compared with ...: {unpaired}``."""
        if self.verdict == BEAT:
            return f"{self.mean:+.3f} Dice over your starting point {label}, {self.interval()}"
        if self.verdict == TIE:
            return f"tied with your starting point {label}: {self.figures()}"
        if self.verdict == WORSE:
            return f"did not beat your starting point {label}: {self.figures()}"
        return f"not compared with your starting point {label}: {unpaired}"

    def to_dict(self) -> dict[str, Any]:
        finite = self.n_pairs > 0
        return {
            "trial_id": self.other.trial_id,
            "number": self.other.number,
            "start": self.other.start,
            "role": self.role,
            "state": self.other.state,
            "n_pairs": self.n_pairs,
            "mean_difference": self.mean if finite else None,
            "low": self.low if finite else None,
            "high": self.high if finite else None,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class WinnerEvidence:
    """The winner, its paired differences, the headline and the notes that say what is missing."""

    winner: TrialResult
    differences: list[PairedDifference]
    headline: str | None
    notes: list[str]

    @property
    def tied(self) -> list[TrialResult]:
        """The compared trials statistically tied with the winner (their interval contains 0)."""
        return [d.other for d in self.differences if d.verdict == TIE]

    def lines(self) -> list[str]:
        """The evidence as text lines, for ``sweep status`` and the report."""
        lines = [self.headline] if self.headline else []
        for d in self.differences:
            if d.n_pairs:
                # A starting point that did not finish its folds is compared on the folds it did.
                partial = (
                    "" if is_eligible(d.other) else f", {d.other.state.lower()} after {d.other.folds_done} fold(s)"
                )
                lines.append(f"winner - {d.role} {d.other.label}: {d.figures()} ({d.verdict}{partial})")
        lines += self.notes
        tied = self.tied_sentence()
        return [*lines, tied] if tied else lines

    def tied_sentence(self) -> str | None:
        """``Statistically tied with the winner ...: #3 (...)``; None when nothing was paired."""
        if not any(d.n_pairs for d in self.differences):
            return None
        tied = ", ".join(t.label for t in self.tied) or "none"
        return f"Statistically tied with the winner (interval contains 0): {tied}."

    def to_dict(self) -> dict[str, Any]:
        return {
            "winner": self.winner.trial_id,
            "method": (
                f"paired mean difference of out-of-fold Dice (winner minus other) over the images both validated "
                f"in the same fold; {100 * CONFIDENCE:.0f} % percentile bootstrap over images, "
                f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}"
            ),
            "headline": self.headline,
            "comparisons": [d.to_dict() for d in self.differences],
            "tied_with_winner": [t.trial_id for t in self.tied],
            "notes": self.notes,
        }


def report_test_sets(sweep: SweepResults, winner: TrialResult) -> tuple[list[dict[str, Any]], str | None]:
    """The test-set comparisons of the report in the sweep's report folder (best.json's
    ``evidence.test_sets``) while their winner is still the sweep's, and a line saying why there are
    none when there is a report's comparison to say it of (an earlier winner's, or a damaged file).

    They are the report's own (``report --test-prediction`` pairs the predictions; this module cannot,
    as reports build on it).
    """
    path = sweep.folder.report_best_file
    try:
        record = read_json_record(path)
    except (OSError, ValueError):
        return [], f"Cannot read {path}: rerun `segsweep report {sweep.folder.cli_args}` to write it again."
    evidence = record.get("evidence") if isinstance(record, dict) else None
    tests = evidence.get("test_sets") if isinstance(evidence, dict) else None
    if not isinstance(evidence, dict) or not isinstance(tests, list) or not tests:
        return [], None
    if evidence.get("winner") != winner.trial_id:
        return [], (
            f"The test-set comparison in {path} is of trial {evidence.get('winner')}, no longer the winner: "
            f"predict the test set with the retrained {winner.label} and rerun `segsweep report "
            f"{sweep.folder.cli_args} --test-prediction ...`."
        )
    return [t for t in tests if isinstance(t, dict)], None


def reported_test_sets(sweep: SweepResults, winner: TrialResult) -> list[str]:
    """``report_test_sets`` as ``sweep status`` says it: each comparison's sentence, or why there is none."""
    tests, problem = report_test_sets(sweep, winner)
    path = sweep.folder.report_best_file
    return [problem] if problem else [f"{t['sentence']} (from {path})" for t in tests if t.get("sentence")]


def paired_bootstrap(differences: np.ndarray) -> tuple[float, float, float]:
    """Mean of ``differences`` and its percentile bootstrap interval (seeded: the same input, the same numbers)."""
    n = len(differences)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = np.empty(BOOTSTRAP_RESAMPLES)
    for start in range(0, BOOTSTRAP_RESAMPLES, _CHUNK):
        size = min(_CHUNK, BOOTSTRAP_RESAMPLES - start)
        means[start : start + size] = differences[rng.integers(0, n, size=(size, n))].mean(axis=1)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(differences.mean()), float(low), float(high)


def paired_difference(winner: TrialResult, other: TrialResult, role: str) -> PairedDifference:
    """The winner minus ``other`` on the images both scored in the same fold (finite scores only)."""
    pairs = pair_image_scores(winner, other)
    return difference_over_images([mine.dice - theirs.dice for mine, theirs in pairs.values()], other, role)


def difference_over_images(differences: Sequence[float], other: TrialResult, role: str) -> PairedDifference:
    """The paired mean and bootstrap interval of per-image Dice ``differences`` (winner minus ``other``;
    NaNs dropped): the cross-validation's out-of-fold images or a test set's (reports.test_evidence)."""
    diffs = np.asarray(differences, dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs):
        return PairedDifference(other, role, 0, math.nan, math.nan, math.nan)
    mean, low, high = paired_bootstrap(diffs)
    return PairedDifference(other, role, len(diffs), mean, low, high)


def _headline(winner: TrialResult, best_start: PairedDifference | None) -> str | None:
    """One sentence: did the sweep beat its best starting point (the first in the ranking)?"""
    if winner.start is not None:
        return (
            f"Winner trial {winner.label} is your starting point {winner.start}: no other trial reached a higher "
            "mean CV Dice."
        )
    if best_start is None:
        return None  # no starting points: nothing to say about them
    said = best_start.versus_starting_point(str(best_start.other.start), _UNPAIRED)
    return f"Winner trial {winner.label}: {said}."


def winner_evidence(sweep: SweepResults) -> WinnerEvidence | None:
    """The winner's paired evidence, or None while no trial may win."""
    ranked = rank_trials(sweep.trials)
    eligible = [t for t in ranked if is_eligible(t)]
    if not eligible:
        return None
    winner = eligible[0]
    notes: list[str] = []
    if not winner.image_scores():
        notes.append(
            "No paired evidence: the winner's folds record no per-image scores (folds written before segsweep "
            "kept them), so its trials compare by fold means only."
        )
        return WinnerEvidence(winner, [], None, notes)
    # Starting points in ranking order, so the first is the best starting point the headline names.
    starts = [t for t in ranked if t.start is not None and t is not winner]
    runner_up = eligible[1] if len(eligible) > 1 else None
    compared: list[tuple[TrialResult, str]] = [
        (t, f"starting point {t.start}" + (" (runner-up)" if t is runner_up else "")) for t in starts
    ]
    if runner_up is not None and runner_up.start is None:
        compared.append((runner_up, "runner-up"))
    seen = {t.trial_id for t, _ in compared}
    compared += [(t, "trial") for t in eligible[2 : 2 + TIE_CHECK_TOP] if t.trial_id not in seen]
    differences = [paired_difference(winner, t, role) for t, role in compared]
    unpaired = [d.other.label for d in differences if d.n_pairs == 0]
    if unpaired:
        notes.append(f"Not compared image by image ({_UNPAIRED}): {', '.join(unpaired)}.")
    if len(eligible) > 2 + TIE_CHECK_TOP:
        notes.append(
            f"Ties checked against the starting points, the runner-up and the next {TIE_CHECK_TOP} ranked trials."
        )
    best_start = next((d for d in differences if d.other.start is not None), None)
    return WinnerEvidence(winner, differences, _headline(winner, best_start), notes)


__all__ = [
    "BEAT",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "TIE",
    "WORSE",
    "PairedDifference",
    "WinnerEvidence",
    "difference_over_images",
    "paired_bootstrap",
    "paired_difference",
    "winner_evidence",
]
