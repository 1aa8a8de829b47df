"""The leaderboard of a sweep, as ``segsweep sweep status`` prints it (read from the sweep folder)."""

from __future__ import annotations

import math
from typing import Any

from reports.results import COMPLETE, FAILED, PRUNED, RUNNING, SweepResults, TrialResult

_STATE_ORDER = {COMPLETE: 0, RUNNING: 1, PRUNED: 2, FAILED: 3}


def ranked(trials: list[TrialResult]) -> list[TrialResult]:
    """Complete trials by mean Dice (best first), then running, pruned and failed ones."""

    def key(trial: TrialResult) -> tuple[int, float, int]:
        dice = trial.mean["dice"] if trial.folds else -math.inf
        return (_STATE_ORDER.get(trial.state, 4), -dice if math.isfinite(dice) else math.inf,
                trial.number if trial.number is not None else 1 << 30)

    return sorted(trials, key=key)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _mean_std(trial: TrialResult, metric: str) -> str:
    if not trial.folds:
        return "-"
    return f"{trial.mean[metric]:.4f} ± {trial.std[metric]:.4f}"


def format_leaderboard(sweep: SweepResults) -> str:
    """A text table: rank, trial, parameters, folds done, Dice and IoU mean ± std, state, reason."""
    trials = ranked(sweep.trials)
    param_names: list[str] = []
    for trial in trials:
        for name in trial.params:
            if name not in param_names:
                param_names.append(name)
    header = ["rank", "trial", "id", *param_names, "folds", "Dice", "IoU", "state", "reason"]
    rows = []
    for rank, trial in enumerate(trials, start=1):
        n_folds = trial.n_folds or "?"
        rows.append([
            str(rank) if trial.state == COMPLETE else "-",
            f"#{trial.number}" if trial.number is not None else "-",
            trial.trial_id,
            *[_value(trial.params[name]) if name in trial.params else "-" for name in param_names],
            f"{trial.folds_done}/{n_folds}",
            _mean_std(trial, "dice"),
            _mean_std(trial, "iou"),
            trial.state,
            trial.reason or "",
        ])
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
              for i in range(len(header))]
    lines = []
    counts = {state: sum(t.state == state for t in trials) for state in (COMPLETE, RUNNING, PRUNED, FAILED)}
    total = sweep.spec.get("trials", len(trials))
    lines.append(
        f"sweep {sweep.name}: {len(trials)}/{total} trials proposed; "
        + ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)
        + f"  (space {sweep.spec.get('space')}, data {sweep.spec.get('data')})"
    )
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        lines.append("(no trials yet)")
    lines.append(f"Optuna study {sweep.name!r}: optuna-dashboard {sweep.optuna_storage_url}")
    return "\n".join(lines)
