"""What one Ray Tune trial runs: the trainer's cross-validation of one proposed configuration.

The trial's folder (SWEEP/trials/<trial_id>/) is the cross-validation's output folder: the trainer
writes folds/fold_NN.json and cv.json there as folds end, and resumes at the first unfinished fold
when run again into it. After every fold the trial reports the running mean Dice to Ray (ASHA
decides on it) with a checkpoint holding the fold files, so that a trial restored elsewhere (node
lost, driver restarted) copies them back and trains only the folds it has not finished.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segsweep.base.errors import SegsweepError, one_line_error
from sweeps.folder import (
    OBJECTIVE,
    BatchProgress,
    SweepFolder,
    TrialRecord,
    append_event,
    now,
    read_stop_request,
    read_trial_record,
    update_trial_record,
    write_batch_progress,
)
from trainer.reporter import FoldPreview, MultiReporter, Reporter, StoppedEarly
from trainer.results import (
    CV_FILE,
    FOLDS_DIR,
    CVResult,
    FoldResult,
    fold_files,
    read_cv_result,
    read_fold_files,
    summarise,
)

if TYPE_CHECKING:
    from ray.tune import Checkpoint

    from search_spaces import SearchSpace
    from trainer.config import CVConfig
    from trainer.data import PreparedData

#: Seconds between looks at the stop request while a trial waits for its driver to end the run.
PARK_POLL_S = 1.0
#: The signature of trainer.cv.run_cv, which a trial calls (tests pass a stand-in that sleeps).
CVRunner = Callable[..., CVResult]


class FatalTrialError(SegsweepError):
    """A trial failure that a retry cannot fix (bad configuration, bad weights file, NaN loss).

    Ray retries every failed trial (FailureConfig); a retry of such a trial stops at once with the
    first attempt's reason instead of training again up to the same failure.
    """


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its parameters and the data; pickled once per sweep."""

    sweep_dir: str
    space: SearchSpace
    #: Command-line values that win over the space (limit, image_size, folds, epochs, seed).
    overrides: Mapping[str, Any]
    data_source: str
    #: TensorFlow intra-op threads (the trial's CPUs), so concurrent trials do not oversubscribe.
    threads: int | None
    #: sweep.json's contents (tracker setting and the rest), for the extra reporters.
    spec: Mapping[str, Any] = field(default_factory=dict)
    #: Validation stems when the configuration names a val_split (one given fold instead of K-fold).
    val_stems: tuple[str, ...] | None = None
    #: The cross-validation to run; None means trainer.cv.run_cv.
    cv_runner: CVRunner | None = None
    #: --mixed-precision of the sweep (auto, on, bf16, off), resolved on the trial's node (its GPUs, its CPU).
    mixed_precision: str = "auto"


def run_trial(config: dict[str, Any], *, data: PreparedData, setup: TrialSetup) -> None:
    """The Ray Tune function trainable (bound to data and setup with ``tune.with_parameters``)."""
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    folder = SweepFolder(Path(setup.sweep_dir)).trial_dir(trial_id)
    record = read_trial_record(folder)
    if record.fatal_reason:
        raise FatalTrialError(record.fatal_reason)

    restored = restore_fold_files(tune.get_checkpoint(), folder)
    attempt = {
        "started": now(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "restored_folds": restored,
    }
    update_trial_record(
        folder,
        trial_id=trial_id,
        state="RUNNING",
        parked=False,
        error=None,  # this attempt's own failure, written below if it fails
        started=record.started or attempt["started"],
        attempts=[*(record.attempts or []), attempt],
    )
    append_event(folder, "attempt", node_id=attempt["node_id"], restored_folds=restored)

    reporter = TuneFoldReporter(folder)
    _TRACKERS_RECORDED.set()  # (an actor Ray reuses starts a new trial here)
    reporter.report_finished_folds(restored)  # before any tracker opens: nothing to log if Ray ends it here
    _TRACKERS_RECORDED.clear()
    try:
        cv_config = setup.space.to_cv_config(config, setup.overrides)
        update_trial_record(folder, config=cv_config.to_dict())
        _configure_tensorflow(setup.threads, setup.mixed_precision)
        run_cv = setup.cv_runner or _default_cv_runner()
        trial_reporter = TrialReporter(reporter, _extra_reporters(setup.spec, trial_id, folder))
        keep = int(setup.spec.get("keep_models") or 0)
        result = run_cv(
            cv_config,
            data,
            folder,
            trial_reporter,
            val_stems=list(setup.val_stems) if setup.val_stems is not None else None,
            data_source=setup.data_source,
            verbose=True,
            **({"keep_models": True} if keep else {}),
        )
        if keep:
            from sweeps._kept_models import prune_fold_models

            prune_fold_models(setup.sweep_dir, keep)
    except SegsweepError as exc:
        reason = one_line_reason(exc)
        update_trial_record(folder, fatal_reason=reason, reason=reason, error=reason)
        append_event(folder, "failed", reason=reason, fatal=True)
        raise FatalTrialError(reason) from exc
    except Exception as exc:
        reason = one_line_reason(exc)
        update_trial_record(folder, reason=reason, error=reason)
        append_event(folder, "failed", reason=reason, fatal=False)
        raise
    finally:
        _TRACKERS_RECORDED.set()  # run_cv has closed every tracker run, however it ended
    if reporter.folds_reported < len(result.folds) or reporter.folds_reported == 0:
        # The last fold is reported here, once its trackers have closed their runs and the fold
        # models are pruned: Ray ends a trial at its last report (ASHA's max_t), and nothing after
        # that report is sure to run. Also the case of a trial whose folds were all restored.
        reporter.n_folds = result.n_folds
        reporter.report(result.folds)


#: How long an ending trial's actor waits for its trackers to record how the trial ended.
TRACKERS_CLOSE_SECONDS = 60.0
#: Set while this worker's trial thread waits inside ``tune.report``, where Ray may end the trial.
_AT_REPORT = threading.Event()
#: Set when no tracker run of this worker's trial is left to close (before run_cv opens them, after it
#: closed them).
_TRACKERS_RECORDED = threading.Event()
_TRACKERS_RECORDED.set()


def trial_thread_at_report() -> bool:
    """Whether this worker's trial thread waits inside ``tune.report`` (where Ray may end it)."""
    return _AT_REPORT.is_set()


def wait_for_trackers_to_record() -> bool:
    """Wait (up to TRACKERS_CLOSE_SECONDS) until no tracker run of this worker's trial is left open."""
    return _TRACKERS_RECORDED.wait(TRACKERS_CLOSE_SECONDS)


def trial_trainable(trainable: Callable[[dict[str, Any]], None]) -> type:
    """Ray Tune's class for the trial function ``trainable`` (run_trial with its parameters bound).

    Ray ends a trial at a report (ASHA prunes it; the last fold at ``max_t``) by raising SystemExit in
    its thread inside ``tune.report``, and its FunctionTrainable.cleanup does not wait for that thread
    (``session.finish(timeout=0)``) before the actor is killed. The trial's trackers record the end
    after that SystemExit (a pruned trial's PRUNED state, the runs' FINISHED), so under load the kill
    won the race and a pruned trial's Neptune run stayed RUNNING. This cleanup lets the thread record
    it, up to TRACKERS_CLOSE_SECONDS, when Ray ended the trial at a report; a trial stopped mid-fold
    (its thread is training, not reporting) is not waited for, as before. Pinned Ray (<2.61): the
    class wraps Tune's own (ray.tune.trainable.function_trainable.wrap_function).
    """
    from ray.tune.trainable.function_trainable import wrap_function

    class SegsweepTrial(wrap_function(trainable)):  # type: ignore[misc]
        def cleanup(self) -> None:
            # (module functions, not the events themselves: Ray pickles this class by value)
            ended_at_report = trial_thread_at_report()
            try:
                super().cleanup()  # releases the thread: it raises SystemExit inside tune.report
            finally:
                if ended_at_report:
                    wait_for_trackers_to_record()

    SegsweepTrial.__name__ = SegsweepTrial._name = "run_trial"
    return SegsweepTrial


def _default_cv_runner() -> CVRunner:
    from trainer.cv import run_cv

    return run_cv


def _configure_tensorflow(threads: int | None, mixed_precision: str) -> None:
    """Thread pools sized to the trial's CPUs, and the mixed-precision choice, for the trainer.

    Given through the environment that trainer.models.configure_tensorflow reads when the trainer
    first needs TensorFlow (with GPU memory growth; Ray sets CUDA_VISIBLE_DEVICES to the trial's own
    GPUs), rather than by importing TensorFlow here: a trial whose folds are all restored, or a
    cross-validation runner of another framework, then never pays TensorFlow's start-up.
    """
    from trainer.models import MIXED_PRECISION_ENV, THREADS_ENV, check_mixed_precision, check_threads

    if threads is not None:
        os.environ[THREADS_ENV] = str(check_threads(threads) or 0)  # 0: TensorFlow's default
    os.environ[MIXED_PRECISION_ENV] = check_mixed_precision(mixed_precision)


def _extra_reporters(spec: Mapping[str, Any], trial_id: str, out_dir: Path) -> list[Reporter]:
    """The trial's tracker reporters (MLflow, Neptune) built from sweep.json's ``tracker`` setting.

    The seam where tracking plugs into sweeps: it returns the sinks that receive the same epoch and
    fold calls as the Ray reporter. The trial's runs are children of the sweep's runs, whose
    context lives in SWEEP/tracking.json (made by the driver, or by the first trial that asks).
    """
    from trainer.tracking import open_trackers, parse_tracker_names, sweep_tracking

    names = spec.get("tracker")
    if not parse_tracker_names(names):
        return []
    sweep_dir = Path(out_dir).parent.parent  # SWEEP/trials/<trial_id>
    sweep_params = {k: v for k, v in spec.items() if k not in ("space_definition",)}
    ctx = sweep_tracking(sweep_dir, names, str(spec.get("name") or sweep_dir.name), sweep_params)
    record = read_trial_record(Path(out_dir))
    params = {"trial_id": trial_id, **(record.params or {}), **(record.config or {})}
    return [open_trackers(names, root=Path(out_dir), run_name=trial_id, params=params, parent=ctx)]


class TrialReporter(MultiReporter):
    """The Ray reporter and the trackers of one trial, in the order each hook needs.

    Ray hears first at a fold's start (a trial parks there while its sweep stops, before a tracker
    opens a fold run) and last at a fold's end: Ray may end the trial at that report (ASHA prunes
    it; its worker thread exits inside ``tune.report``), so the trackers log the fold before it.
    """

    def __init__(self, tune_reporter: TuneFoldReporter, trackers: list[Reporter]) -> None:
        super().__init__([tune_reporter, *trackers])
        self.tune_reporter, self.trackers = tune_reporter, trackers

    def on_fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None:
        for tracker in self.trackers:
            tracker.on_fold_end(result, completed, preview)
        self.tune_reporter.on_fold_end(result, completed, preview)


def interrupted_by_stop(sweep: SweepFolder, last_result: Mapping[str, Any] | None) -> bool:
    """Whether Tune ends an unfinished trial because the sweep is stopping (not because ASHA said so).

    Tune reports every running trial as complete when a run ends on its SIGINT path, which is how a
    sweep stops resumably; such a trial must stay RUNNING in trial.json and the study. The driver
    (trial.json) and the trial's worker (its trackers) both decide with this.
    """
    last = last_result or {}
    unfinished = int(last.get("folds_done") or 0) < int(last.get("n_folds") or 1 << 30)
    return unfinished and read_stop_request(sweep) is not None


def pruned_reason(last_result: Mapping[str, Any], record: TrialRecord | None = None) -> str:
    """Why a trial was PRUNED (trial.json and the trackers say this): the scheduler's own reason when it
    recorded one (``record.pruned_by``), else the fold count and running mean of its last report."""
    if record is not None and record.pruned_by:
        return record.pruned_by
    return (
        f"stopped by the scheduler after {int(last_result.get('folds_done') or 0)} of "
        f"{int(last_result.get('n_folds') or 0)} folds "
        f"(running mean Dice {float(last_result.get('dice', math.nan)):.4f})"
    )


class TuneFoldReporter(Reporter):
    """Reports each finished fold to Ray Tune with a checkpoint of the fold files; logs events."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.sweep = SweepFolder(folder.parent.parent)  # SWEEP/trials/<trial_id>
        self.n_folds = 0
        self.epochs = 0
        self.folds_reported = 0
        self._epoch_started = time.monotonic()

    def on_cv_start(self, config: CVConfig, n_folds: int, out_dir: Path) -> None:
        self.n_folds = n_folds
        self.epochs = config.epochs
        update_trial_record(self.folder, n_folds=n_folds)

    def on_fold_start(self, fold: int, n_train: int, n_val: int) -> None:
        wait_while_stopping(self.sweep, self.folder)
        append_event(self.folder, "fold_start", fold=fold, n_train=n_train, n_val=n_val)
        self._epoch_started = time.monotonic()

    def on_epoch(self, fold: int, epoch: int, metrics: Mapping[str, float]) -> None:
        """One line per epoch in events.jsonl: what the live view and `status --watch` show."""
        seconds = time.monotonic() - self._epoch_started
        self._epoch_started = time.monotonic()
        val_iou = float(metrics.get("val_iou", math.nan))
        append_event(
            self.folder,
            "epoch",
            fold=fold,
            epoch=epoch,
            epochs=self.epochs,
            val_iou=val_iou if math.isfinite(val_iou) else None,
            seconds=round(seconds, 2),
        )

    def on_batch(self, fold: int, epoch: int, batch: int, batches: int, images_per_second: float) -> None:
        """progress.json, for the live view's bar inside the epoch (not an event: it is rewritten ~1/s)."""
        speed = images_per_second if math.isfinite(images_per_second) else None
        write_batch_progress(self.folder, BatchProgress(fold, epoch, batch, batches, speed))

    def on_fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None:
        append_event(self.folder, "fold_end", fold=result.fold, dice=result.dice, seconds=result.seconds)
        if len(completed) < self.n_folds:  # the last fold is reported by run_trial, after the trackers close
            self.report(completed, latest=result)

    def report_finished_folds(self, reported: int) -> None:
        """Report folds the trial folder holds beyond the ``reported`` ones Ray knows of.

        A fold can end after its report last reached the driver (the driver was killed in
        between); the trainer will not train it again, so its result is reported here, before
        the trainer resumes, for the scheduler and the study to see every fold.
        """
        cv = read_cv_result(self.folder)
        if cv is None:
            return
        finished, _damaged = read_fold_files(self.folder)  # a damaged fold reruns and reports itself
        finished = [f for i, f in enumerate(finished, start=1) if f.fold == i]  # up to the first gap
        self.n_folds = cv.n_folds
        for count in range(reported + 1, len(finished) + 1):
            append_event(self.folder, "fold_reported", fold=finished[count - 1].fold)
            self.report(finished[:count])

    def report(self, completed: list[FoldResult], latest: FoldResult | None = None) -> None:
        from ray import tune

        mean, std = summarise(completed)
        latest = latest or (completed[-1] if completed else None)
        metrics = {
            "dice": mean["dice"],
            "iou": mean["iou"],
            "dice_std": std["dice"],
            "iou_std": std["iou"],
            "fold": latest.fold if latest else 0,
            "fold_dice": latest.dice if latest else math.nan,
            "folds_done": len(completed),
            "n_folds": self.n_folds,
        }
        # trial.json keeps the objective's running mean: `sweep status`/`list` and a reconciled study read it.
        objective_mean = mean[OBJECTIVE.metric] if completed else None
        update_trial_record(self.folder, folds_done=len(completed), **{OBJECTIVE.record_field: objective_mean})
        try:
            with tempfile.TemporaryDirectory(prefix="segsweep-ckpt-") as tmp:
                _copy_fold_files(self.folder, Path(tmp))
                _AT_REPORT.set()
                try:
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
                finally:
                    _AT_REPORT.clear()
        except SystemExit:
            # Ray ended the trial at this report (its thread exits here). With folds left and the
            # sweep not stopping, the scheduler pruned it: say so, for the trackers to record it
            # PRUNED as the driver records trial.json; a stopping sweep's trial is interrupted.
            self.folds_reported = len(completed)
            if 0 < len(completed) < self.n_folds and not interrupted_by_stop(self.sweep, metrics):
                raise StoppedEarly(pruned_reason(metrics, read_trial_record(self.folder))) from None
            raise
        self.folds_reported = len(completed)


def wait_while_stopping(sweep: SweepFolder, trial_folder: Path) -> None:
    """Between folds, park while the sweep is asked to stop, so its driver can end with no fold lost.

    The driver ends the Ray run once every running trial is parked (this worker then goes with it);
    if the request is withdrawn (stop.json deleted), the trial goes on with its next fold.
    """
    if read_stop_request(sweep) is None:
        return
    update_trial_record(trial_folder, parked=True)
    append_event(trial_folder, "parked")
    while read_stop_request(sweep) is not None:
        time.sleep(PARK_POLL_S)
    update_trial_record(trial_folder, parked=False)


def _copy_fold_files(source: Path, target: Path) -> None:
    (target / FOLDS_DIR).mkdir(parents=True, exist_ok=True)
    for path in fold_files(source):
        shutil.copy2(path, target / FOLDS_DIR / path.name)
    if (source / CV_FILE).is_file():
        shutil.copy2(source / CV_FILE, target / CV_FILE)


def restore_fold_files(checkpoint: Checkpoint | None, folder: Path) -> int:
    """Copy a checkpoint's fold files into the trial folder where missing; return how many folds.

    The trial folder may already be ahead of the checkpoint (a fold ended after the last report
    reached the driver): files there are kept, and cv.json only replaced by one with more folds.
    """
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        source = Path(directory)
        (folder / FOLDS_DIR).mkdir(parents=True, exist_ok=True)
        for path in fold_files(source):
            if not (folder / FOLDS_DIR / path.name).is_file():
                shutil.copy2(path, folder / FOLDS_DIR / path.name)
        if (source / CV_FILE).is_file() and _n_folds_in(source) > _n_folds_in(folder):
            shutil.copy2(source / CV_FILE, folder / CV_FILE)
        return len(fold_files(source))


def _n_folds_in(out_dir: Path) -> int:
    """Folds finished according to ``out_dir``'s cv.json (-1 without a readable one)."""
    cv = read_cv_result(out_dir)
    return -1 if cv is None else len(cv.folds)


def one_line_reason(exc: BaseException) -> str:
    """``Type: first line of the message`` of the error behind Ray's wrappers, at most 300 chars."""
    seen = 0
    while seen < 5:
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError keeps the original here
        if not isinstance(cause, BaseException):
            break
        exc, seen = cause, seen + 1
    if isinstance(exc, FatalTrialError):
        return str(exc)[:300]
    return one_line_error(exc)
