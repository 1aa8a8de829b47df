"""``segsweep report``: the sweep's leaderboard, its winner and why, as HTML, Markdown and JSON.

The report is built once as a list of sections (paragraphs, tables, figures) and rendered to
``report.html`` (one self-contained file that opens offline: interactive plotly figures with
plotly.js inlined once, pictures as base64 PNG, styles and the few lines of table-sorting script
inline, nothing fetched), ``report.md`` (same tables, static figures as PNG files in ``figures/``
beside it), ``best.json`` (the winner's configuration in the form ``segsweep cv --config`` reads) and
``per_image.csv`` (the winner's out-of-fold score of every image).
"""

from __future__ import annotations

import base64
import html
import logging
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports.heldout import TestComparison, test_set_evidence
from reports.leaderboard import (
    WINNER_RULE,
    WinnerChoice,
    compare_pretraining,
    encoder_of,
    is_pretrained,
    pick_winner,
)
from segsweep.base.errors import ConfigError, SegsweepError
from segsweep.base.files import disk_full_as_error, write_bytes_atomic, write_json_atomic
from sweeps.folder import (
    BEST_FILE,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    OBJECTIVE,
    STUDY_REPEAT_ATTR,
    WIDENED_SPACE_FILE,
    SpaceEdges,
    SweepFolder,
    SweepResults,
    TestScore,
    TrialResult,
    WinnerEvidence,
    format_mean_std,
    format_value,
    leaderboard_table,
    load_sweep,
    load_test_scores,
    rank_trials,
    shown_states,
    space_edges,
    widened_space_yaml,
    winner_evidence,
)
from trainer.config import CVConfig
from trainer.models import precision_label
from trainer.results import read_cv_result

FORMATS = ("md", "html", "json")
#: The winner's out-of-fold score of every image, beside report.html and report.md.
PER_IMAGE_CSV = "per_image.csv"
#: The worst images report.md lists (report.html and per_image.csv list every one).
MD_PER_IMAGE_ROWS = 20
#: Trials shown in the fold box plots.
TOP_TRIALS = 5

logger = logging.getLogger(__name__)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    #: report.html lets the reader sort it by a column (numbers as numbers).
    sortable: bool = False
    #: Written beside the report under this name (and offered for download in report.html).
    csv_name: str | None = None
    csv: bytes | None = None
    #: report.md shows only the first rows (a page, not 880 lines); report.html and the CSV hold them all.
    md_rows: int | None = None


@dataclass
class Figure:
    name: str  # file stem in figures/, element id in report.html
    title: str
    #: The static picture: report.md's figures/NAME.png, and report.html's when there is no ``plot``.
    png: bytes | None = None
    #: An interactive plotly figure, drawn in report.html (reports._figures).
    plot: Any | None = None


Block = str | Table | Figure


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Report:
    title: str
    sections: list[Section]
    best: dict[str, Any]
    #: Text files written beside the report whatever its formats, by name (the widened space).
    files: dict[str, str] = field(default_factory=dict)


def pm(mean: float, std: float, n: int) -> str:
    """``mean ± std`` of ``n`` folds or images (``± –`` for one: no spread to show)."""
    return format_mean_std(mean, std, n)


def interval_95(mean: float, std: float, n: int) -> tuple[float, float] | None:
    """A 95 % t interval of a mean Dice/IoU over ``n`` images (sample std), clipped to [0, 1]; None
    for fewer than 2 images. From the recorded summary (predict keeps mean, std and n per test set)."""
    if n < 2 or math.isnan(mean) or math.isnan(std):
        return None
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)


def pm_interval(mean: float, std: float, n: int) -> str:
    """``mean ± std [low, high]``: a test score with its 95 % interval over images."""
    interval = interval_95(mean, std, n)
    if interval is None:
        return pm(mean, std, n) + (" [no interval: 1 image]" if n == 1 else "")
    return pm(mean, std, n) + f" [95 % {interval[0]:.4f} to {interval[1]:.4f}]"


def data_path(sweep: SweepResults, trial: TrialResult | None = None) -> str | None:
    """The data set folder a sweep ran on: sweep.json's ``data``, else the trial's cv.json record."""
    data = sweep.spec.data
    if isinstance(data, dict):
        data = data.get("root") or data.get("path")
    if data:
        return str(data)
    if trial is not None and trial.path is not None:
        cv = read_cv_result(trial.path)
        recorded = (cv.data if cv else None) or {}
        found = recorded.get("root") or recorded.get("path")
        return str(found) if found else None
    return None


def best_configuration(
    sweep: SweepResults, choice: WinnerChoice, evidence: WinnerEvidence | None = None
) -> dict[str, Any]:
    """best.json: the winner's CVConfig under ``config`` plus ``data``, and where it came from."""
    winner = choice.winner
    try:
        config = CVConfig.from_dict(winner.config, source=f"trial {winner.trial_id} configuration")
    except ConfigError as exc:
        raise SegsweepError(f"the winner's recorded configuration cannot be used: {exc}") from None
    best: dict[str, Any] = {
        "config": config.to_dict(),
        "data": data_path(sweep, winner),
        "sweep": sweep.name,
        "trial_id": winner.trial_id,
        "number": winner.number,
        "params": winner.params,
        "rule": WINNER_RULE,
        "cv": {
            "n_folds": winner.n_folds,
            "mean": winner.mean,
            "std": winner.std,
            "folds": [{"fold": f.fold, "dice": f.dice, "iou": f.iou, "lr_drops": f.lr_drops} for f in winner.folds],
        },
        "runner_up": None,
        "gap_in_winner_std": choice.gap_in_std,
        "evidence": evidence.to_dict() if evidence is not None else None,
    }
    cv = read_cv_result(winner.path) if winner.path is not None else None
    if cv is not None and cv.runtime:
        # The TensorFlow settings the winner ran with (threads, precision, versions): `segsweep cv
        # --config best.json` applies them, since on a CPU the Dice depends on the thread count.
        best["runtime"] = {k: v for k, v in cv.runtime.items() if k != "earlier"}
    if choice.runner_up is not None:
        best["runner_up"] = {
            "trial_id": choice.runner_up.trial_id,
            "number": choice.runner_up.number,
            "mean": choice.runner_up.mean,
            "std": choice.runner_up.std,
        }
    return best


# --- sections --------------------------------------------------------------------------------------


def data_quality(trial: TrialResult | None) -> str | None:
    """A warning about the data the trial ran on (mostly empty masks, pairs left out), from its cv.json."""
    cv = read_cv_result(trial.path) if trial is not None and trial.path is not None else None
    quality = ((cv.data if cv else None) or {}).get("quality") or {}
    if not isinstance(quality, dict):
        return None
    notes = []
    if quality.get("mostly_empty"):
        share = quality.get("empty_mask_share") or 0.0
        notes.append(
            f"WARNING: {quality.get('n_empty_masks')} masks ({100 * share:.0f}%) are empty; an empty truth scores "
            "Dice 1 when nothing is predicted, so these scores overstate what the model finds"
        )
    if quality.get("skipped"):
        notes.append(f"{len(quality['skipped'])} bad pair(s) left out (--skip-bad; listed in the trial's cv.json)")
    return "; ".join(notes) or None


def _overview(sweep: SweepResults, choice: WinnerChoice) -> Section:
    states: dict[str, int] = {}
    for state in shown_states(sweep).values():  # as status says them: RUNNING of a stopped sweep is STOPPED
        states[state] = states.get(state, 0) + 1
    spec = sweep.spec
    rows = [
        ["sweep", sweep.name],
        ["folder", str(sweep.path)],
        ["data", str(data_path(sweep, choice.winner))],
        *([["data quality", note]] if (note := data_quality(choice.winner)) else []),
        ["search space", format_value(spec.space)],
        [
            "trials",
            f"{len(sweep.trials)} (" + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + ")",
        ],
        ["eligible for winning", str(choice.eligible)],
    ]
    if spec.mixed_precision or spec.threads is not None:
        threads = spec.threads
        rows.append(
            [
                "TensorFlow",
                f"--mixed-precision {spec.mixed_precision or 'auto'}, --threads "
                + ("the trial's CPUs" if threads is None else str(threads or "one per core")),
            ]
        )
    overrides = spec.overrides
    if any(v is not None for v in overrides.values()):
        rows.append(["overrides", ", ".join(f"{k}={v}" for k, v in overrides.items() if v is not None)])
    return Section("Sweep", [Table(["", ""], rows)])


def _winner(choice: WinnerChoice) -> Section:
    winner = choice.winner
    params = ", ".join(f"{k}={format_value(v)}" for k, v in winner.ran_with.items())
    overridden = winner.overridden
    if overridden:
        params += (
            " (set by the sweep's options over the proposal: "
            + ", ".join(f"{k} proposed {format_value(proposed)}" for k, (proposed, _ran) in overridden.items())
            + ")"
        )
    n = winner.folds_done
    text = (
        f"Winner: trial {winner.label}, {params}: mean Dice {pm(winner.mean['dice'], winner.std['dice'], n)}, "
        f"mean IoU {pm(winner.mean['iou'], winner.std['iou'], n)} over {n} folds (mean ± sample "
        f"standard deviation over folds)."
    )
    blocks: list[Block] = [WINNER_RULE, text, choice.gap_sentence()]
    runtime = _runtime_sentence(winner)
    if runtime:
        blocks.append(runtime)
    return Section("Winner", blocks)


def _evidence(evidence: WinnerEvidence, tests: Sequence[TestComparison] = ()) -> Section:
    """The winner against each starting point and the runner-up, image by image; with ``tests``, the
    winner against the starting points on the test sets their predictions scored (``--test-prediction``)."""
    blocks: list[Block] = [evidence.headline] if evidence.headline else []
    # The headline's test part: per test set, the best-ranked starting point predicted on it (first).
    headline_tests: dict[str, str] = {}
    for test in tests:
        headline_tests.setdefault(test.images, test.sentence())
    blocks += headline_tests.values()
    blocks.append(
        "Paired comparison on the out-of-fold images: the winner's Dice minus the other trial's on each image "
        "both validated in the same fold, its mean, and a 95 % percentile bootstrap interval over images "
        f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}, so a rerun gives the same numbers). An "
        "interval above 0: the winner is better; containing 0: tied; below 0: the winner is worse."
    )
    rows = [
        [
            d.role,
            d.other.label,
            d.other.state,
            str(d.n_pairs),
            f"{d.mean:+.4f}" if d.n_pairs else "–",
            f"{d.low:+.4f} to {d.high:+.4f}" if d.n_pairs else "–",
            d.verdict or "not paired",
        ]
        for d in evidence.differences
    ]
    if rows:
        blocks.append(
            Table(
                ["compared with", "trial", "state", "paired images", "mean difference", "95 % interval", "winner"], rows
            )
        )
    blocks += evidence.notes
    if (tied := evidence.tied_sentence()) is not None:
        blocks.append(tied)
    if tests:
        blocks.append(
            "On test sets: the winner's prediction (`segsweep predict --masks`, plain) minus a starting point's on "
            "each image of the test set, paired by image name, with the same bootstrap."
        )
        rows = [
            [t.test_set, t.difference.other.start or "", t.difference.other.label, str(t.difference.n_pairs),
             f"{t.difference.mean:+.4f}" if t.difference.n_pairs else "–",
             f"{t.difference.low:+.4f} to {t.difference.high:+.4f}" if t.difference.n_pairs else "–",
             t.difference.verdict or "not paired"]
            for t in tests
        ]  # fmt: skip
        columns = ["test set", "starting point", "trial", "paired images", "mean difference", "95 % interval", "winner"]
        blocks.append(Table(columns, rows))
    return Section("The winner's evidence", blocks)


def _space_edges(edges: SpaceEdges, space_file: Path) -> Section:
    """The ranges the winner sat at the edge of, with the evidence, and the command that widens them."""
    return Section("Is the space too small?", list(edges.lines(space_file, written=True)))


def _runtime_sentence(trial: TrialResult) -> str | None:
    """How the trial's TensorFlow ran (mixed precision, threads), from its cv.json; None if unrecorded."""
    from trainer.results import read_cv_result

    cv = read_cv_result(trial.path) if trial.path is not None else None
    runtime = cv.runtime if cv is not None else {}
    if not runtime:
        return None

    def phrase(r: dict[str, Any]) -> str:
        on = precision_label(r)
        threads = r.get("threads") or "one per core"
        return f"mixed precision {on} ({r.get('mixed_precision_reason', '?')}), TensorFlow threads {threads}"

    text = f"The winner ran with {phrase(runtime)}"
    earlier = runtime.get("earlier")
    if isinstance(earlier, dict):
        text += f"; its folds before a resume ran with {phrase(earlier)}"
    return text + "."


def _table2(sweep: SweepResults, winner: TrialResult) -> Section:
    """One row per test set (its newest prediction), the variants it was scored with as columns."""
    scores = load_test_scores(sweep.path, winner.trial_id)
    newest: dict[str, str] = {}  # test set -> the out of its newest record (records come newest first)
    by_set: dict[str, dict[str, TestScore]] = {}
    for score in scores:
        if newest.setdefault(score.images, score.out) == score.out:
            by_set.setdefault(score.images, {}).setdefault(score.variant, score)
    variants = sorted({v for row in by_set.values() for v in row}, key=_variant_order)
    variants = variants or ["plain"]
    header = [""]
    for variant in variants:
        label = "" if variant == "plain" else f" ({_variant_label(variant)})"
        header += [f"Dice{label}", f"IoU{label}"]
    development = [
        f"Development set, {winner.n_folds}-fold cross-validation (mean ± std over folds)",
        pm(winner.mean["dice"], winner.std["dice"], winner.folds_done),
        pm(winner.mean["iou"], winner.std["iou"], winner.folds_done),
    ]
    rows = [development + ["–"] * (len(header) - len(development))]
    for images, row in by_set.items():
        first = next(iter(row.values()))
        n_images = ", ".join(sorted({str(s.n_images) for s in row.values()}, key=int))
        leak = (
            f"; WARNING: {first.n_overlap_with_training} of them were training images"
            if first.n_overlap_with_training
            else ""
        )
        cells = [f"Test set {images} ({n_images} images; mean ± std over images [95 % interval of the mean]{leak})"]
        for variant in variants:
            scored = row.get(variant)
            if scored is None:
                cells += ["–", "–"]  # this test set was not predicted with this variant
            else:
                cells += [
                    pm_interval(scored.dice_mean, scored.dice_std, scored.n_images),
                    pm_interval(scored.iou_mean, scored.iou_std, scored.n_images),
                ]
        rows.append(cells)
    blocks: list[Block] = [
        "The shape of the paper's Table 2 for the winner: one row per test set (its newest prediction), "
        "one Dice and IoU column pair per variant it was predicted with. Test scores are MedAI-style (per image "
        "at the original resolution, threshold 0.5, mean over images); the bracket is a 95 % t interval of the "
        "mean over the test images, so a small test set shows how little it pins down.",
        Table(header, rows),
    ]
    plain = [row["plain"] for row in by_set.values() if "plain" in row and not row["plain"].n_overlap_with_training]
    if plain:
        test = plain[0]
        blocks.append(
            generalisation_gap_sentence(
                winner.mean["dice"],
                winner.std["dice"],
                test.dice_mean,
                interval_95(test.dice_mean, test.dice_std, test.n_images),
                test.n_images,
            )
        )
    if not scores:
        blocks.append(
            f"No test set scored yet. `segsweep retrain {SweepFolder(sweep.path).cli_args} --out MODEL` then "
            "`segsweep predict MODEL --images DIR --masks DIR --out DIR` records its scores in the sweep "
            "folder, and the next report shows them here."
        )
    return Section("Table 2: development and test scores", blocks)


def _variant_order(variant: str) -> tuple[bool, bool, int, str]:
    """plain, flip TTA, then the post-processed variants: plain's before TTA's, fewer options first."""
    base, *options = variant.split("+")
    return bool(options), base != "plain", len(options), variant


def _variant_label(variant: str) -> str:
    """A metrics.json row name in words: ``plain``, ``tta``, or either with post-processing options
    (``tta+min-area+fill-holes``), so post-processed rows never read as the plain prediction."""
    base, *options = variant.split("+")
    text = "flip test-time augmentation" if base == "tta" else base
    return f"{text}, post-processed: {', '.join(options)}" if options else text


def generalisation_gap_sentence(
    cv_dice: float,
    cv_std: float,
    test_dice: float,
    test_interval: tuple[float, float] | None = None,
    n_test: int | None = None,
) -> str:
    """The winner's CV-to-test gap, flagged when larger than twice its fold standard deviation; the CV
    estimate is said to hold only with the test set's 95 % interval beside it (10 test images pin
    little down)."""
    gap = cv_dice - test_dice
    over = f" over {n_test} images" if n_test is not None else ""
    measured = f", 95 % interval {test_interval[0]:.4f} to {test_interval[1]:.4f}{over}" if test_interval else over
    text = (
        f"CV-to-test gap: cross-validation Dice {cv_dice:.4f} − test Dice {test_dice:.4f}{measured} = {gap:+.4f} "
        f"(the winner's fold std is {cv_std:.4f}). "
    )
    if abs(gap) > 2 * cv_std:
        return text + (
            "FLAG: the gap is larger than twice the fold std. A test score this far below the CV estimate "
            "points to selection overfit (the sweep chose the trial the folds favoured by chance) or a "
            "test set unlike the development set."
            if gap > 0
            else "FLAG: the gap is larger than twice the fold std, with the test set scoring higher: the folds "
            "underestimate (retraining on all development images helps), or the test set is easier."
        )
    if test_interval is None:
        return text + (
            "Within twice the fold std, but the test set gives no interval (one image), so it neither "
            "confirms nor refutes the cross-validation estimate."
        )
    low, high = test_interval
    if low <= cv_dice <= high:
        return text + (
            f"Within twice the fold std, and the cross-validation Dice lies inside the test set's 95 % interval "
            f"(±{(high - low) / 2:.4f}): the test set agrees with the cross-validation estimate to that precision."
        )
    return text + (
        "Within twice the fold std, but the cross-validation Dice lies outside the test set's 95 % interval: "
        "the test set does not confirm the cross-validation estimate."
    )


def best_so_far(sweep: SweepResults) -> list[tuple[float, float, str]]:
    """(seconds the sweep had run, best value of the sweep's objective so far, trial) at each new best.

    Only trials that completed all folds count (the winner rule), at their end times. The time axis
    is the sweep's running time (``SweepResults.running_seconds``: its trials' attempts), so the
    pauses of a stopped and resumed sweep are left out; on a curve over calendar time they would read
    as trials that bought nothing.
    """
    ended = []
    spans = sweep.running_spans()
    for trial in sweep.completed():
        finished = trial.end_time()
        if finished is not None:
            ended.append((sweep.running_seconds(finished, spans), trial.mean[OBJECTIVE.metric], trial.label))
    points: list[tuple[float, float, str]] = []
    for seconds, value, name in sorted(ended):
        if not points or OBJECTIVE.better(value, points[-1][1]):
            points.append((seconds, value, name))
    return points


def _figure(name: str, title: str, plot: Any, png: Callable[[], bytes] | None = None) -> Block:
    """A figure (interactive ``plot``, static ``png`` for report.md), or the sentence ``plot`` is when
    there is nothing worth drawing (reports._figures returns one for a single dot or line)."""
    if isinstance(plot, str):
        return plot
    picture = None
    if png is not None:
        try:
            picture = png()
        except (ValueError, RuntimeError) as exc:  # Optuna's matplotlib plots refuse some studies
            logger.info("static %s not drawn: %s", name, exc)
    return Figure(name, title, png=picture, plot=plot)


def _best_so_far_section(sweep: SweepResults) -> Section:
    from reports import _figures, _plots

    points = best_so_far(sweep)
    section = Section("Best so far over wall time")
    if not points:
        section.blocks.append("No trial has completed all folds with recorded times yet.")
        return section
    section.blocks += [
        f"The best {OBJECTIVE.display_name} among the trials completed so far, against the sweep's running time (trial "
        "attempts in the sweep folder; pauses between a stop and a resume left out). A curve still rising at "
        "the end says more trials would likely help; a long flat tail says the budget was enough for this "
        "space.",
        Table(
            ["minutes the sweep ran", "best mean Dice", "trial"],
            [[f"{seconds / 60:.1f}", f"{dice:.4f}", name] for seconds, dice, name in points],
        ),
        _figure(
            "best_so_far",
            f"Best {OBJECTIVE.display_name} so far over wall time",
            _figures.best_so_far(points),
            lambda: _plots.best_so_far(points),
        ),
    ]
    return section


def _leaderboard(sweep: SweepResults) -> Section:
    columns, rows, notes = leaderboard_table(sweep)
    return Section("Leaderboard", [*notes, Table(columns, rows)])


def _pretrained_label(trial: TrialResult | None) -> str:
    """What the best pretrained trial started from: ImageNet, or the weights file it named."""
    if trial is None:
        return "pretrained (ImageNet or a weights file)"
    weights = str(trial.config.get("weights", trial.params.get("weights", "imagenet"))).strip()
    return "ImageNet (pretrained)" if weights.lower() == "imagenet" else f"pretrained from {Path(weights).name}"


def _pretraining(sweep: SweepResults) -> Section:
    comparison = compare_pretraining(sweep)

    def cells(trial: TrialResult | None) -> list[str]:
        if trial is None:
            return ["none completed", "", ""]
        return [
            trial.label,
            pm(trial.mean["dice"], trial.std["dice"], trial.folds_done),
            pm(trial.mean["iou"], trial.std["iou"], trial.folds_done),
        ]

    overall = Table(
        ["encoder weights", "best trial", "Dice", "IoU"],
        [[_pretrained_label(comparison.best_pretrained), *cells(comparison.best_pretrained)],
         ["none (random initialisation)", *cells(comparison.best_untrained)]],
    )  # fmt: skip
    blocks: list[Block] = ["Best trial of each kind among the trials that completed all folds.", overall]
    if comparison.per_encoder:
        rows = []
        for encoder, (pre, untrained) in comparison.per_encoder.items():
            rows.append([
                encoder, pre.label, pm(pre.mean["dice"], pre.std["dice"], pre.folds_done),
                untrained.label, pm(untrained.mean["dice"], untrained.std["dice"], untrained.folds_done),
                f"{pre.mean['dice'] - untrained.mean['dice']:+.4f}",
            ])  # fmt: skip
        blocks += [
            "Side by side for each encoder that completed both (best trial of each):",
            Table(
                ["encoder", "pretrained trial", "Dice", "untrained trial", "Dice", "pretrained - untrained"],
                rows,
            ),
        ]
    else:
        blocks.append("No encoder completed both a pretrained and an untrained trial.")
    return Section("Pretrained against untrained", blocks)


def _load_study(sweep: SweepResults) -> tuple[Any | None, str | None]:
    """The sweep's Optuna study, or why there is none."""
    import optuna

    if not sweep.folder.optuna_db.is_file():
        return None, f"no Optuna storage at {sweep.folder.optuna_db}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=sweep.name, storage=sweep.optuna_storage_url)
    except KeyError:
        return None, f"{sweep.folder.optuna_db} holds no study named {sweep.name!r}"
    trials = study.get_trials(deepcopy=False)
    if not any(STUDY_REPEAT_ATTR in t.user_attrs for t in trials):
        return study, None
    # Proposals the searcher answered with an earlier trial's score (never trained, sweeps._optuna):
    # left out, so the importance and the plots count each trained configuration once.
    trained = optuna.create_study(study_name=sweep.name, direction=study.direction)
    trained.add_trials([t for t in trials if STUDY_REPEAT_ATTR not in t.user_attrs])
    if study.metric_names:  # the plots' axis name, as in the stored study
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trained.set_metric_names(study.metric_names)
    return trained, None


def _completed_in_study(study: Any) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


#: fANOVA's cost grows with trials x trees x leaves: Optuna's default forest (64 trees, depth 64) takes
#: ~14 s of a 1,000-trial report on one core. Beyond this many completed trials, half the trees and a
#: depth cap that barely binds (2^10 leaves for <= ~1,000 trials) give the same ranking in ~3 s.
FANOVA_FULL_FOREST_UP_TO = 300
FANOVA_LARGE_STUDY_TREES = 32
FANOVA_LARGE_STUDY_DEPTH = 10


def _fanova_evaluator(completed: int) -> Any:
    import optuna

    if completed <= FANOVA_FULL_FOREST_UP_TO:
        return optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.FanovaImportanceEvaluator(
        n_trees=FANOVA_LARGE_STUDY_TREES, max_depth=FANOVA_LARGE_STUDY_DEPTH, seed=0
    )


def _importance(study: Any | None, why_not: str | None) -> Section:
    section = Section("Parameter importance")
    if study is None:
        section.blocks.append(f"Not computed: {why_not}.")
        return section
    import optuna

    completed = _completed_in_study(study)
    if completed < 2:
        section.blocks.append(
            f"Not computed: parameter importance needs at least 2 completed trials in the Optuna study; "
            f"it has {completed}."
        )
        return section
    forest = (
        "Optuna's default forest"
        if completed <= FANOVA_FULL_FOREST_UP_TO
        else f"{FANOVA_LARGE_STUDY_TREES} trees of depth at most {FANOVA_LARGE_STUDY_DEPTH}"
    )
    try:
        importances = optuna.importance.get_param_importances(study, evaluator=_fanova_evaluator(completed))
    except (ValueError, RuntimeError) as exc:
        section.blocks.append(f"Not computed: Optuna could not evaluate importance here ({exc}).")
        return section
    section.blocks.append(
        f"fANOVA importance (Optuna's default evaluator, seed 0, {forest}) over the {completed} completed "
        "trials of the Optuna study, normalised to sum to 1. With few trials it is a rough guide, not a finding."
    )
    section.blocks.append(Table(["parameter", "importance"], [[p, f"{v:.3f}"] for p, v in importances.items()]))
    from reports import _figures

    section.blocks.append(_figure("importance", "Parameter importance (fANOVA)", _figures.importance(importances)))
    return section


def _figures(sweep: SweepResults, choice: WinnerChoice, study: Any | None, why_not: str | None) -> Section:
    """History, parallel coordinates, per-fold Dice and learning curves: interactive (from the sweep
    folder, pruned trials marked) in report.html; report.md keeps static pictures (Optuna's for the
    study's history and parallel coordinates, so none without an Optuna study)."""
    from reports import _figures, _plots

    usable_study = study is not None and _completed_in_study(study) >= 1
    blocks: list[Block] = []
    if not usable_study:
        blocks.append(
            "Static Optuna plots (report.md) not drawn: "
            + (f"{why_not}." if study is None else "the Optuna study has no completed trial.")
        )
    blocks.append(
        _figure(
            "optimisation_history",
            "Optimisation history: each trial's mean Dice (x: pruned, open: not finished, both at their finished "
            "folds) and the best so far",
            _figures.optimisation_history(sweep.trials),
            (lambda: _plots.optimisation_history(study)) if usable_study else None,
        )
    )
    blocks.append(
        _figure(
            "parallel_coordinate",
            "Parallel coordinates: parameters as trained, state and mean Dice of every scored trial",
            _figures.parallel_coordinates(sweep.trials),
            (lambda: _plots.parallel_coordinate(study)) if usable_study else None,
        )
    )
    top = sweep.completed()[:TOP_TRIALS]
    pruned = [t for t in rank_trials(sweep.trials) if t.state == "PRUNED" and t.folds][:TOP_TRIALS]
    blocks.append(
        _figure(
            "fold_dice",
            f"Per-fold Dice of the top {len(top)} trial(s)" + (f" and {len(pruned)} pruned" if pruned else ""),
            _figures.fold_dice([*top, *pruned]),
            (lambda: _plots.fold_boxplots(top, [t.label for t in top])) if top else None,
        )
    )
    if any(f.history for f in choice.winner.folds):
        blocks.append(
            _figure(
                "learning_curves",
                f"Learning curves of the winner's folds (trial {choice.winner.label})",
                _figures.learning_curves(choice.winner),
                lambda: _plots.learning_curves(choice.winner),
            )
        )
    return Section("Figures", blocks)


def _images(winner: TrialResult) -> Section:
    """The winner's best, median and worst out-of-fold images, and its score on every image."""
    from reports import _gallery

    scores = _gallery.ranked_scores(winner)
    section = Section("The winner on images")
    if not scores:
        section.blocks.append("No per-image scores: the winner's folds were recorded before they were kept.")
        return section
    picked = _gallery.best_median_worst(scores)
    drawn = _gallery.draw_picked(winner, picked)
    names = ", ".join(f"{p.role} {p.score.stem} (fold {p.score.fold}, Dice {p.score.dice:.4f})" for p in picked)
    if isinstance(drawn, bytes):
        section.blocks += [
            f"The winner's best, median and worst validation images, each predicted by the fold model that did "
            f"not train on it (out-of-fold): {names}.",
            _gallery.LEGEND,
            Figure("winner_images", f"Best, median and worst out-of-fold images of trial {winner.label}", png=drawn),
        ]
    else:
        section.blocks += [drawn, f"Best, median and worst: {names}."]
    section.blocks += [
        f"Out-of-fold Dice and IoU of each of the winner's {len(scores)} validation images (scored MedAI-style "
        "at the training size), worst first (in report.html, click a column to sort).",
        Table(
            ["image", "fold", "Dice", "IoU"],
            [[s.stem, str(s.fold), f"{s.dice:.4f}", f"{s.iou:.4f}"] for s in scores],
            sortable=True,
            csv_name=PER_IMAGE_CSV,
            csv=_gallery.per_image_csv(scores),
            md_rows=MD_PER_IMAGE_ROWS,
        ),
    ]
    return section


def _compute(sweep: SweepResults, winner: TrialResult, command: list[str] | None) -> Section:
    """Per-trial training time, the sweep's total compute, and what produced the numbers."""
    from reports import _provenance

    columns, rows, total = _provenance.run_times(sweep)
    provenance = _provenance.provenance(
        sweep, winner, command if command is not None else ["(Python API: reports.report.build_report)"]
    )
    return Section(
        "Run times and provenance",
        [total, Table(columns, rows, sortable=True), Table(["", ""], provenance)],
    )


def build_report(
    sweep: SweepResults,
    command: list[str] | None = None,
    out: Path | None = None,
    test_predictions: Sequence[Path] = (),
) -> Report:
    """Everything the report says, independent of its format; ``command`` is the command line that
    asked for it (shown in the provenance block), ``out`` the folder it will be written to (default
    the sweep's report folder), where the widened space goes; ``test_predictions`` are ``predict
    --masks`` folders of the winner and its starting points on test sets (reports.heldout pairs them)."""
    choice = pick_winner(sweep)
    evidence = winner_evidence(sweep)
    tests = test_set_evidence(sweep, choice.winner, test_predictions) if test_predictions else []
    edges = space_edges(sweep)
    space_file = (out if out is not None else sweep.folder.report_dir) / WIDENED_SPACE_FILE
    study, why_not = _load_study(sweep)
    sections = [
        _overview(sweep, choice),
        _winner(choice),
        *([_evidence(evidence, tests)] if evidence is not None else []),
        *([_space_edges(edges, space_file)] if edges is not None else []),
        _table2(sweep, choice.winner),
        _leaderboard(sweep),
        _pretraining(sweep),
        _importance(study, why_not),
        _best_so_far_section(sweep),
        _figures(sweep, choice, study, why_not),
        _images(choice.winner),
        _compute(sweep, choice.winner, command),
    ]
    best = best_configuration(sweep, choice, evidence)
    if best["evidence"] is not None:
        best["evidence"]["test_sets"] = [t.to_dict() for t in tests]
    best["space_edges"] = edges.to_dict(space_file) if edges is not None else None
    written = {WIDENED_SPACE_FILE: widened_space_yaml(edges)} if edges is not None and edges.widened_space else {}
    return Report(f"segsweep report: {sweep.name}", sections, best, written)


# --- rendering -------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, figures_folder: str = "figures") -> str:
    lines = [f"# {report.title}", ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
                lines.append("|" + "---|" * len(block.columns))
                shown = block.rows[: block.md_rows] if block.md_rows is not None else block.rows
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in shown]
                if len(shown) < len(block.rows):
                    lines.append(f"\nThe first {len(shown)} of {len(block.rows)} rows; report.html has them all.")
                if block.csv_name:
                    lines.append(f"\nAs CSV: [{block.csv_name}]({block.csv_name})")
            elif isinstance(block, Figure):
                if block.png is not None:
                    lines.append(f"![{block.title}]({figures_folder}/{block.name}.png)")
                else:
                    lines.append(f"*{block.title}: interactive figure in report.html.*")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 110em; padding: 0 1em; color: #222; }
p, h1, h2 { max-width: 75em; }  /* text at a readable measure; tables may use the width */
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.45em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
figcaption { font-style: italic; color: #555; }
code { background: #f4f4f4; padding: 0 0.2em; }
table.sortable th { cursor: pointer; }
.table-wrap { overflow-x: auto; }
td { white-space: nowrap; }
td.sentence { white-space: normal; min-width: 15em; }
table.sortable th::after { content: " \\2195"; color: #999; }
"""

#: Sorts a ``table.sortable`` by the clicked column (numbers as numbers), a second click reverses.
_SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var up = th.dataset.order !== "asc";
    table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = up ? "asc" : "desc";
    var key = function (row) {
      var text = row.cells[col].textContent.trim();
      return text !== "" && !isNaN(Number(text)) ? Number(text) : text;
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return up ? order : -order;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _inline(text: str) -> str:
    """Escape text and render `code` spans (the only markup the report's sentences use)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(report: Report) -> str:
    from reports._figures import figure_html

    plotly_inlined = False
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(report.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
    ]
    for section in report.sections:
        out.append(f"<section><h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                header = "".join(f"<th>{html.escape(c)}</th>" for c in block.columns)
                # Cells keep to one line (a "0.7078 ± 0.0296" split in three reads badly) but sentences (a
                # pruned trial's reason, a command), which wrap in a column wide enough to read; a table
                # still wider than the page scrolls in its own box.
                body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in block.rows)
                kind = ' class="sortable"' if block.sortable else ""
                out.append(
                    f'<div class="table-wrap"><table{kind}><thead><tr>{header}</tr></thead>'
                    f"<tbody>{body}</tbody></table></div>"
                )
                if block.csv_name and block.csv is not None:
                    # A data: link, so the download works from the HTML file alone (also written beside it).
                    data = base64.b64encode(block.csv).decode("ascii")
                    out.append(
                        f'<p><a download="{html.escape(block.csv_name)}" href="data:text/csv;base64,{data}">'
                        f"Download {html.escape(block.csv_name)}</a> (also written beside this report)</p>"
                    )
            elif isinstance(block, Figure) and block.plot is not None:
                out.append(f'<figure id="{block.name}">')
                out.append(figure_html(block.plot, f"plot-{block.name}", with_plotly_js=not plotly_inlined))
                out.append(f"<figcaption>{html.escape(block.title)}</figcaption></figure>")
                plotly_inlined = True
            elif isinstance(block, Figure) and block.png is not None:
                data = base64.b64encode(block.png).decode("ascii")
                out.append(
                    f'<figure id="{block.name}"><img alt="{html.escape(block.title)}" '
                    f'src="data:image/png;base64,{data}"><figcaption>{html.escape(block.title)}</figcaption></figure>'
                )
            elif isinstance(block, str):
                out.append(f"<p>{_inline(block)}</p>")
        out.append("</section>")
    if any(isinstance(b, Table) and b.sortable for s in report.sections for b in s.blocks):
        out.append(f"<script>{_SORT_JS}</script>")
    out.append("</body></html>")
    return "\n".join(out)


#: A cell longer than this is a sentence: it may wrap (report.html).
_SENTENCE_CHARS = 40


def _html_cell(text: str) -> str:
    kind = ' class="sentence"' if len(text) > _SENTENCE_CHARS else ""
    return f"<td{kind}>{html.escape(text)}</td>"


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise SegsweepError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; got {text!r}")
    return formats


def write_report(report: Report, out: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write the chosen formats into ``out``; return the files written.

    Each file is rendered in memory, then written through a temporary file and a rename: a full disk
    (one DiskFullError line) or a crash leaves the previous file or none, never a truncated one.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SegsweepError(f"cannot create the report folder {out}: {exc.strerror}; pass a writable --out") from None
    files: dict[Path, bytes] = {}
    if "html" in formats:
        files[out / "report.html"] = render_html(report).encode("utf-8")
    if "md" in formats:
        for section in report.sections:
            for block in section.blocks:
                if isinstance(block, Figure) and block.png is not None:
                    files[out / "figures" / f"{block.name}.png"] = block.png
        files[out / "report.md"] = render_markdown(report).encode("utf-8")
    files.update({out / name: text.encode("utf-8") for name, text in report.files.items()})
    if "html" in formats or "md" in formats:
        for section in report.sections:
            for block in section.blocks:
                if isinstance(block, Table) and block.csv_name and block.csv is not None:
                    files[out / block.csv_name] = block.csv
    written = [path for path in files if path.suffix != ".png"]
    with disk_full_as_error(out, sum(map(len, files.values())) + (1 << 16)):
        for path, content in files.items():
            write_bytes_atomic(path, content)
        if "json" in formats:
            write_json_atomic(out / BEST_FILE, report.best)
            written.append(out / BEST_FILE)
    return written


def run_report_command(
    name: str, storage: Path | None, out: Path | None, formats: str, test_predictions: Sequence[Path] = ()
) -> int:
    chosen = parse_formats(formats)
    sweep = load_sweep(storage, name)
    for line in sweep.warnings:
        print(f"segsweep: warning: {line}", file=sys.stderr)
    command = ["segsweep", "report", name, *(["--storage", str(storage)] if storage is not None else []),
               *(["--out", str(out)] if out is not None else []), "--format", formats,
               *[arg for path in test_predictions for arg in ("--test-prediction", str(path))]]  # fmt: skip
    folder = out if out is not None else sweep.folder.report_dir
    report = build_report(sweep, command, folder, test_predictions)
    for path in write_report(report, folder, chosen):
        print(f"wrote {path}")
    best = report.best
    print(
        f"winner: trial {best['trial_id']} ({encoder_of_best(best)}), mean CV Dice "
        f"{pm(best['cv']['mean']['dice'], best['cv']['std']['dice'], len(best['cv']['folds']))}"
    )
    return 0


def encoder_of_best(best: dict[str, Any]) -> str:
    config = best["config"]
    return f"{config['encoder']}, weights {config['weights']}"


__all__ = [
    "FORMATS",
    "Report",
    "best_configuration",
    "build_report",
    "data_path",
    "encoder_of",
    "is_pretrained",
    "render_html",
    "render_markdown",
    "run_report_command",
    "write_report",
]
