"""``segsweep retrain``: the sweep's winner trained on all development images, saved as a bundle.

Retraining has no validation set, so the learning rate cannot follow the plateau rule the folds
used. It imitates their schedule instead (:func:`imitated_schedule`).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from reports.leaderboard import pick_winner
from reports.report import data_path
from segsweep.base.errors import ConfigError, DataError, SegsweepError
from segsweep.base.files import ensure_new_folder, writing_lock
from sweeps import Sweep
from sweeps.folder import COMPLETE, SweepRecord, SweepResults, TrialResult, load_sweep
from trainer.bundle import (
    CARD_FILE,
    CONFIG_FILE,
    SCHEDULE_FILE,
    bundle_meta,
    retrain_checkpoint_path,
    write_bundle,
)
from trainer.checkpoint import RETRAIN_FOLD
from trainer.config import CVConfig
from trainer.models import precision_label
from trainer.results import CV_FILE, EpochRecord, read_cv_result

SCHEDULE_RULE = (
    "The learning rate starts at the trial's lr and is cut by lr_factor (10x) at the end of each listed "
    "epoch. The k-th cut is at the median, over all cross-validation folds, of the epoch of each fold's "
    "k-th cut, a fold without a k-th cut counting as never cutting (the folds cut when validation IoU had "
    "not improved for lr_patience epochs): a cut most folds did not make is not made. A median between two "
    "epochs is rounded up, a cut that would not come after the previous one is moved one epoch after it, "
    "and cuts at or after the last epoch are dropped (they would change nothing)."
)


def imitated_schedule(fold_drops: Sequence[Sequence[int]], epochs: int) -> list[int]:
    """The drop epochs for retraining, from each fold's drop epochs, by :data:`SCHEDULE_RULE`."""
    drops = [sorted(d) for d in fold_drops]
    schedule: list[int] = []
    for k in range(max((len(d) for d in drops), default=0)):
        # One fold of ten cutting once must not cut the final model's learning rate: the median
        # counts the folds that never made a k-th cut as cutting after every epoch.
        median = statistics.median(d[k] if len(d) > k else math.inf for d in drops)
        if not math.isfinite(median):
            break
        epoch = math.floor(median + 0.5)
        if schedule:
            epoch = max(epoch, schedule[-1] + 1)
        if epoch >= epochs:
            break
        schedule.append(epoch)
    return schedule


def choose_trial(sweep: SweepResults, trial_id: str | None) -> TrialResult:
    if trial_id is None:
        return pick_winner(sweep).winner
    for trial in sweep.trials:
        if trial.trial_id == trial_id or (trial.number is not None and str(trial.number) == trial_id):
            if not trial.folds:
                raise SegsweepError(f"trial {trial_id} of sweep {sweep.name!r} finished no fold; choose another")
            return trial
    ids = ", ".join(t.trial_id for t in sweep.trials)
    raise SegsweepError(f"sweep {sweep.name!r} has no trial {trial_id!r}; its trials: {ids}")


def _model_card(meta: Mapping[str, Any], history: Sequence[EpochRecord], schedule: Mapping[str, Any]) -> str:
    config = meta["config"]
    source = meta.get("source", {})
    data = meta.get("data", {})
    cv = source.get("cv", {})
    lines = [
        f"# Model card: {config['arch']} / {config['encoder']} from sweep {source.get('sweep', '?')}",
        "",
        f"Segmentation model (binary, polyp vs background) retrained by segsweep {meta['segsweep_version']} "
        f"(bundle format {meta['bundle_format']}) on {meta['created']}.",
        "",
        "## Origin",
        "",
        f"- Sweep: `{source.get('sweep')}` ({source.get('sweep_path')}), trial {source.get('trial')}",
        f"- Chosen as: {source.get('chosen_as')}",
        f"- Parameters: {', '.join(f'{k}={v}' for k, v in source.get('params', {}).items())}",
    ]
    if cv:
        done = cv.get("folds_done", cv["n_folds"])
        folds = (
            f"{cv['n_folds']} folds" if done == cv["n_folds"]
            else f"only {done} of its {cv['n_folds']} folds finished, trial {cv.get('state', '?')}: not comparable "
            "with complete cross-validations"
        )  # fmt: skip
        lines.append(
            f"- Cross-validation of this configuration ({folds}, development set): "
            f"Dice {cv['mean']['dice']:.4f} ± {cv['std']['dice']:.4f}, IoU {cv['mean']['iou']:.4f} ± "
            f"{cv['std']['iou']:.4f} (mean ± std over folds). These are estimates for this configuration; "
            "the bundle's weights are a new training run on all development images."
        )
    lines += [
        "",
        "## Training data",
        "",
        f"- Data set: {data.get('path')} ({data.get('n_images')} development images"
        + (f", split {config.get('dev_split')}" if config.get("dev_split") else "")
        + (f", first {config.get('limit')} pairs" if config.get("limit") else "")
        + f") at {config['image_size']}x{config['image_size']} px",
        "",
        "## Training",
        "",
        f"- {config['arch']} with encoder {config['encoder']}, encoder weights at start: {config['weights']}",
        f"- Loss {config['loss']}, Adam, lr {config['lr']:g}, batch size {config['batch_size']}, "
        f"{config['epochs']} epochs, augmentation {'on' if config['augment'] else 'off'}, "
        f"seed {config['seed']}"
        + (
            f" (the trial's was {source['trial_seed']}: retrained with --seed)"
            if source.get("trial_seed", config["seed"]) != config["seed"]
            else ""
        ),
        f"- Learning-rate cuts after epochs: {schedule['drop_epochs'] or 'none'}",
        f"- Rule: {schedule['rule']}",
        f"- Cuts of the cross-validation folds: {schedule['fold_drops']}",
    ]
    runtime = meta.get("runtime")
    if runtime:
        lines.append(
            f"- Ran with mixed precision {precision_label(runtime)} "
            f"({runtime['mixed_precision_reason']}), TensorFlow threads {runtime['threads'] or 'one per core'}"
        )
    if history:
        lines.append(f"- Final training loss {history[-1].loss:.4f} (epoch {history[-1].epoch})")
    lines += [
        "",
        "## Use",
        "",
        f"Input: {meta['preprocessing']['input']}, through {meta['preprocessing']['function']}. "
        f"Output: {meta['preprocessing']['output']}.",
        "",
        "```",
        "segsweep predict THIS_FOLDER --images DIR [--masks DIR] --out DIR [--tta]",
        "segsweep export THIS_FOLDER --format savedmodel|onnx --out DIR   # serves without segsweep",
        "```",
        "",
        "```python",
        "from trainer.bundle import load_bundle",
        "bundle = load_bundle('THIS_FOLDER')",
        "model = bundle.load_model()  # rebuilds the architecture, then loads weights.h5",
        "```",
        "",
        "## Limits",
        "",
        "- Trained and cross-validated on one data set; scores elsewhere (other centres, devices) are unknown.",
        "- No validation set during retraining: the schedule imitates the folds' instead of reacting.",
        "",
    ]
    return "\n".join(lines)


def retrain(
    sweep: SweepResults | Sweep,
    out: str | Path,
    *,
    trial_id: str | None = None,
    seed: int | None = None,
    verbose: bool = True,
) -> Path:
    """Train the winner (or ``trial_id``) on every development image; write the model bundle at ``out``.

    ``seed`` replaces the trial's seed (the bundle's configuration says the one it trained with, its
    source the trial's): two retrains of one configuration tell how much a test score owes to the draw.

    ``out`` is locked from before training to the bundle's rename: a second retrain into it stops at
    once ("being written by pid N"), not in write_bundle after training; a killed one's staging
    folder is removed.
    """
    with writing_lock(Path(out)):
        return _retrain_holding_lock(sweep, out, trial_id=trial_id, seed=seed, verbose=verbose)


def _retrain_holding_lock(
    sweep: SweepResults | Sweep, out: str | Path, *, trial_id: str | None, seed: int | None, verbose: bool
) -> Path:
    if isinstance(sweep, Sweep):
        sweep = sweep.results()
    out = Path(out)

    from trainer.data import prepare_dataset
    from trainer.models import precision_for_run, runtime_settings
    from trainer.training import train_one_model

    trial = choose_trial(sweep, trial_id)
    try:
        config = CVConfig.from_dict(trial.config, source=f"trial {trial.trial_id} configuration")
        config.validate()
    except ConfigError as exc:
        raise SegsweepError(f"cannot retrain trial {trial.trial_id}: {exc}") from None
    trial_seed = config.seed
    if seed is not None:
        config = replace(config, seed=seed)
    root = data_path(sweep, trial)
    if root is None:
        raise DataError(f"{sweep.folder.spec_file} does not say which data set the sweep ran on (no 'data')")
    if not Path(root).is_dir():
        raise DataError(f"the sweep's data set {root} is not there; retrain where the sweep's data is")
    ensure_new_folder(out, "model bundle")

    # The pairs the sweep left out with --skip-bad stay out of the final model too.
    skip_bad = sweep.spec.skip_bad
    data = prepare_dataset(root, config.image_size, split=config.dev_split, limit=config.limit, skip_bad=skip_bad)
    _check_same_data(trial, Path(root), data.key, len(data))
    fold_drops = [list(f.lr_drops) for f in trial.folds]
    drop_epochs = imitated_schedule(fold_drops, config.epochs)
    precision_for_run(config)
    _keep_float32_of_the_folds(trial)
    if verbose:
        print(
            f"retraining trial {trial.label} ({config.encoder}, weights {config.weights}) on {len(data)} "
            f"development images at {config.image_size}px for {config.epochs} epochs; "
            f"learning rate cut after epochs {drop_epochs or 'none'}; {runtime_settings().describe()}",
            flush=True,
        )

    def on_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
        if verbose:
            print(
                f"epoch {epoch}/{config.epochs}: loss {metrics['loss']:.4f}, lr {metrics['lr']:.2g}, "
                f"{metrics.get('images_per_second', float('nan')):.1f} images/s",
                flush=True,
            )

    # Interrupted (Ctrl-C, SIGTERM, a time limit), the same command resumes after the last epoch.
    trained = train_one_model(
        config,
        data,
        np.arange(len(data)),
        fold=RETRAIN_FOLD,
        seed=config.seed,
        checkpoint_path=retrain_checkpoint_path(out),
        lr_drop_epochs=drop_epochs,
        on_epoch=on_epoch,
    )
    history, seconds = trained.history, trained.checkpoint.seconds()

    choice = "the winner by the report's rule" if trial_id is None else f"trial {trial_id}, named with --trial"
    meta = bundle_meta(
        config,
        data={"path": str(Path(root).resolve()), "n_images": len(data), "image_size": data.image_size,
              "cache_key": data.key},
        source={
            "sweep": sweep.name,
            "sweep_path": str(sweep.path.resolve()),
            "trial": trial.trial_id,
            "number": trial.number,
            "params": trial.params,
            "chosen_as": choice,
            "trial_seed": trial_seed,  # the configuration's seed is the one this bundle trained with
            "cv": {"n_folds": trial.n_folds, "folds_done": trial.folds_done, "state": trial.state,
                   "mean": trial.mean, "std": trial.std},
        },
        seconds=seconds,
        runtime=runtime_settings().to_dict(),
    )  # fmt: skip
    schedule = {
        "rule": SCHEDULE_RULE, "fold_drops": fold_drops, "drop_epochs": drop_epochs,
        "applied_drops": trained.lr_drops, "lr": config.lr, "lr_factor": config.lr_factor, "epochs": config.epochs,
    }  # fmt: skip

    bundle = write_bundle(
        out,
        trained.model,
        meta,
        history=history,
        train_stems=data.stems,
        extra_files={SCHEDULE_FILE: schedule, CARD_FILE: _model_card(meta, history, schedule)},
    )
    trained.checkpoint.discard()
    return bundle


def _check_same_data(trial: TrialResult, root: Path, key: str, n_pairs: int) -> None:
    """Refuse to retrain on other pairs than the trial cross-validated (the data set changed since).

    The cache key is a digest of the selected pairs' content and the size, as the cross-validation
    recorded it in cv.json; records without one (older or fabricated) are not checked.
    """
    cv = read_cv_result(trial.path) if trial.path is not None else None
    recorded = (cv.data if cv else None) or {}
    before = recorded.get("cache_key")
    if not before or before == key:
        return
    then = f"{recorded['n_pairs']} pairs" if isinstance(recorded.get("n_pairs"), int) else "other pairs"
    raise DataError(
        f"the data set {root} changed since trial {trial.label} was cross-validated on it ({then} then, "
        f"{n_pairs} now; content digest {before} then, {key} now): the model would be trained on other images "
        "than its cross-validation scores describe; restore the data set as it was, or cross-validate again"
    )


def cv_folder_as_sweep(folder: Path) -> SweepResults:
    """A `segsweep cv` output folder as a one-trial sweep, so its configuration retrains the same way."""
    cv = read_cv_result(folder)
    if cv is None:
        raise SegsweepError(f"{folder / CV_FILE} is not readable; rerun `segsweep cv` into {folder}")
    if not cv.complete or len(cv.folds) != cv.n_folds:
        raise SegsweepError(
            f"{folder} holds an unfinished cross-validation ({len(cv.folds)} of {cv.n_folds} folds); "
            "finish it by rerunning the same `segsweep cv` command, then retrain"
        )
    trial = TrialResult(
        trial_id="cv", number=None, params={}, state=COMPLETE, reason=None, config=cv.config,
        n_folds=cv.n_folds, folds=list(cv.folds), path=folder,
    )  # fmt: skip
    return SweepResults(name=folder.name, path=folder, spec=SweepRecord({"data": (cv.data or {}).get("path")}),
                        trials=[trial])  # fmt: skip


def _keep_float32_of_the_folds(trial: TrialResult) -> None:
    """Under ``--mixed-precision auto``, retrain in float32 when the trial's folds ran in float32: the
    final model is then trained as the cross-validation that chose it was (a sweep from before
    auto trained in bfloat16 on this CPU, or from a machine without it). Folds that ran in reduced
    precision leave auto to this machine: float16 from a GPU would crawl on a CPU."""
    from trainer.models import follow_recorded_precision, recorded_policy

    cv = read_cv_result(trial.path) if trial.path is not None else None
    if cv is not None and cv.runtime and recorded_policy(cv.runtime) == "float32":
        follow_recorded_precision(cv.runtime, why="as the trial's folds ran")


def run_retrain_command(
    name: str,
    storage: Path | None,
    out: Path,
    *,
    trial_id: str | None = None,
    seed: int | None = None,
    verbose: bool = True,
    threads: int | None = None,
    mixed_precision: str | None = None,
) -> int:
    is_cv_folder = (Path(name) / CV_FILE).is_file()
    sweep = cv_folder_as_sweep(Path(name)) if is_cv_folder else load_sweep(storage, name)
    from trainer.models import configure_tensorflow

    configure_tensorflow(threads, mixed_precision)
    bundle = retrain(sweep, out, trial_id=trial_id, seed=seed, verbose=verbose)
    meta = json.loads((bundle / CONFIG_FILE).read_text())
    print(f"wrote model bundle {bundle} ({meta['seconds']:.0f} s of training)", file=sys.stderr)
    return 0
