"""Collect the study's numbers from its output folder into summary.md, summary.json and best_so_far.png.

    .venv/bin/python studies/kvasir-cpu/summarize.py --out OUT

Reads what exists and marks the rest "pending", so it can run at any time while the study runs.
RESULTS.md in this folder is written from its output.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import segsweep.base.env  # noqa: F401  (sets the Keras environment first)

SWEEP = "kvasir-cpu"
AUGMENTED = "cpu winner, augmentation on"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _cv_row(cv: dict[str, Any] | None) -> dict[str, Any]:
    if cv is None or not cv.get("folds"):
        return {"state": "pending"}
    folds = cv["folds"]

    def stats(metric: str) -> tuple[float, float]:
        values = [float(f[metric]) for f in folds]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        return mean, std

    return {
        "state": "complete" if cv.get("complete") and len(folds) == cv.get("n_folds") else
        f"{len(folds)}/{cv.get('n_folds')} folds",
        "folds_dice": [round(float(f["dice"]), 4) for f in folds],
        "dice": stats("dice"),
        "iou": stats("iou"),
        "seconds": float(cv.get("seconds", 0.0)),
        "config": {k: cv["config"][k] for k in ("arch", "encoder", "weights", "loss", "batch_size", "lr", "epochs",
                                                "augment", "image_size", "folds")},
    }  # fmt: skip


def _test_rows(metrics: dict[str, Any] | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    return {row["variant"]: (row["dice_mean"], row["iou_mean"], row["n_images"]) for row in metrics["rows"]}


def collect(out: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {
        "default": _cv_row(_read(out / "cv" / "default" / "cv.json")),
        "handpicked": _cv_row(_read(out / "cv" / "handpicked" / "cv.json")),
    }
    best = _read(out / "sweeps" / SWEEP / "report" / "best.json")
    rows["cpu winner"] = (
        _cv_row(_read(out / "sweeps" / SWEEP / "trials" / str(best["trial_id"]) / "cv.json"))
        if best else {"state": "pending"}
    )  # fmt: skip
    if best:
        rows["cpu winner"]["trial"] = best["trial_id"]
    for name, key in (("default", "default"), ("handpicked", "handpicked"), ("cpu winner", "winner")):
        bundle = _read(out / "models" / key / "config.json")
        rows[name]["retrain_seconds"] = bundle.get("seconds") if bundle else None
        rows[name]["test"] = _test_rows(_read(out / "predict" / key / "metrics.json"))
        rows[name]["test_folds"] = _test_rows(_read(out / "predict" / f"{key}-folds" / "metrics.json"))
    # The follow-up of the missed goal: the winner's configuration with augmentation on (no retrain).
    rows[AUGMENTED] = _cv_row(_read(out / "cv" / "winner-augmented" / "cv.json"))
    rows[AUGMENTED].update(
        retrain_seconds=None,
        test={},
        test_folds=_test_rows(_read(out / "predict" / "winner-augmented-folds" / "metrics.json")),
    )
    bn = {name: _cv_row(_read(out / "cv" / name / "cv.json")) for name in ("bn-before", "bn-after")}
    curve: list[tuple[float, float, str]] = []
    sweep_state = "pending"
    if (out / "sweeps" / SWEEP / "sweep.json").is_file():
        from reports.report import best_so_far
        from sweeps.folder import load_sweep

        sweep = load_sweep(out / "sweeps", SWEEP)
        curve = best_so_far(sweep)
        states: dict[str, int] = {}
        for trial in sweep.trials:
            states[trial.state] = states.get(trial.state, 0) + 1
        sweep_state = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        rows["sweep_trials"] = [
            {"trial": t.trial_id, "params": t.params, "state": t.state, "folds": t.folds_done,
             "dice": t.mean["dice"] if t.folds else None, "started": t.started, "ended": t.ended}
            for t in sweep.trials
        ]  # fmt: skip
    return {"rows": rows, "bn": bn, "best_so_far": curve, "sweep_state": sweep_state}


def _pm(pair: Any) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}" if pair else "pending"


def verdicts(summary: dict[str, Any]) -> list[str]:
    rows = summary["rows"]
    winner, default, hand = rows.get("cpu winner", {}), rows.get("default", {}), rows.get("handpicked", {})
    out = []

    def cv(row: dict[str, Any]) -> float | None:
        return row["dice"][0] if row.get("state") == "complete" else None

    w, d, h = cv(winner), cv(default), cv(hand)
    if w is None:
        out.append("cpu winner CV Dice >= 0.65: pending (sweep not finished)")
    else:
        out.append(f"cpu winner CV Dice >= 0.65: {'MET' if w >= 0.65 else 'MISSED'} ({w:.3f}, {w - 0.65:+.3f})")
        for name, other in (("defaults", d), ("hand-picked", h)):
            if other is None:
                out.append(f"winner beats the {name}: pending")
            else:
                verdict = "MET" if w > other else "MISSED"
                out.append(f"winner beats the {name}: {verdict} ({w:.3f} vs {other:.3f}, {w - other:+.3f})")
        test = winner.get("test", {}).get("plain")
        if test is None:
            out.append("winner's test Dice within 0.05 of its CV Dice: pending")
        else:
            verdict = "MET" if abs(test[0] - w) <= 0.05 else "MISSED"
            out.append(f"winner's test Dice within 0.05 of its CV Dice: {verdict} (test {test[0]:.3f}, CV {w:.3f}, "
                       f"gap {w - test[0]:+.3f})")  # fmt: skip
    for name in ("default", "handpicked", "cpu winner"):
        single, ensemble = rows.get(name, {}).get("test", {}), rows.get(name, {}).get("test_folds", {})
        if single.get("plain") and ensemble.get("plain"):
            s, e = single["plain"][0], ensemble["plain"][0]
            out.append(f"{name}: fold ensemble >= retrained single model: {'MET' if e >= s else 'MISSED'} "
                       f"({e:.3f} vs {s:.3f})")  # fmt: skip
        else:
            out.append(f"{name}: fold ensemble >= retrained single model: pending")
    return out


def render(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    lines = [
        "| configuration | CV state | CV Dice | CV IoU | CV s | retrain s | test Dice / IoU (retrained) "
        "| + TTA | fold ensemble | ensemble + TTA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("default", "handpicked", "cpu winner", AUGMENTED):
        row = rows.get(name, {})

        missing = "-" if name == AUGMENTED else "pending"  # the follow-up run is not retrained

        def test(table: dict[str, Any], variant: str, missing: str = "pending") -> str:
            value = table.get(variant) if table else None
            return f"{value[0]:.3f} / {value[1]:.3f}" if value else missing

        config = row.get("config")
        described = name
        if config:
            described = (
                f"{name}: {config['arch']}/{config['encoder']} {config['loss']} b{config['batch_size']} "
                f"lr {config['lr']:.2g} {config['epochs']} ep aug {config['augment']}"
            )
        retrain = row.get("retrain_seconds")
        lines.append(
            f"| {described} | {row.get('state')} | {_pm(row.get('dice'))} | {_pm(row.get('iou'))} "
            f"| {row.get('seconds', 0):.0f} | {f'{retrain:.0f}' if retrain else missing} "
            f"| {test(row.get('test', {}), 'plain', missing)} | {test(row.get('test', {}), 'tta', missing)} "
            f"| {test(row.get('test_folds', {}), 'plain')} | {test(row.get('test_folds', {}), 'tta')} |"
        )
    lines += ["", f"Sweep: {summary['sweep_state']}", ""]
    if summary["best_so_far"]:
        lines += ["| minutes the sweep ran | best mean CV Dice | trial |", "|---|---|---|"]
        lines += [f"| {s / 60:.1f} | {d:.4f} | {t} |" for s, d, t in summary["best_so_far"]]
    lines += ["", "| batch-norm run | state | CV Dice | CV IoU | folds |", "|---|---|---|---|---|"]
    for name, row in summary["bn"].items():
        lines.append(f"| {name} | {row.get('state')} | {_pm(row.get('dice'))} | {_pm(row.get('iou'))} "
                     f"| {row.get('folds_dice', '')} |")  # fmt: skip
    lines += ["", "Verdicts (goals of issue 10):", ""]
    lines += [f"- {line}" for line in verdicts(summary)]
    post = {}
    for name in ("default", "handpicked", "cpu winner", AUGMENTED):
        for key in ("test", "test_folds"):
            for variant, value in rows.get(name, {}).get(key, {}).items():
                if "+" in variant:
                    post[f"{name} {'ensemble' if key == 'test_folds' else 'retrained'} {variant}"] = value
    if post:
        lines += ["", "| post-processing row | test Dice | test IoU |", "|---|---|---|"]
        lines += [f"| {k} | {v[0]:.4f} | {v[1]:.4f} |" for k, v in post.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="the study's output folder")
    args = parser.parse_args()
    out = Path(args.out)
    summary = collect(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "summary.md").write_text(render(summary))
    if summary["best_so_far"]:
        from reports import _plots

        (out / "best_so_far.png").write_bytes(_plots.best_so_far(summary["best_so_far"]))
    print(render(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
