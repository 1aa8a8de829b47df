"""The report's figures, rendered off-screen (matplotlib Agg) to PNG bytes.

Optuna's own matplotlib plots draw the optimisation history and parallel coordinates; the fold box
plots and learning curves are drawn here from the sweep folder.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: the report is written by a command, often on a server

import matplotlib.pyplot as plt

from sweeps.folder import TrialResult

#: Figure width in inches at 100 dpi: readable in a browser without scaling.
_WIDTH = 8.0


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _optuna_plot(draw: Callable[[], Any]) -> bytes:
    # Optuna sets the ggplot style globally; rc_context restores the caller's style afterwards.
    with warnings.catch_warnings(), plt.rc_context():
        # Optuna marks its matplotlib backend experimental; the warning is not the reader's business.
        warnings.simplefilter("ignore")
        axes = draw()
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(_WIDTH, 4.5)
    return _png(figure)


def optimisation_history(study: Any) -> bytes:
    from optuna.visualization.matplotlib import plot_optimization_history

    return _optuna_plot(lambda: plot_optimization_history(study, target_name="mean CV Dice"))


def parallel_coordinate(study: Any) -> bytes:
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    return _optuna_plot(lambda: plot_parallel_coordinate(study, target_name="mean CV Dice"))


def fold_boxplots(trials: list[TrialResult], labels: list[str]) -> bytes:
    """Per-fold Dice of each trial as a box with its folds as points over it."""
    figure, axes = plt.subplots(figsize=(_WIDTH, 0.6 * len(trials) + 1.8))
    values = [[f.dice for f in t.folds] for t in trials]
    axes.boxplot(values, orientation="horizontal", tick_labels=labels, widths=0.5)
    for row, dices in enumerate(values, start=1):
        axes.scatter(dices, [row] * len(dices), s=14, color="tab:blue", zorder=3)
    axes.invert_yaxis()  # best at the top, as in the leaderboard
    axes.set_xlabel("validation Dice per fold")
    axes.set_title("Per-fold Dice of the top trials")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def best_so_far(points: list[tuple[float, float, str]]) -> bytes:
    """A step curve of the best mean Dice so far against the sweep's running time (minutes)."""
    figure, axes = plt.subplots(figsize=(_WIDTH, 3.6))
    minutes = [seconds / 60 for seconds, _, _ in points]
    dice = [value for _, value, _ in points]
    axes.step(minutes, dice, where="post", color="tab:blue")
    axes.scatter(minutes, dice, color="tab:blue", zorder=3)
    axes.set(xlabel="minutes the sweep ran (pauses left out)", ylabel="best mean CV Dice so far")
    axes.grid(alpha=0.3)
    return _png(figure)


def learning_curves(trial: TrialResult) -> bytes:
    """Loss and validation IoU per epoch of each fold; crosses mark learning-rate drops."""
    figure, (loss_axes, iou_axes) = plt.subplots(1, 2, figsize=(_WIDTH * 1.4, 4.2))
    colours = plt.get_cmap("tab10")
    for i, fold in enumerate(trial.folds):
        colour = colours(i % 10)
        epochs = [h.epoch for h in fold.history]
        loss_axes.plot(epochs, [h.loss for h in fold.history], color=colour, label=f"fold {fold.fold} train")
        loss_axes.plot(epochs, [h.val_loss for h in fold.history], color=colour, linestyle="--")
        iou_axes.plot(epochs, [h.val_iou for h in fold.history], color=colour, label=f"fold {fold.fold}")
        by_epoch = {h.epoch: h.val_iou for h in fold.history}
        drops = [e for e in fold.lr_drops if e in by_epoch]
        iou_axes.scatter(drops, [by_epoch[e] for e in drops], marker="x", color=colour, s=50, zorder=3)
    loss_axes.set(xlabel="epoch", ylabel="loss (solid: train, dashed: validation)", title="Loss")
    iou_axes.set(xlabel="epoch", ylabel="validation IoU", title="Validation IoU (x: learning rate cut)")
    for axes in (loss_axes, iou_axes):
        axes.grid(alpha=0.3)
    if len(trial.folds) <= 10:
        iou_axes.legend(fontsize=8)
    return _png(figure)
