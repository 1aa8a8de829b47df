"""The report's interactive figures (plotly), drawn from the sweep folder.

Each function returns a plotly figure, or a sentence saying why there is nothing worth drawing (one
trial is a single dot, one fold a single column, one epoch a single point): a figure that shows
nothing is replaced by what it would have said. Trial numbers, folds and epochs are whole numbers on
their axes; pruned trials are drawn with their partial scores and marked.

report.html embeds plotly.js once, inline (no request to a CDN): :func:`figure_html`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io
from plotly.colors import qualitative

from sweeps.folder import OBJECTIVE, TrialResult
from sweeps.folder._sweep_results import COMPLETE, PRUNED

#: Height of a figure in pixels; the width follows the page.
_HEIGHT = 420
_COMPLETE_MARKER = {"symbol": "circle", "size": 9, "color": "#1f77b4"}
_PRUNED_MARKER = {"symbol": "x", "size": 9, "color": "#d62728"}
#: A trial with some folds done that neither completed nor was pruned: a running trial's partial mean
#: was drawn as "completed" before.
_UNFINISHED = "unfinished"
_UNFINISHED_MARKER = {"symbol": "circle-open", "size": 9, "color": "#7f7f7f"}


def _integer_axis(largest: int, title: str, first: int = 0) -> dict[str, Any]:
    """An axis of whole numbers (trials, folds, epochs): ticks at integers only, at most ~12 of them."""
    step = max(1, math.ceil((largest - first + 1) / 12))
    return {"title": {"text": title}, "tickmode": "linear", "tick0": first, "dtick": step, "tickformat": "d"}


def _layout(figure: go.Figure, **layout: Any) -> go.Figure:
    defaults = {"height": _HEIGHT, "template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 30, "b": 50}}
    figure.update_layout(**{**defaults, **layout})
    return figure


def _scored(trials: Sequence[TrialResult]) -> list[TrialResult]:
    """Trials with at least one finished fold and a number, in trial-number order."""
    return sorted(
        (t for t in trials if t.folds and t.number is not None and not math.isnan(t.mean["dice"])),
        key=lambda t: t.number or 0,
    )


def _hover(trial: TrialResult) -> str:
    folds = f"{trial.folds_done}/{trial.n_folds} folds"
    return f"trial {trial.label}<br>{trial.state}, {folds}<br>mean Dice {trial.mean['dice']:.4f}"


def optimisation_history(trials: Sequence[TrialResult]) -> go.Figure | str:
    """Each trial's mean Dice by trial number (pruned ones marked, at their partial mean) and the best
    so far among the trials that completed all folds (the winner rule)."""
    scored = _scored(trials)
    if len(scored) < 2:
        only = f" (trial {scored[0].label}, mean Dice {scored[0].mean['dice']:.4f})" if scored else ""
        return f"Optimisation history not drawn: {len(scored)} trial(s) with a score{only}, a single dot at most."
    figure = go.Figure()

    def group(trial: TrialResult) -> str:
        if trial.state == COMPLETE and trial.all_folds_done:
            return COMPLETE
        return PRUNED if trial.state == PRUNED else _UNFINISHED

    for state, marker, name in (
        (COMPLETE, _COMPLETE_MARKER, "completed"),
        (PRUNED, _PRUNED_MARKER, "pruned (mean of its finished folds)"),
        (_UNFINISHED, _UNFINISHED_MARKER, "not finished: running, stopped or failed (mean of its finished folds)"),
    ):
        chosen = [t for t in scored if group(t) == state]
        if chosen:
            figure.add_trace(
                go.Scatter(
                    x=[t.number for t in chosen],
                    y=[t.mean["dice"] for t in chosen],
                    mode="markers",
                    marker=marker,
                    name=name,
                    text=[_hover(t) for t in chosen],
                    hoverinfo="text",
                )
            )
    best_x: list[int] = []
    best_y: list[float] = []
    for trial in scored:
        if trial.state == COMPLETE and trial.all_folds_done:
            value = trial.mean["dice"]
            best = value if not best_y or OBJECTIVE.better(value, best_y[-1]) else best_y[-1]
            best_x.append(trial.number or 0)
            best_y.append(best)
    if best_x:
        figure.add_trace(
            go.Scatter(x=best_x, y=best_y, mode="lines", line={"shape": "hv", "color": "#2ca02c"}, name="best so far")
        )
    largest = max(t.number or 0 for t in scored)
    return _layout(figure, xaxis=_integer_axis(largest, "trial number"), yaxis={"title": {"text": "mean CV Dice"}})


def best_so_far(points: Sequence[tuple[float, float, str]]) -> go.Figure | str:
    """The best mean Dice so far against the sweep's running time (minutes), as a step curve."""
    if len(points) < 2:
        return (
            "Best-so-far curve not drawn: the first completed trial was never beaten, so the curve is one step "
            "(the table gives it)."
        )
    minutes = [seconds / 60 for seconds, _, _ in points]
    figure = go.Figure(
        go.Scatter(
            x=minutes,
            y=[value for _, value, _ in points],
            mode="lines+markers",
            line={"shape": "hv"},
            text=[f"trial {name}" for _, _, name in points],
            hovertemplate="%{text}<br>%{x:.1f} min<br>best Dice %{y:.4f}<extra></extra>",
            name="best so far",
        )
    )
    return _layout(
        figure,
        xaxis={"title": {"text": "minutes the sweep ran (pauses left out)"}},
        yaxis={"title": {"text": "best mean CV Dice so far"}},
    )


def _categories(values: Sequence[Any]) -> tuple[list[float], dict[str, Any]] | None:
    """Numbers for a parallel-coordinates axis: numbers as they are (log10 for a wide positive range),
    anything else as categories at 0, 1, ...; None when the axis would be one value."""
    if len({repr(v) for v in values}) < 2:
        return None
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        numbers = [float(v) for v in values]
        if all(isinstance(v, int) for v in values) and len(set(numbers)) <= 12:  # batch sizes, epochs
            ticks = sorted(set(numbers))
            return numbers, {"tickvals": ticks, "ticktext": [f"{v:.0f}" for v in ticks]}
        if min(numbers) > 0 and max(numbers) / min(numbers) >= 10:  # learning rates: a log axis
            decades = range(math.floor(math.log10(min(numbers))), math.ceil(math.log10(max(numbers))) + 1)
            return [math.log10(v) for v in numbers], {
                "tickvals": list(decades),
                "ticktext": [f"{10.0**d:g}" for d in decades],
                "range": [min(decades), max(decades)],
            }
        return numbers, {}
    names = sorted({str(v) for v in values})
    return [float(names.index(str(v))) for v in values], {"tickvals": list(range(len(names))), "ticktext": names}


def parallel_coordinates(trials: Sequence[TrialResult]) -> go.Figure | str:
    """One line per scored trial across its searched parameters (as trained), its state and its mean Dice."""
    scored = _scored(trials)
    if len(scored) < 2:
        return f"Parallel coordinates not drawn: {len(scored)} trial(s) with a score; it needs two."
    names: list[str] = []
    for trial in scored:
        names += [p for p in trial.params if p not in names]
    dimensions = []
    for name in names:
        axis = _categories([t.ran_with.get(name, t.config.get(name)) for t in scored])
        if axis is not None:
            values, ticks = axis
            dimensions.append({"label": name, "values": values, **ticks})
    if not dimensions:
        return "Parallel coordinates not drawn: every scored trial ran with the same parameters."
    states = [1.0 if t.state == PRUNED else 0.0 for t in scored]
    if any(states):
        dimensions.append({"label": "state", "values": states, "tickvals": [0, 1], "ticktext": ["completed", "pruned"]})
    dice = [t.mean["dice"] for t in scored]
    dimensions.append({"label": "mean CV Dice", "values": dice})
    figure = go.Figure(
        go.Parcoords(
            line={"color": dice, "colorscale": "Viridis", "showscale": True, "colorbar": {"title": {"text": "Dice"}}},
            dimensions=dimensions,
        )
    )
    return _layout(figure, margin={"l": 60, "r": 60, "t": 50, "b": 30})


def importance(importances: Mapping[str, float]) -> go.Figure | str:
    """fANOVA importances as horizontal bars, the most important at the top."""
    if len(importances) < 2:
        return "Importance chart not drawn: one parameter takes all the importance (the table says so)."
    ordered = sorted(importances.items(), key=lambda item: item[1])
    figure = go.Figure(
        go.Bar(x=[v for _, v in ordered], y=[p for p, _ in ordered], orientation="h", marker={"color": "#1f77b4"})
    )
    return _layout(
        figure,
        height=max(220, 60 + 40 * len(ordered)),
        xaxis={"title": {"text": "importance (sums to 1)"}, "range": [0, 1]},
    )


def fold_dice(trials: Sequence[TrialResult]) -> go.Figure | str:
    """Each fold's Dice of the given trials (best first): one line per trial, pruned ones dotted and marked."""
    shown = [t for t in trials if t.folds]
    if not shown:
        return "Per-fold Dice not drawn: no trial finished a fold."
    if max(t.folds_done for t in shown) < 2:
        return "Per-fold Dice not drawn: every trial shown has one fold (the leaderboard gives its score)."
    figure = go.Figure()
    for trial in shown:
        pruned = trial.state == PRUNED
        figure.add_trace(
            go.Scatter(
                x=[f.fold for f in trial.folds],
                y=[f.dice for f in trial.folds],
                mode="lines+markers",
                name=f"{trial.label}{' pruned' if pruned else ''}",
                line={"dash": "dot" if pruned else "solid"},
                marker={"symbol": "x" if pruned else "circle", "size": 8},
                hovertemplate=f"trial {trial.label}<br>fold %{{x}}<br>Dice %{{y:.4f}}<extra></extra>",
            )
        )
    largest = max(t.n_folds for t in shown)
    return _layout(figure, xaxis=_integer_axis(largest, "fold", first=1), yaxis={"title": {"text": "validation Dice"}})


def learning_curves(trial: TrialResult) -> go.Figure | str:
    """Validation IoU and loss per epoch of each fold of ``trial``; crosses mark learning-rate cuts."""
    folds = [f for f in trial.folds if f.history]
    if not folds:
        return "Learning curves not drawn: the winner's folds recorded no epochs."
    if max(len(f.history) for f in folds) < 2:
        return "Learning curves not drawn: each fold trained one epoch, a single point per curve."
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss (solid: train, dashed: validation)",
                                                            "Validation IoU (x: learning rate cut)"))  # fmt: skip
    palette = qualitative.Plotly
    for i, fold in enumerate(folds):
        colour = palette[i % len(palette)]
        epochs = [h.epoch for h in fold.history]
        group = f"fold {fold.fold}"
        common = {"legendgroup": group, "line": {"color": colour}}
        figure.add_trace(go.Scatter(x=epochs, y=[h.loss for h in fold.history], name=group, **common), 1, 1)
        figure.add_trace(
            go.Scatter(
                x=epochs,
                y=[h.val_loss for h in fold.history],
                name=f"{group} validation",
                showlegend=False,
                legendgroup=group,
                line={"color": colour, "dash": "dash"},
            ),
            1,
            1,
        )
        figure.add_trace(
            go.Scatter(x=epochs, y=[h.val_iou for h in fold.history], name=group, showlegend=False, **common), 1, 2
        )
        by_epoch = {h.epoch: h.val_iou for h in fold.history}
        drops = [e for e in fold.lr_drops if e in by_epoch]
        if drops:
            figure.add_trace(
                go.Scatter(
                    x=drops,
                    y=[by_epoch[e] for e in drops],
                    mode="markers",
                    marker={"symbol": "x", "size": 11, "color": colour},
                    name=f"{group} learning rate cut",
                    showlegend=False,
                    legendgroup=group,
                ),
                1,
                2,
            )
    largest = max(h.epoch for f in folds for h in f.history)
    axis = _integer_axis(largest, "epoch", first=1)
    figure.update_xaxes(**axis)
    return _layout(figure)


def figure_html(figure: go.Figure, element_id: str, *, with_plotly_js: bool) -> str:
    """The figure as a ``<div>`` and its script; ``with_plotly_js`` inlines plotly.js (the first
    figure of a page only: the others use it). Never a CDN: the report opens offline."""
    return plotly.io.to_html(
        figure,
        full_html=False,
        include_plotlyjs=with_plotly_js,
        div_id=element_id,
        default_width="100%",
        config={"displaylogo": False, "responsive": True},
    )
