"""The second run's numbers: trials, best so far over trial-minutes, the paired verdicts, pruning checks.

    .venv/bin/python studies/kvasir-cpu/second.py --out OUT   # results/second.{json,md}, best_so_far_2.png

Reads the sweep folder through segsweep's own API (sweeps.folder) and what `predict` wrote, so it can
run at any time while the study runs: what is not there yet is said to be pending. Trial-minutes are
the seconds of every epoch the trials' events record (validation and batch-norm re-estimation
included), the measure the study's budget counts (run_study.trial_minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_study import (
    BUDGET_TRIAL_MINUTES,
    REFERENCE_HAND_PICK_MINUTES,
    RETRAIN_SEED2,
    SEED2_SUFFIX,
    SWEEP2,
    machine_scale,
)

from reports.heldout import test_set_evidence
from segsweep.base.errors import SegsweepError
from sweeps.folder import (
    PairedDifference,
    load_sweep,
    pair_image_scores,
    paired_difference,
    read_events,
)
from sweeps.folder._sweep_results import TrialResult

HERE = Path(__file__).resolve().parent
#: The first sweep, recorded (RESULTS.md section 2): best so far over its running minutes. Its trials'
#: epoch times were not kept, so its trial-minute axis is running minutes x 850 / 449 (its totals).
FIRST_SWEEP_BEST = [(82.5, 0.6376, "#1"), (438.7, 0.6516, "#7")]
FIRST_SWEEP_SCALE = 850 / 449
HAND_PICK, PAPER = "hand-pick", "paper-128px"


def _time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def epoch_log(trial: TrialResult) -> list[tuple[float, float]]:
    """(wall time, seconds) of every epoch the trial trained."""
    assert trial.path is not None
    return [
        (_time(e["time"]), float(e.get("seconds") or 0.0)) for e in read_events(trial.path) if e["event"] == "epoch"
    ]


def _fold1_end(trial: TrialResult) -> float:
    assert trial.path is not None
    ends = [_time(e["time"]) for e in read_events(trial.path) if e["event"] == "fold_end" and e.get("fold") == 1]
    return min(ends) if ends else math.inf


def _as_dict(d: PairedDifference) -> dict[str, Any]:
    return {"n": d.n_pairs, "mean": d.mean, "low": d.low, "high": d.high} if d.n_pairs else {"n": 0}


def paired(first: TrialResult, second: TrialResult) -> dict[str, Any]:
    """``first`` minus ``second`` on their out-of-fold images: segsweep's own paired bootstrap."""
    return _as_dict(paired_difference(first, second, "other"))


def wilcoxon_less(first: TrialResult, second: TrialResult) -> float:
    """One-sided Wilcoxon signed-rank p that ``first`` is worse than ``second`` on the same images."""
    from scipy.stats import wilcoxon

    pairs = pair_image_scores(first, second)
    diffs = np.array([a.dice - b.dice for a, b in pairs.values()], dtype=float)
    diffs = diffs[np.isfinite(diffs) & (diffs != 0)]
    return float(wilcoxon(diffs, alternative="less").pvalue) if len(diffs) >= 10 else math.nan


def fold1_at(trial: TrialResult, share: float) -> float:
    """Fold 1's validation IoU after ``share`` of its epochs (rounded up), NaN without that epoch."""
    if not trial.folds:
        return math.nan
    history = trial.folds[0].history
    epochs = int(trial.config.get("epochs") or len(history))
    at = max(1, math.ceil(epochs * share))
    return float(history[at - 1].val_iou) if len(history) >= at else math.nan


def spearman(xs: list[float], ys: list[float]) -> tuple[float, int]:
    from scipy.stats import spearmanr

    keep = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(keep) < 3:
        return math.nan, len(keep)
    return float(spearmanr([k[0] for k in keep], [k[1] for k in keep]).statistic), len(keep)


def test_scores(out: Path, name: str) -> dict[str, float] | None:
    try:
        metrics = json.loads((out / "predict" / name / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {row["image"]: float(row["dice"]) for row in metrics["per_image"]}


def collect(out: Path) -> dict[str, Any]:
    sweep = load_sweep(out / "sweeps", SWEEP2)
    trials = sweep.trials
    logs = {t.trial_id: epoch_log(t) for t in trials}
    every_epoch = sorted(entry for log in logs.values() for entry in log)
    clock = np.array([t for t, _ in every_epoch])
    spent = np.cumsum([s for _, s in every_epoch]) / 60 if every_epoch else np.array([])

    def minutes_at(when: float) -> float:
        index = int(np.searchsorted(clock, when, side="right"))
        return float(spent[index - 1]) if index else 0.0

    by_start = {t.start: t for t in trials if t.start}
    hand = by_start.get(HAND_PICK)
    rows, best_so_far, best = [], [], -math.inf
    complete = [t for t in trials if t.all_folds_done and t.state == "COMPLETE"]
    for trial in sorted(complete, key=lambda t: _time(t.ended or "9999-01-01T00:00:00+00:00")):
        if trial.ended and trial.mean["dice"] > best:
            best = trial.mean["dice"]
            if trial is hand:
                versus = {"n": 0, "self": True}  # the hand pick itself
            else:
                versus = paired(trial, hand) if hand is not None and hand.all_folds_done else None
            best_so_far.append(
                {"trial_minutes": round(minutes_at(_time(trial.ended)), 1), "dice": best, "trial": trial.label,
                 "start": trial.start, "vs_hand_pick": versus}
            )  # fmt: skip
    for trial in trials:
        rows.append({
            "trial": trial.label, "start": trial.start, "params": trial.ran_with, "state": trial.state,
            "folds": f"{trial.folds_done}/{trial.n_folds}", "dice": trial.mean["dice"] if trial.folds else None,
            "dice_std": trial.std["dice"] if trial.folds else None, "reason": trial.reason,
            "trial_minutes": round(sum(s for _, s in logs[trial.trial_id]) / 60, 1),
            "fold1_iou_third": fold1_at(trial, 1 / 3), "fold1_iou_half": fold1_at(trial, 1 / 2),
            "fold1_iou_last": fold1_at(trial, 1.0),
        })  # fmt: skip
    ranked = sweep.completed()
    winner = ranked[0] if ranked else None
    verdicts: dict[str, Any] = {}
    if winner is not None:
        for other in [t for t in (by_start.get(HAND_PICK), by_start.get(PAPER)) if t is not None and t is not winner]:
            verdicts[f"cv: winner {winner.label} - {other.start}"] = paired(winner, other)
        if len(ranked) > 1:
            verdicts[f"cv: winner - runner-up {ranked[1].label}"] = paired(winner, ranked[1])
    tests: dict[str, Any] = {}
    # Each pair retrained twice: the trials' seed (0), then run_study.py's RETRAIN_SEED2.
    for suffix, draw in (("", "retrained"), (SEED2_SUFFIX, f"retrained with seed {RETRAIN_SEED2}")):
        winner_test, hand_test = test_scores(out, f"winner2{suffix}"), test_scores(out, f"handpick2{suffix}")
        for name, scores in ((f"winner2{suffix}", winner_test), (f"handpick2{suffix}", hand_test)):
            if scores is not None:
                tests[name] = {"dice": float(np.mean(list(scores.values()))), "n": len(scores)}
        if winner is not None and winner_test and hand_test:
            # Paired as `report --test-prediction` pairs them (each bundle matched to its trial).
            folders = [out / "predict" / f"winner2{suffix}", out / "predict" / f"handpick2{suffix}"]
            try:
                comparisons = test_set_evidence(sweep, winner, folders)
            except SegsweepError as exc:  # e.g. the winner changed after its retrain: say it, pair nothing
                verdicts[f"test: winner - hand-pick ({draw})"] = {"n": 0, "error": str(exc)}
                continue
            for comparison in comparisons:
                verdicts[f"test {comparison.test_set}: winner - hand-pick ({draw})"] = _as_dict(comparison.difference)
    # Pruning checks: does fold 1 at a third / half of its epochs rank trials as their CV Dice does?
    full = [t for t in trials if t.all_folds_done]
    rank_checks = {
        share: spearman([fold1_at(t, frac) for t in full], [t.mean["dice"] for t in full])
        for share, frac in (("third", 1 / 3), ("half", 1 / 2), ("fold 1 at its end", 1.0))
    }
    # ASHA (reduction factor 3, rung 1 = fold 1) on the same trials, in the order their fold 1 ended:
    # a trial goes on if its fold-1 Dice is at or above the 67th percentile of the fold-1 Dice recorded
    # at that rung so far, itself included (ray.tune.schedulers.async_hyperband._Bracket.cutoff).
    asha_stops: dict[str, bool] = {}
    recorded: list[float] = []
    for trial in sorted((t for t in trials if t.folds), key=lambda t: _fold1_end(t)):
        recorded.append(trial.folds[0].dice)
        asha_stops[trial.trial_id] = trial.folds[0].dice < float(np.nanpercentile(recorded, (1 - 1 / 3) * 100))
    # The two paired rules on every trial's fold 1 against the winner: which would each have stopped?
    rule_checks = []
    if winner is not None:
        for trial in trials:
            if trial is winner or not trial.folds:
                continue
            first_fold = TrialResult(**{**trial.__dict__, "folds": trial.folds[:1]})
            boot = paired(first_fold, winner)
            rule_checks.append({
                "trial": trial.label, "final_dice": trial.mean["dice"] if trial.all_folds_done else None,
                "state": trial.state, "bootstrap_stops": bool(boot.get("high", 0) < 0),
                "wilcoxon_p": wilcoxon_less(first_fold, winner), "fold1_diff": boot.get("mean"),
                "asha_stops": asha_stops.get(trial.trial_id),
            })  # fmt: skip
    spent_total = float(spent[-1]) if len(spent) else 0.0
    # Minutes of the machine the budget was counted on (run_study.machine_scale): the axis both sweeps share.
    scale = machine_scale(out / "sweeps" / SWEEP2)
    for entry in best_so_far:
        entry["reference_minutes"] = None if scale is None else round(entry["trial_minutes"] / scale, 1)
    return {
        "machine_scale": scale, "reference_hand_pick_minutes": REFERENCE_HAND_PICK_MINUTES,
        "reference_minutes_spent": None if scale is None else round(spent_total / scale, 1),
        "sweep": SWEEP2, "trials": rows, "best_so_far": best_so_far, "verdicts": verdicts, "test": tests,
        "rank_checks": {k: {"spearman": v[0], "n": v[1]} for k, v in rank_checks.items()},
        "rule_checks": rule_checks, "trial_minutes_spent": round(spent_total, 1),
        "budget_trial_minutes": BUDGET_TRIAL_MINUTES, "winner": winner.label if winner else None,
    }  # fmt: skip


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _interval(v: dict[str, Any] | None) -> str:
    if v and v.get("self"):
        return "(the hand pick)"
    if not v or not v.get("n"):
        return "pending"
    return f"{v['mean']:+.3f} (95 % {v['low']:+.3f} to {v['high']:+.3f}, {v['n']} images)"


def write_markdown(summary: dict[str, Any], path: Path) -> None:
    scale = summary.get("machine_scale")
    where = (
        f"{summary['reference_minutes_spent']:.0f} of {summary['budget_trial_minutes']:.0f} reference "
        "trial-minutes spent "
        f"({summary['trial_minutes_spent']:.0f} on this machine, {scale:.2f}x the reference's: its hand pick took "
        f"{scale * summary['reference_hand_pick_minutes']:.1f} trial-minutes against "
        f"{summary['reference_hand_pick_minutes']})"
        if scale
        else f"{summary['trial_minutes_spent']:.0f} trial-minutes spent on this machine (its speed against the "
        "reference is known once the hand pick completes)"
    )
    lines = [f"# Second run ({summary['sweep']}): {where}", "",
             "| trial | start | encoder / arch | loss | batch | lr | epochs | aug | folds | CV Dice | state | "
             "trial-min | reason |", "|---|---|---|---|--:|--:|--:|---|--:|--:|---|--:|---|"]  # fmt: skip
    for r in summary["trials"]:
        p = r["params"]
        dice = (
            "-"
            if r["dice"] is None
            else f"{r['dice']:.3f}" + (f" ± {r['dice_std']:.3f}" if r["folds"].startswith(("2/", "3/")) else "")
        )
        lines.append(
            f"| {r['trial']} | {r['start'] or ''} | {p.get('encoder')} / {p.get('arch')} | {p.get('loss')} | "
            f"{p.get('batch_size')} | {p.get('lr', 0):.1e} | {p.get('epochs')} | "
            f"{'on' if p.get('augment') else 'off'} | "
            f"{r['folds']} | {dice} | {r['state']} | {r['trial_minutes']:.0f} | {r['reason'] or ''} |"
        )
    lines += ["", "Best so far (complete trials, in the order they ended):", "",
              "| trial-minutes | reference trial-minutes | best CV Dice | trial | vs hand-pick (paired, CV) |",
              "|--:|--:|--:|---|---|"]  # fmt: skip
    for b in summary["best_so_far"]:
        lines.append(
            f"| {b['trial_minutes']:.0f} | {_fmt(b.get('reference_minutes'), 0)} | {b['dice']:.4f} | {b['trial']} | "
            f"{_interval(b['vs_hand_pick'])} |"
        )
    lines += ["", "Paired verdicts:", ""]
    lines += [f"- {name}: {_interval(v)}" for name, v in summary["verdicts"].items()] or ["- pending"]
    lines += ["", "Test set (retrained on medico2020_train, plain prediction):", ""]
    lines += [f"- {name}: Dice {v['dice']:.4f} over {v['n']} images" for name, v in summary["test"].items()] or [
        "- pending"
    ]
    lines += ["", "Fold 1's validation IoU at a share of its epochs vs final CV Dice (Spearman, complete trials):", ""]
    lines += [f"- {k}: rho {_fmt(v['spearman'])} over {v['n']} trials" for k, v in summary["rank_checks"].items()]
    lines += ["", "Fold 1 against the winner, the two paired rules:", "",
              "| trial | state | final CV Dice | fold-1 diff | bootstrap stops | Wilcoxon p (one-sided) | ASHA stops |",
              "| --- | --- | ---: | ---: | --- | ---: | --- |"]  # fmt: skip
    for r in summary["rule_checks"]:
        lines.append(
            f"| {r['trial']} | {r['state']} | {_fmt(r['final_dice'])} | {_fmt(r['fold1_diff'])} | "
            f"{'yes' if r['bootstrap_stops'] else 'no'} | {_fmt(r['wilcoxon_p'], 4)} | "
            f"{'-' if r['asha_stops'] is None else 'yes' if r['asha_stops'] else 'no'} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    first = [(m * FIRST_SWEEP_SCALE, d) for m, d, _ in FIRST_SWEEP_BEST]
    xs = [0.0] + [x for x, _ in first] + [850.0]
    ys = [math.nan] + [y for _, y in first] + [first[-1][1]]
    ax.step(xs, ys, where="post", label="first sweep (10 trials, ASHA; x: running min x 850/449)", color="tab:gray")
    attempt1 = json.loads((HERE / "results" / "second-attempt1.json").read_text())
    lost = attempt1["best_so_far"]
    ax.step([b["trial_minutes"] for b in lost] + [attempt1["trial_minutes_spent"]],
            [b["dice"] for b in lost] + [lost[-1]["dice"]], where="post", color="tab:blue", alpha=0.4,
            label=f"second sweep, attempt 1 (records lost at {attempt1['trial_minutes_spent']:.0f})")  # fmt: skip
    second, scale = summary["best_so_far"], summary.get("machine_scale") or 1.0
    if second:
        xs2 = [b["trial_minutes"] / scale for b in second] + [summary["trial_minutes_spent"] / scale]
        ys2 = [b["dice"] for b in second] + [second[-1]["dice"]]
        ax.step(xs2, ys2, where="post", label="second sweep (starting points, paired pruning)", color="tab:blue")
    for row in summary["trials"]:
        if row["start"] in (HAND_PICK, PAPER) and row["folds"].startswith("3/"):
            ax.axhline(row["dice"], linestyle=":", color="tab:orange" if row["start"] == HAND_PICK else "tab:green",
                       label=f"starting point {row['start']} ({row['dice']:.3f})")  # fmt: skip
    ax.axvline(425, color="black", linewidth=0.5, linestyle="--")
    ax.axvline(850, color="black", linewidth=0.5)
    ax.set_xlabel("trial-minutes of training (the reference machine's; run_study.machine_scale)")
    ax.set_ylabel("best mean CV Dice (3 folds)")
    ax.set_xlim(0, max(900, summary["trial_minutes_spent"] / scale + 20))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the study's output root (run_study.py --out)")
    parser.add_argument("--results", default=str(HERE / "results"), help="where the recorded copies go")
    args = parser.parse_args()
    out = Path(args.out)
    summary = collect(out)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "second.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    write_markdown(summary, results / "second.md")
    plot(summary, results / "best_so_far_2.png")
    print((results / "second.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
