"""K-fold cross-validation of one configuration: the worker each sweep trial runs.

Each fold's result is written the moment the fold ends (``folds/fold_NN.json``, then ``cv.json``),
so rerunning into the same output folder resumes at the first unfinished fold. Imports nothing
from Ray: the sweep adapts it through a Reporter.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segsweep.base import version
from segsweep.base.errors import ConfigError, one_line_error
from segsweep.base.files import ensure_writable_folder, write_json_atomic
from trainer.config import SEED_MAX, CVConfig
from trainer.data import PreparedData, prepare_dataset, read_split
from trainer.reporter import FAILED, PRUNED, FoldPreview, MultiReporter, Reporter, StoppedEarly
from trainer.results import (
    CHECKPOINTS_DIR,
    CV_FILE,
    CVResult,
    FoldResult,
    fold_checkpoint_path,
    fold_model_dir,
    fold_path,
    read_cv_result,
    read_fold_files,
)

if TYPE_CHECKING:
    from trainer.training import TrainedModel

#: Validation images shown per fold in tracker previews.
PREVIEW_IMAGES = 4


def fold_seed(seed: int, number: int) -> int:
    """Fold ``number``'s seed (shuffling, augmentation, Keras): ``seed * 1000 + number``, wrapped into the
    32 bits NumPy's global seed takes, so the largest --seed trains too (unchanged below seed 4,294,967)."""
    return (seed * 1000 + number) % (SEED_MAX + 1)


def make_folds(
    stems: tuple[str, ...] | list[str], config: CVConfig, val_stems: list[str] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, validation rows) per fold: shuffled seeded K-fold, or one given split."""
    n = len(stems)
    if val_stems is not None:
        wanted = set(val_stems)
        val = np.array([i for i, s in enumerate(stems) if s in wanted], dtype=np.int64)
        if len(val) == 0:
            raise ConfigError(f"the validation split {config.val_split!r} names none of the {n} images in use")
        train = np.setdiff1d(np.arange(n), val)
        return [(train, val)]
    from sklearn.model_selection import KFold

    if config.folds > n:
        raise ConfigError(
            f"{config.folds} folds need at least {config.folds} images, but there are {n}; "
            "use fewer --folds or more images"
        )
    splitter = KFold(n_splits=config.folds, shuffle=True, random_state=config.seed)
    return [(train, val) for train, val in splitter.split(np.arange(n))]


def check_output_dir(out_dir: Path) -> None:
    """Fail early (not after an hour of training) when the output folder cannot be written."""
    ensure_writable_folder(out_dir, "output folder", "choose another --out")


def check_weights(config: CVConfig) -> None:
    """Fail early when the encoder's weights (ImageNet or a file) cannot be had: before the data is
    prepared (seconds to minutes) and before the output folder is created (no empty --out left)."""
    if config.pretrained:
        from trainer.weights import resolve_weights

        resolve_weights(config.encoder, config.weights)


def _save_fold_model(
    out_dir: Path,
    model: object,
    config: CVConfig,
    result: FoldResult,
    data_info: Mapping[str, object],
    n_folds: int,
    train_stems: list[str],
    runtime: Mapping[str, object],
) -> None:
    """The fold's model as a bundle (trainer.bundle.s format), loadable like a retrained one."""
    from trainer.bundle import bundle_meta, write_bundle

    meta = bundle_meta(
        config,
        data={**data_info, "n_images": result.n_train},
        source={
            "cv": str(out_dir.resolve()), "fold": result.fold, "n_folds": n_folds,
            "fold_scores": {"dice": result.dice, "iou": result.iou}, "val_stems": len(result.val_stems),
        },
        seconds=result.seconds,
        runtime=dict(runtime),  # the TensorFlow settings and versions it trained with, as retrain records
    )  # fmt: skip
    target = fold_model_dir(out_dir, result.fold)
    if target.exists():
        import shutil

        shutil.rmtree(target)  # a model of an earlier, unfinished attempt at this fold
    write_bundle(target, model, meta, history=result.history, train_stems=train_stems)


def load_finished_folds(out_dir: Path, config: CVConfig, data_key: str) -> list[FoldResult]:
    """Folds already written by an earlier run of the same configuration on the same data."""
    cv_path = out_dir / CV_FILE
    if not cv_path.is_file():
        return []
    try:
        previous = json.loads(cv_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{cv_path} is damaged ({exc}); it cannot tell which configuration its folds belong to: "
            "choose another --out, or delete that folder to start over"
        ) from None
    if (
        not isinstance(previous, dict)
        or previous.get("config") != config.to_dict()
        or (previous.get("data") or {}).get("cache_key") != data_key
    ):
        raise ConfigError(
            f"{out_dir} holds a cross-validation of another configuration or data set; "
            "choose another --out, or delete that folder to start over"
        )
    finished, damaged = read_fold_files(out_dir)
    if damaged:  # a fold file cut short: cv.json's copy of that fold counts, else the fold runs again
        have = {f.fold for f in finished}
        recorded = CVResult.from_dict(previous).folds
        finished = sorted([*finished, *(f for f in recorded if f.fold not in have)], key=lambda f: f.fold)
    return finished


def run_cv(
    config: CVConfig,
    data: PreparedData,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    *,
    val_stems: list[str] | None = None,
    data_source: str | None = None,
    verbose: bool = False,
    keep_models: bool = False,
) -> CVResult:
    """Cross-validate ``config`` on ``data``, writing results into ``out_dir`` as folds finish.

    ``keep_models`` saves each fold's trained model as a bundle in ``out_dir/models/fold_NN/``
    (before the fold's result, so a finished fold always has its model).
    """
    config.validate()
    out_dir = Path(out_dir)
    folds = _checked_folds(config, data, val_stems)
    check_weights(config)  # missing weights fail now, not inside fold 1
    check_output_dir(out_dir)
    from trainer.models import precision_for_run, runtime_settings

    runtime = precision_for_run(config).to_dict()
    reporter = reporter or Reporter()
    data_info = _data_record(data, data_source)
    completed = load_finished_folds(out_dir, config, data.key)
    runtime = _runtime_with_earlier_folds(out_dir, completed, runtime)
    if verbose:
        reporter = MultiReporter([_ConsoleReporter(len(folds), config.epochs), reporter])
        print(f"runtime: {runtime_settings().describe()}", flush=True)
    done = {f.fold for f in completed}
    _tidy_finished_folds(out_dir, done, keep_models)
    previous_seconds = sum(f.seconds for f in completed)
    started = time.perf_counter()

    def snapshot(complete: bool) -> CVResult:
        result = CVResult(
            config=config.to_dict(),
            data=data_info,
            n_folds=len(folds),
            folds=list(completed),
            seconds=previous_seconds + time.perf_counter() - started,
            complete=complete,
            version=version(),
            runtime=runtime,
        )
        write_json_atomic(out_dir / CV_FILE, result.to_dict())
        return result

    try:
        reporter.on_cv_start(config, len(folds), out_dir)
        snapshot(complete=len(done) == len(folds))
        for number, (train_rows, val_rows) in enumerate(folds, start=1):
            if number in done:
                continue
            result, preview, trained = _run_fold(config, data, number, train_rows, val_rows, reporter, out_dir)
            if keep_models:
                train_stems = [data.stems[i] for i in np.sort(train_rows)]
                _save_fold_model(out_dir, trained.model, config, result, data_info, len(folds), train_stems, runtime)
            write_json_atomic(fold_path(out_dir, number), result.to_dict())
            trained.checkpoint.discard()
            completed.append(result)
            completed.sort(key=lambda f: f.fold)
            snapshot(complete=len(completed) == len(folds))
            reporter.on_fold_end(result, list(completed), preview)
        final = snapshot(complete=True)
        with contextlib.suppress(OSError):  # every fold's checkpoint has served; keep the folder tidy
            (out_dir / CHECKPOINTS_DIR).rmdir()
        reporter.on_cv_end(final)
        return final
    except StoppedEarly as stop:
        reporter.on_cv_incomplete(PRUNED, stop.reason)
        raise
    except Exception as exc:
        reporter.on_cv_incomplete(FAILED, one_line_error(exc))
        raise
    finally:
        reporter.close()  # runs still open here were interrupted (Ctrl-C, SystemExit)


def _checked_folds(
    config: CVConfig, data: PreparedData, val_stems: list[str] | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The folds of ``data``, refused before any training when the data or a fold cannot serve ``config``."""
    if data.image_size != config.image_size:
        raise ConfigError(f"data prepared at {data.image_size}px but the configuration asks {config.image_size}px")
    folds = make_folds(data.stems, config, val_stems)
    smallest_train = min(len(train) for train, _ in folds)
    if config.batch_size > smallest_train:
        raise ConfigError(
            f"batch size {config.batch_size} is larger than a training fold ({smallest_train} images with "
            f"{len(data)} pairs in {len(folds)} folds); use --batch-size {smallest_train} or less, or more images"
        )
    return folds


def _data_record(data: PreparedData, data_source: str | None) -> dict[str, object]:
    """What cv.json and kept fold models record of the data: where, how many pairs, its digest, its quality."""
    return {
        "path": data_source,
        "n_pairs": len(data),
        "image_size": data.image_size,
        "cache_key": data.key,
        "quality": data.quality(),
    }


def _runtime_with_earlier_folds(
    out_dir: Path, completed: list[FoldResult], runtime: dict[str, object]
) -> dict[str, object]:
    """This run's runtime record; with what the earlier run of ``out_dir`` (its finished folds, or the
    fold it left mid-way) ran with beside it when their mixed precision differs (said on standard error)."""
    from trainer.models import follow_recorded_precision, precision_label, recorded_policy

    previous = read_cv_result(out_dir) if (out_dir / CV_FILE).is_file() else None
    if previous is None or not previous.runtime or not (completed or _has_checkpoint(out_dir)):
        return runtime  # nothing trained before: this run's own settings stand
    # Under auto the remaining folds keep the finished folds' precision (auto may resolve otherwise on
    # this machine or version); only an explicit --mixed-precision mixes two in one run.
    runtime = follow_recorded_precision(previous.runtime).to_dict()
    if recorded_policy(previous.runtime) == recorded_policy(runtime):
        return runtime
    earlier = f"{len(completed)} finished fold(s)" if completed else "the interrupted fold"
    print(
        f"segsweep: warning: {earlier} in {out_dir} ran with mixed precision "
        f"{precision_label(previous.runtime)}; the remaining folds run with it {precision_label(runtime)} "
        "(cv.json records both)",
        file=sys.stderr,
    )
    return {**runtime, "earlier": previous.runtime}


def _has_checkpoint(out_dir: Path) -> bool:
    """Whether an earlier run left a fold's epoch checkpoint in ``out_dir`` (a fold to resume mid-way)."""
    folder = fold_checkpoint_path(out_dir, 1).parent
    return folder.is_dir() and any(folder.glob("fold_*.npz"))


def _tidy_finished_folds(out_dir: Path, done: set[int], keep_models: bool) -> None:
    """Remove the checkpoints of finished folds; warn when --keep-models finds folds finished without it."""
    for number in done:  # a run stopped between writing a fold and removing its checkpoint
        fold_checkpoint_path(out_dir, number).unlink(missing_ok=True)
    if keep_models:
        missing = sorted(n for n in done if not (fold_model_dir(out_dir, n) / "weights.h5").is_file())
        if missing:
            print(
                f"segsweep: warning: folds {', '.join(map(str, missing))} in {out_dir} finished without "
                "--keep-models, so their models are not kept; delete their folds/fold_NN.json to train them again",
                file=sys.stderr,
            )


def _run_fold(
    config: CVConfig,
    data: PreparedData,
    number: int,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    reporter: Reporter,
    out_dir: Path,
) -> tuple[FoldResult, FoldPreview, TrainedModel]:
    """Train fold ``number`` (resuming its checkpoint in ``out_dir``) and score it on its validation rows."""
    from trainer.metrics import medai_scores
    from trainer.models import float32_model
    from trainer.training import predict_probabilities, train_one_model

    reporter.on_fold_start(number, len(train_rows), len(val_rows))
    trained = train_one_model(
        config,
        data,
        train_rows,
        val_rows,
        fold=number,
        seed=fold_seed(config.seed, number),
        checkpoint_path=fold_checkpoint_path(out_dir, number),
        on_epoch=lambda epoch, metrics: reporter.on_epoch(number, epoch, metrics),
        on_resumed=lambda history: reporter.on_fold_resumed(number, history),
        on_batch=lambda epoch, batch, batches, speed: reporter.on_batch(number, epoch, batch, batches, speed),
    )
    val_images = np.asarray(data.images[np.sort(val_rows)])
    val_masks = np.asarray(data.masks[np.sort(val_rows)])[..., 0]
    scorer = float32_model(trained.model, config)  # what the fold's saved model predicts
    probabilities = predict_probabilities(scorer, val_images, config, batch_size=config.batch_size)
    scores = medai_scores(val_masks, probabilities)
    stems = [data.stems[i] for i in np.sort(val_rows)]
    result = FoldResult(
        fold=number,
        n_train=len(train_rows),
        n_val=len(val_rows),
        dice=float(scores["mean_dice"]),
        iou=float(scores["mean_iou"]),
        epochs_run=len(trained.history),
        lr_drops=trained.lr_drops,
        history=trained.history,
        seconds=trained.checkpoint.seconds(),
        val_stems=stems,
        val_dice=[float(v) for v in scores["dice"]],
        val_iou=[float(v) for v in scores["iou"]],
    )
    k = min(PREVIEW_IMAGES, len(stems))
    preview = FoldPreview(tuple(stems[:k]), val_images[:k], val_masks[:k], probabilities[:k])
    return result, preview, trained


class _ConsoleReporter(Reporter):
    """One line per epoch and a per-fold table with mean ± std, on standard output."""

    def __init__(self, n_folds: int, epochs: int) -> None:
        self.n_folds = n_folds
        self.epochs = epochs

    def on_cv_start(self, config: CVConfig, n_folds: int, out_dir: Path) -> None:
        print(
            f"cross-validating {config.arch}/{config.encoder} (weights {config.weights}) at {config.image_size}px, "
            f"{n_folds} folds x {config.epochs} epochs, batch {config.batch_size}, lr {config.lr:g}, "
            f"loss {config.loss} -> {out_dir}",
            flush=True,
        )

    def on_fold_start(self, fold: int, n_train: int, n_val: int) -> None:
        print(f"fold {fold}/{self.n_folds}: {n_train} training, {n_val} validation images", flush=True)

    def on_epoch(self, fold: int, epoch: int, metrics: Mapping[str, float]) -> None:
        print(
            f"  fold {fold}/{self.n_folds} epoch {epoch:>2}/{self.epochs}  loss {metrics['loss']:.4f}  "
            f"val_loss {metrics['val_loss']:.4f}  val_iou {metrics['val_iou']:.4f}  lr {metrics['lr']:.1e}  "
            f"{metrics.get('images_per_second', float('nan')):.1f} img/s  {metrics.get('seconds', 0.0):.1f} s",
            flush=True,
        )

    def on_fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None:
        print(
            f"  fold {result.fold}: Dice {result.dice:.4f}  IoU {result.iou:.4f}  ({result.seconds:.0f} s)", flush=True
        )

    def on_cv_end(self, result: CVResult) -> None:
        print(format_fold_table(result), flush=True)


def format_fold_table(result: CVResult) -> str:
    lines = [
        f"{'fold':>4}  {'train':>5}  {'val':>4}  {'epochs':>6}  {'dice':>7}  {'iou':>7}  lr drops",
    ]
    for f in result.folds:
        drops = ",".join(map(str, f.lr_drops)) or "-"
        lines.append(
            f"{f.fold:>4}  {f.n_train:>5}  {f.n_val:>4}  {f.epochs_run:>6}  {f.dice:7.4f}  {f.iou:7.4f}  {drops}"
        )
    lines.append(
        f"mean ± std over {len(result.folds)} folds: Dice {result.mean['dice']:.4f} ± {result.std['dice']:.4f}  "
        f"IoU {result.mean['iou']:.4f} ± {result.std['iou']:.4f}  ({result.seconds:.0f} s)"
    )
    return "\n".join(lines)


def cross_validate(
    config: CVConfig,
    data: str | Path,
    out: str | Path,
    *,
    tracker: str | None = None,
    verbose: bool = False,
    skip_bad: bool = False,
    keep_models: bool = False,
) -> CVResult:
    """Cross-validate ``config`` on the data set folder ``data`` into the new folder ``out`` (``segsweep.cv``).

    What ``segsweep cv`` runs: prepares the data (cached), opens the trackers (``tracker`` None: MLflow
    in ``out``, plus Neptune when NEPTUNE_PROJECT is set; "none": no tracker) and writes cv.json as folds
    finish. Rerunning it on the same ``out`` goes on after the last finished fold and epoch.
    """
    config.validate()
    data_dir, out_dir = Path(data), Path(out)
    check_weights(config)
    check_output_dir(out_dir)
    started = time.perf_counter()
    prepared = prepare_dataset(
        data_dir, config.image_size, split=config.dev_split, limit=config.limit, skip_bad=skip_bad
    )
    if verbose:
        print(
            f"data: {len(prepared)} pairs from {data_dir} at {prepared.image_size}px "
            f"(ready in {time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    val_stems = read_split(data_dir, config.val_split) if config.val_split else None
    from trainer.tracking import open_trackers

    reporter = open_trackers(tracker, root=out_dir, run_name=out_dir.name, params=config.to_dict())
    return run_cv(
        config,
        prepared,
        out_dir,
        reporter,
        val_stems=val_stems,
        data_source=str(data_dir.resolve()),
        verbose=verbose,
        keep_models=keep_models,
    )


def run_cv_command(
    config: CVConfig,
    data_dir: Path,
    out_dir: Path,
    *,
    tracker: str | None = None,
    verbose: bool = True,
    skip_bad: bool = False,
    keep_models: bool = False,
    threads: int | None = None,
    mixed_precision: str | None = None,
    recorded_runtime: Mapping[str, object] | None = None,
    recorded_source: str | None = None,
) -> int:
    """`segsweep cv`: prepare the data (cached), cross-validate, print the table, write cv.json.

    ``threads`` and ``mixed_precision`` (auto/on/bf16/off) fall back to SEGSWEEP_THREADS and
    SEGSWEEP_MIXED_PRECISION, then to TensorFlow's thread default and auto. ``recorded_runtime``
    (the ``runtime`` of the ``--config`` file ``recorded_source``): warn when this run's differs.
    """
    config.validate()
    check_weights(config)
    check_output_dir(out_dir)
    from trainer.models import configure_tensorflow, runtime_differences

    settings = configure_tensorflow(threads, mixed_precision)
    differences = runtime_differences(recorded_runtime, settings) if recorded_runtime else []
    if differences:
        print(
            f"segsweep: warning: this run's {'; '.join(differences)} differ from what {recorded_source} records: "
            "losses and Dice may differ from the recorded ones (on a CPU a fold repeats exactly only with "
            "the same threads and versions)",
            file=sys.stderr,
        )
    result = cross_validate(
        config, data_dir, out_dir, tracker=tracker, verbose=verbose, skip_bad=skip_bad, keep_models=keep_models
    )
    if not verbose:
        print(format_fold_table(result))
    print(f"wrote {out_dir / CV_FILE}", file=sys.stderr)
    return 0
