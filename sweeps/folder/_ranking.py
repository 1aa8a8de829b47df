"""The one ranking of a sweep's trials, and the leaderboard table that status, report and API share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sweeps.folder._objective import OBJECTIVE
from sweeps.folder._schema import may_win
from sweeps.folder._sweep_results import COMPLETE, FAILED, PRUNED, RUNNING, SweepResults, TrialResult

RANKING_RULE = (
    "Ranked (1, 2, ...): trials that completed all their folds, by mean cross-validation Dice; the best "
    "is the winner. Unranked (-): running, then pruned, then failed trials, each by the mean Dice of the "
    "folds they finished (a mean over some folds is not comparable with a mean over all)."
)
_UNRANKED_ORDER = {RUNNING: 0, PRUNED: 1, FAILED: 2}
#: How status, the report and the API show a trial its records keep RUNNING once no driver runs the
#: sweep (``sweep stop``, a budget, Ctrl-C, a driver that died): it is not training, and `sweep resume`
#: continues it. The records stay RUNNING, which is what a resume and the study need.
STOPPED = "STOPPED"


def shown_states(sweep: SweepResults) -> dict[str, str]:
    """Each trial's state as the views show it (trial id -> COMPLETE, PRUNED, FAILED, RUNNING or STOPPED)."""
    from sweeps.folder._control import driver_running
    from sweeps.folder._layout import SweepFolder

    if any(t.state == RUNNING for t in sweep.trials) and not driver_running(SweepFolder(sweep.path)):
        return {t.trial_id: STOPPED if t.state == RUNNING else t.state for t in sweep.trials}
    return {t.trial_id: t.state for t in sweep.trials}


def is_eligible(trial: TrialResult) -> bool:
    """Whether a trial may win (:func:`~sweeps.folder.may_win` on its fold files)."""
    return may_win(trial.state, trial.all_folds_done, trial.mean[OBJECTIVE.metric])


def rank_trials(trials: Sequence[TrialResult]) -> list[TrialResult]:
    """Every trial in leaderboard order (see :data:`RANKING_RULE`)."""

    def key(trial: TrialResult) -> tuple[int, int, float, int, str]:
        value = trial.mean[OBJECTIVE.metric] if trial.folds else math.nan
        group = 0 if is_eligible(trial) else 1
        order = 0 if group == 0 else _UNRANKED_ORDER.get(trial.state, len(_UNRANKED_ORDER))
        return (
            group,
            order,
            OBJECTIVE.rank_key(value),
            trial.number if trial.number is not None else 1 << 30,
            trial.trial_id,
        )

    return sorted(trials, key=key)


def format_value(value: Any) -> str:
    """A parameter value in a table cell: floats in 3 significant digits."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def format_mean_std(mean: float, std: float, n: int) -> str:
    """``mean ± std`` of ``n`` values (folds, images): the one formatter of a mean and its spread.

    One value has no spread: ``0.6400 ± –``, never ``± 0.0000``, which reads as a spread measured to
    be nil; no value (NaN mean) is ``n/a``.
    """
    if n < 1 or math.isnan(mean):
        return "n/a"
    return f"{mean:.4f} ± –" if n == 1 else f"{mean:.4f} ± {std:.4f}"


def mean_std(trial: TrialResult, metric: str) -> str:
    """``mean ± std`` over the trial's finished folds ("" before its first fold)."""
    if not trial.folds or math.isnan(trial.mean[metric]):
        return ""
    return format_mean_std(trial.mean[metric], trial.std[metric], trial.folds_done)


def leaderboard_table(sweep: SweepResults) -> tuple[list[str], list[list[str]], list[str]]:
    """Columns, rows (every trial, ranked) and notes of the leaderboard.

    Parameter cells show the values each trial trained with; a value the sweep's options replaced
    (``--epochs 1`` over a proposed 2) carries a ``*`` and a note names the proposal.
    """
    trials = rank_trials(sweep.trials)
    param_names: list[str] = []
    for trial in trials:
        param_names += [p for p in trial.params if p not in param_names]
    starts = any(t.start for t in trials)
    states = shown_states(sweep)
    rows: list[list[str]] = []
    overridden: dict[str, set[str]] = {}
    rank = 0
    for trial in trials:
        ran_with, replaced = trial.ran_with, trial.overridden
        for name, (proposed, _ran) in replaced.items():
            overridden.setdefault(name, set()).add(format_value(proposed))
        eligible = is_eligible(trial)
        rank += eligible
        rows.append([
            str(rank) if eligible else "-",
            trial.label,
            *([trial.start or ""] if starts else []),
            *[format_value(ran_with[p]) + ("*" if p in replaced else "") if p in ran_with else "" for p in param_names],
            f"{trial.folds_done}/{trial.n_folds or '?'}",
            mean_std(trial, "dice"),
            mean_std(trial, "iou"),
            states[trial.trial_id],
            trial.reason or "",  # last: a sentence, the widest cell
        ])  # fmt: skip
    columns = ["rank", "trial", *(["start"] if starts else []), *param_names, "folds", "Dice", "IoU", "state", "reason"]
    notes = [RANKING_RULE]
    if starts:
        notes.append(
            "start: a starting point (--start, the space's start: or a --warm-start), run before the sampler's "
            "proposals and counted in --trials."
        )
    if sweep.spec.warm_start_mode:
        notes.append(f"Warm start from {sweep.spec.warm_start}: {sweep.spec.warm_start_mode}.")
    if overridden:
        notes.append(
            "* the value the trial trained with, set by the sweep's options over the search space's proposal ("
            + "; ".join(f"{name}: proposed {', '.join(sorted(v))}" for name, v in sorted(overridden.items()))
            + ")."
        )
    return columns, rows, notes


def format_text_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, two spaces apart."""
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def format_leaderboard(sweep: SweepResults) -> str:
    """``segsweep sweep status``: a summary line, the leaderboard, its notes, the winner's paired evidence, the
    ranges the winner sat at the edge of (sweeps.folder._edges) and the study's address."""
    states = list(shown_states(sweep).values())
    counts = {state: states.count(state) for state in (COMPLETE, RUNNING, STOPPED, PRUNED, FAILED)}
    total = sweep.spec.trials if sweep.spec.trials is not None else len(sweep.trials)
    lines = [
        f"sweep {sweep.name}: {len(sweep.trials)}/{total} trials proposed; "
        + ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)
        + f"  (space {sweep.spec.space}, data {sweep.spec.data})"
    ]
    columns, rows, notes = leaderboard_table(sweep)
    lines.append(format_text_table(columns, rows))
    if not rows:
        lines.append("(no trials yet)")
    lines += notes
    # Imported here: the evidence and edges modules build on this module's ranking.
    from sweeps.folder._edges import WIDENED_SPACE_FILE, space_edges
    from sweeps.folder._evidence import reported_test_sets, winner_evidence

    evidence = winner_evidence(sweep)
    if evidence is not None:
        lines += evidence.lines() + reported_test_sets(sweep, evidence.winner)
    edges = space_edges(sweep)
    if edges is not None:  # status writes nothing: the command names the file `segsweep report` writes
        lines += edges.lines(sweep.folder.report_dir / WIDENED_SPACE_FILE, written=False)
    lines.append(f"Optuna study {sweep.name!r}: optuna-dashboard {sweep.optuna_storage_url}")
    return "\n".join(lines)
