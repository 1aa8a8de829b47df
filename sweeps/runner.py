"""Running a sweep: Optuna proposes, Ray Tune schedules the trials, each a cross-validation.

``run_sweep`` checks everything it can before Ray starts (space, data, options), prepares the data
once, shares it with every trial through Ray's object store (one copy, mapped read-only by the
workers), and runs a Ray Tune ``Tuner`` whose experiment state lives in SWEEP/ray so that
``resume_sweep`` can finish the sweep after the driver died.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segsweep.base.errors import ConfigError
from segsweep.base.files import ensure_writable_folder
from segsweep.base.signals import signal_handlers
from sweeps._trainable import CVRunner, TrialSetup
from sweeps.folder import (
    COMPLETE,
    FAILED,
    OBJECTIVE,
    PRUNED,
    RUNNING,
    DamagedRecord,
    SweepResults,
    TrialRecord,
    clear_stop_request,
    hold_driver_lock,
    load_sweep,
    now,
    read_spec_record,
    read_stop_request,
    read_trial_record,
    storage_path,
    update_trial_record,
    write_spec_record,
)
from sweeps.spec import OVERRIDE_KEYS, SweepSpec

if TYPE_CHECKING:
    from search_spaces import SearchSpace
    from trainer.config import CVConfig
    from trainer.data import PreparedData

#: ASHA's reduction factor: at each rung (1, 3, 9 folds) a trial goes on only if its running mean
#: Dice is in the top third of the trials that reached that rung.
ASHA_REDUCTION_FACTOR = 3
_MIB = 1 << 20


#: Ray Tune's own reporter stays silent: the driver's view is segsweep's (sweeps._live_view), one
#: naming of trials (#N) and one state vocabulary (PRUNED, not Tune's TERMINATED).
TUNE_VERBOSITY = 0
#: Tune's default ("new") output engine prints its configuration table, a TensorBoard hint (into
#: Ray's session folder, which segsweep deletes) and a final trial table even at verbose=0
#: (ray/tune/experimental/output.py, TuneTerminalReporter.experiment_started and the forced last
#: heartbeat); the legacy engine prints nothing at verbose=0. Read by Tune when ``fit`` starts.
TUNE_NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"


@contextlib.contextmanager
def tune_output_silenced() -> Iterator[None]:
    """Tune's legacy (silent at verbose 0) output engine for the block; the caller's setting after."""
    before = os.environ.get(TUNE_NEW_OUTPUT_ENV)
    os.environ[TUNE_NEW_OUTPUT_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TUNE_NEW_OUTPUT_ENV, None)
        else:
            os.environ[TUNE_NEW_OUTPUT_ENV] = before


@dataclasses.dataclass
class SweepOutcome:
    """What a run or resume of a sweep ended with."""

    results: SweepResults
    finished: bool
    wall_seconds: float
    #: Why the run ended before the sweep finished (``sweep stop``, budget, failures, Ctrl-C), if it did.
    stopped: str | None = None


def run_sweep(spec: SweepSpec, *, cv_runner: CVRunner | None = None) -> SweepOutcome:
    """Start a new sweep in STORAGE/NAME and run it to the end (or until interrupted)."""
    spec.validate()
    spec.storage = str(storage_path(spec.storage).resolve())
    spec.data = str(Path(spec.data).resolve())
    if spec.folder.exists():
        raise ConfigError(
            f"a sweep named {spec.name!r} exists in {spec.storage}; continue it with "
            f"`segsweep sweep resume {spec.name} --storage {spec.storage}`, or choose another --name"
        )
    space = spec.load_space()
    spec.space_definition = space.to_dict()
    from sweeps._start import sweep_start_points, warm_start_folder

    sweep_start_points(spec, space)  # a starting point outside the space answers now, not in a trial
    if spec.warm_start:
        warm_start_folder(spec)
    return _execute(spec, space, restore=False, cv_runner=cv_runner)


def resume_sweep(
    storage: str | Path | None,
    name: str,
    *,
    cv_runner: CVRunner | None = None,
    time_budget_s: float | None = None,
    max_failed_trials: int | None = None,
    address: str | None = None,
) -> SweepOutcome:
    """Finish a sweep whose driver stopped: finished trials and folds are not trained again.

    A budget given here replaces the one the sweep ran with (budgets count per run). ``address``:
    the Ray cluster to continue on, where it is not the one the sweep started on (a resubmitted
    Slurm job starts a new Ray head).
    """
    from ray import tune

    spec = SweepSpec.read(storage, name)
    spec.time_budget_s, spec.max_failed_trials = time_budget_s, max_failed_trials
    if address is not None:
        spec.address = address
    spec.validate()
    space = spec.load_space()
    restore = tune.Tuner.can_restore(str(spec.folder.ray_dir))
    return _execute(spec, space, restore=restore, cv_runner=cv_runner, resuming=True)


def probe_config(space: SearchSpace, overrides: dict[str, Any], seed: int) -> CVConfig:
    """One configuration drawn from the space, checked, before any Ray or training starts.

    Its data settings (image size, limit, split) and number of folds are the sweep's: the data are
    prepared once for all trials.
    """
    import optuna

    for field_name in ("image_size", "limit", "dev_split", "val_split", "folds"):
        if field_name in space.params and overrides.get(field_name) is None:
            raise ConfigError(
                f"search space {space.name!r} searches {field_name!r}, but a sweep prepares its data "
                f"and folds once for all trials; move {field_name} to `fixed` in the space"
                + (f" or pass --{field_name.replace('_', '-')}" if field_name in OVERRIDE_KEYS else "")
            )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    returned = space.define_by_run(trial) or {}
    return space.to_cv_config({**trial.params, **returned}, overrides)


def _execute(
    spec: SweepSpec, space: SearchSpace, *, restore: bool, cv_runner: CVRunner | None, resuming: bool = False
) -> SweepOutcome:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_storage(Path(spec.storage))  # before data and Ray: a wrong --storage answers at once
    if spec.address:
        probe_address(spec.address)
    with hold_driver_lock(spec.folder), contextlib.ExitStack() as winding_down:
        clear_stop_request(spec.folder)  # a resumed sweep starts afresh; the last run acted on it
        if resuming:
            _repair_lost_state(spec, space, restore=restore)
        return _drive(spec, space, restore=restore, cv_runner=cv_runner, winding_down=winding_down)


def _repair_lost_state(spec: SweepSpec, space: SearchSpace, *, restore: bool) -> None:
    """Before a resume starts Ray: rebuild a lost optuna.db, refuse a resume that Ray's lost state would garble.

    Without SWEEP/ray, Tune starts the sweep over: it would retrain the configurations of trials that
    finished folds as new trials (and run the whole budget again), so the resume stops, naming the
    repair. The study holds nothing the trial records do not (sweeps._optuna.rebuild_study).
    """
    from sweeps._optuna import rebuild_study

    if not restore:
        done = [t for t in load_sweep(spec.storage, spec.name).trials if t.folds_done or t.state in (COMPLETE, PRUNED)]
        if done:
            raise DamagedRecord(
                f"{spec.folder.ray_dir} (Ray Tune's saved state) is missing or incomplete, and {len(done)} "
                f"trial(s) of sweep {spec.name!r} hold finished folds ({', '.join(t.label for t in done[:3])}"
                f"{', ...' if len(done) > 3 else ''}); resuming without it would start the sweep over and train "
                f"them again as new trials: restore {spec.folder.ray_dir} from a backup, or run the rest as a new "
                f"sweep with `segsweep sweep run --config {spec.folder.spec_file} --name NEW_NAME`"
            )
    if not spec.folder.optuna_db.is_file():
        count = rebuild_study(spec.sweep_dir, spec.name, space)
        print(
            f"[segsweep] {spec.folder.optuna_db} was missing: rebuilt study {spec.name!r} from {count} trial "
            "record(s) (trial.json and fold files)",
            flush=True,
        )


@contextlib.contextmanager
def _interrupts_wait_for_the_records() -> Iterator[None]:
    """A first Ctrl-C once Tune's run is over waits until the sweep's end is recorded.

    From then on the driver shuts Ray down and settles trial.json, the study and sweep.json; an
    interrupt in between left a sweep whose trials had all ended recorded as interrupted (``sweep
    list``: "resume it"). A second Ctrl-C interrupts at once.
    """
    asked: list[int] = []

    def wait(signum: int, frame: object) -> None:
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)
        print("\n[segsweep] the run has ended; saving its records first (Ctrl-C again to stop at once)", flush=True)

    with signal_handlers({signal.SIGINT: wait}):
        yield


def _drive(
    spec: SweepSpec,
    space: SearchSpace,
    *,
    restore: bool,
    cv_runner: CVRunner | None,
    winding_down: contextlib.ExitStack,
) -> SweepOutcome:
    """Run the sweep; ``winding_down`` (closed by the caller after the run is recorded) takes what must
    last from the end of Tune's run until then."""
    from ray import tune

    from sweeps._callbacks import SweepCallback
    from sweeps._live_view import LiveProgress
    from sweeps._optuna import make_searcher
    from sweeps._stopping import StopControl, StoppableSearch
    from sweeps._trainable import run_trial, trial_trainable
    from trainer.cv import make_folds
    from trainer.data import prepare_dataset, read_split

    started = time.perf_counter()
    overrides = spec.cv_overrides()
    probe = probe_config(space, overrides, spec.seed)
    print(f"[segsweep] preparing {spec.data} at {probe.image_size}px", flush=True)
    data = prepare_dataset(
        spec.data, probe.image_size, split=probe.dev_split, limit=probe.limit, skip_bad=spec.skip_bad
    )
    val_stems = tuple(read_split(spec.data, probe.val_split)) if probe.val_split else None
    # The folds every trial splits, made once here: more folds than pairs (or a split naming none of
    # them) is one line now rather than the same failure in every trial.
    make_folds(data.stems, probe, list(val_stems) if val_stems is not None else None)
    n_folds = 1 if probe.val_split else probe.folds
    print(f"[segsweep] {len(data)} pairs ready ({data.key}); {n_folds} folds per trial", flush=True)
    if spec.data_key is not None and spec.data_key != data.key:
        raise ConfigError(
            f"the data set {spec.data} is not what sweep {spec.name!r} started on (content digest "
            f"{spec.data_key} then, {data.key} now: pairs added, removed or changed, or a segsweep version "
            "that prepares them otherwise); its trials would be ranked against other images: restore the "
            "data set as it was, or start a new sweep with another --name"
        )
    spec.data_key = data.key  # sweeps recorded before this field get it on their next run
    from sweeps._start import prepare_warm_start, sweep_start_points

    warm_trials = prepare_warm_start(spec, space, data.key) if spec.warm_start and not restore else []
    start_points = sweep_start_points(spec, space)

    # Tune's experiment snapshot (every trial's state) costs time in proportion to the trials so far:
    # taken on a fixed short period or on every fold, it makes the driver's cost per trial grow with
    # the sweep (benchmarks/bench_sweep_scale.py). So the period stays Tune's default ("auto": snapshots
    # under 5% of the driver's time) and no fold forces one (CheckpointConfig below). A driver killed
    # between snapshots loses no fold: a resumed trial starts from the fold files in its trial folder,
    # which are ahead of its last checkpoint (tests/sweeps/test_ray.py, kill -9).
    shared = _shareable(data)
    with ray_session(spec.address, object_store_bytes=_object_store_bytes(shared)):
        spec.concurrency = resolve_concurrency(spec)
        spec.created = spec.created or now()
        spec.write()
        setup = TrialSetup(
            sweep_dir=str(spec.sweep_dir),
            space=space,
            overrides=overrides,
            data_source=spec.data,
            threads=max(1, math.ceil(spec.cpus_per_trial)) if spec.threads is None else spec.threads,
            mixed_precision=spec.mixed_precision,
            spec=spec.to_dict(),
            val_stems=val_stems,
            cv_runner=cv_runner,
        )
        resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
        # with_parameters puts the data into the object store once; every trial maps that copy.
        trainable = tune.with_resources(
            trial_trainable(tune.with_parameters(run_trial, data=shared, setup=setup)), resources
        )
        ray_dir = spec.folder.ray_dir
        stop_control = StopControl(
            spec.folder, time_budget_s=spec.time_budget_s, max_failed_trials=spec.max_failed_trials
        )
        callbacks = [SweepCallback(spec.sweep_dir, spec.name), stop_control, LiveProgress(spec.folder)]
        if restore:
            print(f"[segsweep] resuming sweep {spec.name!r} from {ray_dir}", flush=True)
            tuner = tune.Tuner.restore(
                str(ray_dir),
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
            )
            # The restored run config carries the last run's callbacks (budget clock included).
            assert tuner._local_tuner is not None  # a local (not Ray Client) Tuner
            restored_config = tuner._local_tuner.get_run_config()
            restored_config.callbacks = callbacks
            restored_config.verbose = TUNE_VERBOSITY  # a sweep recorded by an older segsweep kept Tune's table
        else:
            from ray.tune.search import ConcurrencyLimiter

            searcher = make_searcher(
                spec.sweep_dir, spec.name, space.define_by_run, spec.trials, spec.concurrency, spec.seed
            )
            _seed_study(searcher._ot_study, spec, warm_trials, start_points)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=StoppableSearch(
                        ConcurrencyLimiter(searcher, max_concurrent=spec.concurrency), spec.folder
                    ),
                    scheduler=make_scheduler(spec.scheduler, n_folds, spec.sweep_dir),
                    num_samples=spec.trials,
                    reuse_actors=True,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=ray_dir.name,
                    storage_path=str(ray_dir.parent),
                    failure_config=tune.FailureConfig(max_failures=spec.trial_retries),
                    # Each fold's checkpoint holds all fold files so far (the latest suffices), but
                    # dropping an older one forces an experiment snapshot: keep them all instead.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=n_folds + 1),
                    callbacks=callbacks,
                    log_to_file=True,
                    verbose=TUNE_VERBOSITY,
                ),
            )
            print(
                f"[segsweep] sweep {spec.name!r}: {spec.trials} trials, {spec.concurrency} at a time, "
                f"scheduler {spec.scheduler}; study {spec.folder.optuna_db}",
                flush=True,
            )
        tracking = _start_sweep_tracking(spec)
        try:
            with _signal_handlers_kept(), tune_output_silenced():
                grid = tuner.fit()
        finally:
            pending = read_stop_request(spec.folder)
            clear_stop_request(spec.folder)  # acted on: the next run of this sweep starts afresh
        winding_down.enter_context(_interrupts_wait_for_the_records())  # Ray's shutdown takes seconds
        statuses = _ray_trial_statuses(grid)
    # A stop that came with no trial running ends Tune's run as finished (StoppableSearch), not
    # through StopControl: the request names why.
    stopped = stop_control.reason or (pending.reason if pending and len(statuses) < spec.trials else None)
    finished = _reconcile(spec, statuses, stopped=stopped is not None)
    if finished:
        stopped = None  # the stop came once every trial had ended (a Ctrl-C after the last): nothing stopped
    if spec.keep_models:
        from sweeps._kept_models import prune_fold_models

        prune_fold_models(spec.sweep_dir, spec.keep_models, sweep_ended=finished)
    wall = time.perf_counter() - started
    _record_run(spec, wall, restore, finished, stopped)
    outcome = SweepOutcome(load_sweep(spec.storage, spec.name), finished, wall, stopped)
    if tracking and finished:  # an unfinished sweep keeps its parent runs open for `sweep resume`
        _finish_sweep_tracking(spec, outcome)
    return outcome


def _seed_study(study: Any, spec: SweepSpec, warm_trials: list[Any], start_points: list[Any]) -> None:
    """Give the study the warm start's trials and enqueue the starting points, each once (a sweep
    resumed without Tune's snapshot builds a new searcher over the same study)."""
    from sweeps._start import add_warm_start_trials, enqueue_start_points

    added = add_warm_start_trials(study, warm_trials)
    enqueued = enqueue_start_points(study, start_points)
    if spec.warm_start_mode:
        print(f"[segsweep] --warm-start {spec.warm_start}: {spec.warm_start_mode}", flush=True)
    if added or enqueued:
        print(f"[segsweep] {added} earlier trials added to the study, {enqueued} starting points run first", flush=True)
    if len(start_points) > spec.trials:
        print(
            f"[segsweep] note: {len(start_points)} starting points but --trials {spec.trials}: only the first "
            f"{spec.trials} run",
            flush=True,
        )


def _signal_handlers_kept() -> contextlib.AbstractContextManager[None]:
    """Put SIGINT's and SIGUSR1's handlers back after Tune's run: Tune installs its own and restores
    them only when one fires, which would leave a notebook's Ctrl-C to a finished sweep."""
    return signal_handlers({}, keep=(signal.SIGINT, signal.SIGUSR1))


def _start_sweep_tracking(spec: SweepSpec) -> bool:
    """Open the sweep's parent runs (MLflow, Neptune) before the trials open theirs as children."""
    from trainer.tracking import parse_tracker_names, sweep_tracking

    if not parse_tracker_names(spec.tracker):
        return False
    params = {k: v for k, v in spec.to_dict().items() if k != "space_definition"}
    sweep_tracking(spec.sweep_dir, spec.tracker, spec.name, params, keep_open=True)
    return True


def _finish_sweep_tracking(spec: SweepSpec, outcome: SweepOutcome) -> None:
    """Close the sweep's parent runs with a summary: counts, wall time and the best trial."""
    from trainer.tracking import finish_sweep_folder_tracking

    results = outcome.results
    best = results.completed()
    summary: dict[str, Any] = {
        "trials": len(results.trials),
        "completed": len(best),
        "finished": outcome.finished,
        "wall_seconds": round(outcome.wall_seconds, 1),
    }
    if best:
        summary.update(best_trial=best[0].trial_id, best_dice=best[0].mean["dice"], best_iou=best[0].mean["iou"])
    finish_sweep_folder_tracking(spec.sweep_dir, summary)


def make_scheduler(name: str, n_folds: int, sweep_dir: str | Path) -> Any:
    """The scheduler that decides after each fold: paired (sweeps._paired), ASHA on the objective's
    running mean with time measured in folds done, or FIFO for ``none`` (and for one fold)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    if name == "none" or n_folds < 2:
        return FIFOScheduler()
    if name == "paired":
        from sweeps._paired import PairedScheduler

        return PairedScheduler(sweep_dir)
    return AsyncHyperBandScheduler(
        time_attr="folds_done",
        metric=OBJECTIVE.metric,
        mode=OBJECTIVE.direction,
        max_t=n_folds,
        grace_period=1,
        reduction_factor=ASHA_REDUCTION_FACTOR,
    )


def trial_dirname(trial: Any) -> str:
    """Ray's folder of a trial under SWEEP/ray: its id, as under SWEEP/trials."""
    return str(trial.trial_id)


def _shareable(data: PreparedData) -> PreparedData:
    """The data as plain arrays: Ray stores them once and workers map them zero-copy, read-only.

    (The cache's memory maps would be pickled as file-backed subclasses, not as buffers.)
    """
    import numpy as np

    return dataclasses.replace(data, images=np.asarray(data.images), masks=np.asarray(data.masks))


def check_storage(storage: Path) -> None:
    """--storage must be a folder this process can write (created if missing)."""
    ensure_writable_folder(
        storage,
        "--storage",
        "pass a writable folder to hold the sweeps (on a cluster, one that every node mounts at the same path)",
    )


#: Seconds to wait for a Ray head's GCS port to accept a connection (SEGSWEEP_RAY_CONNECT_TIMEOUT).
DEFAULT_RAY_CONNECT_TIMEOUT = 30.0


def probe_address(address: str) -> None:
    """Fail in seconds, not after Ray's endless retries, when nothing listens at HOST:PORT."""
    import socket

    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    raw = os.environ.get("SEGSWEEP_RAY_CONNECT_TIMEOUT", "")
    try:
        timeout = float(raw) if raw else DEFAULT_RAY_CONNECT_TIMEOUT
    except ValueError:
        raise ConfigError(f"SEGSWEEP_RAY_CONNECT_TIMEOUT={raw!r} is not a number of seconds") from None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
    raise ConfigError(
        f"no Ray head answers at --address {address} ({why} within {timeout:g} s); start one there with "
        f"`ray start --head --port {port}` (see README, On a cluster), or leave out --address to run Ray on "
        "this machine"
    )


def private_ray_temp_dir() -> str:
    """A folder for the local Ray's sockets, logs and spilled objects, inside a fresh 0700 folder.

    Not Ray's default /tmp/ray, which other users of the machine can read. Ray makes its own temp
    folder world-writable (0777), hence the private folder around it. Short, because Ray puts Unix
    sockets under it (``session_<date>_<pid>/sockets/plasma_store``) and a socket path has at most
    107 bytes. Remove ``os.path.dirname`` of it when done (``private_ray_folder`` does).
    """
    import tempfile

    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    private = tempfile.mkdtemp(prefix=RAY_FOLDER_PREFIX, dir=base)  # mkdtemp: mode 0700
    folder = os.path.join(private, "r")
    longest_socket = len(folder) + len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")
    if longest_socket > 107:
        os.rmdir(private)
        raise ConfigError(
            f"Ray's temporary folder {folder} is too long for its Unix sockets ({longest_socket} > 107 "
            "bytes); set RAY_TMPDIR to a short folder such as /tmp"
        )
    return folder


#: The private Ray folders' name prefix, in $RAY_TMPDIR or the system temporary folder.
RAY_FOLDER_PREFIX = "segsweep-ray-"
#: Held (flock) by the driver that owns a private Ray folder, for as long as its Ray runs.
_RAY_FOLDER_LOCK = "owner.lock"


@contextlib.contextmanager
def private_ray_folder() -> Iterator[str]:
    """``private_ray_temp_dir()``, owned by this process for the block, then removed.

    Ray's logs in it may hold what trials were started with, so it must not outlive its driver. The
    block's end removes it on every exit Python sees (a failed start, Ctrl-C, SIGTERM: Ray's driver
    turns SIGTERM into SystemExit). Where the driver died without one (SIGKILL, a lost node), the next
    local Ray start removes the folder: its lock is free once its owner has gone.
    """
    import fcntl
    import shutil

    temp_dir = private_ray_temp_dir()
    private = os.path.dirname(temp_dir)
    try:
        # Locked before it has its name, so no other driver can take an unlocked lock for a stale one.
        staged = os.path.join(private, f".{_RAY_FOLDER_LOCK}")
        with open(staged, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.rename(staged, os.path.join(private, _RAY_FOLDER_LOCK))
            remove_stale_ray_folders(os.path.dirname(private))
            yield temp_dir
    finally:
        shutil.rmtree(private, ignore_errors=True)


def remove_stale_ray_folders(base: str | Path) -> list[Path]:
    """Remove the private Ray folders in ``base`` whose driver has gone (their lock is free); return them.

    A folder without a lock (being made, or made by an older segsweep) is left alone, as are other
    users' folders (not readable here).
    """
    import fcntl
    import shutil

    removed = []
    for folder in Path(base).glob(f"{RAY_FOLDER_PREFIX}*"):
        try:
            with open(folder / _RAY_FOLDER_LOCK) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        except OSError:  # no lock file, not ours, or held by a running driver (BlockingIOError)
            continue
    return removed


@contextlib.contextmanager
def _tune_forwards_no_secrets() -> Iterator[None]:
    """Keep credentials out of the environment Ray Tune gives trial actors.

    Tune copies AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (and AWS_ACCESS_KEY_ID, among its own
    settings) from the driver's environment into every trial actor's ``runtime_env``, which Ray's
    runtime-env agent writes in clear to its log (SESSION/logs/runtime_env_agent.log; on a cluster,
    the cluster's session logs). The trials need none of them (the sweep folder is a path on a file
    system; trackers' tokens reach a local Ray's trials through the environment its processes
    inherit), so Tune forwards only its and Ray Train's own settings (RAY_*, TRAIN_*, ...) for the
    block, without any secret-like name (segsweep.base.secrets) and without AWS_*.
    """
    from ray.tune.execution import class_cache

    from segsweep.base.secrets import is_secret_name

    forwarded = class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE = {
        name for name in forwarded if not is_secret_name(name) and not name.startswith("AWS_")
    }
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = forwarded


def _object_store_bytes(data: PreparedData) -> int:
    return object_store_bytes(int(data.images.nbytes + data.masks.nbytes))


def object_store_bytes(data_bytes: int) -> int:
    """Room for the one copy of the data plus Ray's own objects."""
    return max(256 * _MIB, data_bytes + 256 * _MIB)


@contextlib.contextmanager
def ray_session(address: str | None, *, object_store_bytes: int) -> Iterator[None]:
    """Join the cluster at ``address``, or start a local Ray on 127.0.0.1; shut it down after.

    A local Ray's private folder is removed after the shutdown, also when the start fails or a
    Ctrl-C or SIGTERM interrupts the start or the shutdown.
    """
    import ray

    if ray.is_initialized():  # a caller (a test, a notebook) runs Ray already: use it as it is
        with _tune_forwards_no_secrets():
            yield
        return
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    with contextlib.ExitStack() as stack:
        # Entered first, so exited last: removed after the shutdown, even if the shutdown is interrupted.
        temp_dir = None if address else stack.enter_context(private_ray_folder())
        stack.callback(_shutdown_ray)
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                start_local_ray(object_store_bytes, **quiet, _temp_dir=temp_dir)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            hint = (
                "; start the head with `ray start --head --port PORT` and pass --address HEAD_IP:PORT "
                "(with RAY_AUTH_MODE=token the driver needs the cluster's token in RAY_AUTH_TOKEN "
                "or ~/.ray/auth_token)"
                if address
                else ""
            )
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot start {where}: {first}{hint}") from None
        stack.enter_context(_tune_forwards_no_secrets())
        yield


def _shutdown_ray() -> None:
    """``ray.shutdown()``, finished even when a Ctrl-C interrupts it.

    Half done, Ray finishes it at the interpreter's exit, after the private folder was removed, and
    makes part of it again (its spilled-objects folder); the second try lets no Ctrl-C stop it.
    """
    import ray

    try:
        ray.shutdown()
    except BaseException:
        with signal_handlers({signal.SIGINT: lambda signum, frame: None}):
            ray.shutdown()
        raise


#: Tries of a local Ray start: Ray gives its raylet a fixed 30 s to register, which a busy machine
#: (a CI runner, a laptop building something else) can miss; a later try usually makes it.
LOCAL_RAY_STARTS = 3
#: The Ray setting of the niceness its workers add to the raylet's (Ray's default: 15).
WORKER_NICENESS_ENV = "RAY_worker_niceness"
#: Ray's switch for clusters of several machines (``ray_constants.ENABLE_RAY_CLUSTER``; off by
#: default on macOS and Windows only). While it is on, Ray turns a node address of 127.0.0.1 into
#: the machine's network address (``services.resolve_ip_for_localhost``), and the GCS, raylet,
#: workers and agents of a one-machine Ray then listen on every interface: measured, a local sweep
#: had its GCS on ``*:PORT`` and its dashboard agent on the LAN address. Off, they listen on 127.0.0.1.
RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _ray_cluster_switch_off() -> Iterator[None]:
    """Ray's multi-machine switch off while a local Ray starts, then as it was.

    The processes Ray starts read the variable (and keep it); this process imported Ray before, so
    its constant is set too. Restored after the start: a later ``ray.init(address=...)`` in the same
    process (a notebook moving to a cluster) must learn the machine's address again.
    """
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(RAY_CLUSTER_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(RAY_CLUSTER_ENV, None)
        else:
            os.environ[RAY_CLUSTER_ENV] = saved_env


def start_local_ray(object_store_bytes: int, **more: Any) -> None:
    """``ray.init`` of a one-machine Ray on 127.0.0.1, tried LOCAL_RAY_STARTS times; ``more`` goes
    to ``ray.init`` (the sweep's quiet logging, a temp folder; the tests' CPU count)."""
    import ray

    # Ray starts its workers at its raylet's niceness + 15 (ray_config_def.h's worker_niceness), so a
    # sweep's trainings yield the CPU to anything else on the machine (measured in studies/kvasir-cpu:
    # beside test suites at nice 19, its trials got a third of a core each). Trials run at the
    # priority the user started the sweep with instead; a RAY_worker_niceness of the user's wins.
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    options = {
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        "object_store_memory": object_store_bytes,
        **more,
    }
    for attempt in range(1, LOCAL_RAY_STARTS + 1):
        try:
            with ray_start_notices_hidden(), _ray_cluster_switch_off():
                ray.init(**options)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            if attempt == LOCAL_RAY_STARTS:
                raise RuntimeError(f"{exc} ({LOCAL_RAY_STARTS} tries; is the machine very busy?)") from None
            print(
                f"[segsweep] Ray was slow to start (busy machine?); try {attempt + 1} of {LOCAL_RAY_STARTS}", flush=True
            )


#: Ray's C++ core warns, before its logging starts, when it cannot reach a public DNS server to learn
#: the machine's address (``network_util.cc``: "Failed to determine local IP via external connectivity
#: to: 8.8.8.8:53 ..."): a machine with no route out, as in many clinics. A local Ray listens on
#: 127.0.0.1 (``_ray_cluster_switch_off``), so the fallback it takes changes nothing for the sweep.
_RAY_NO_ROUTE_NOTICE = re.compile(r"network_util\.cc:\d+: Failed to determine local IP via external connectivity")
#: Ray 2.60 enables token authentication for a new local cluster and warns that it did
#: (``Token authentication is enabled for this Ray cluster...``): the safe default, nothing to act on.
_RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def is_ray_start_notice(line: str) -> bool:
    """Whether ``line`` is one of the notices a local Ray's start writes that a sweep's user cannot act on."""
    return bool(_RAY_NO_ROUTE_NOTICE.search(line))


@contextlib.contextmanager
def ray_start_notices_hidden() -> Iterator[None]:
    """``ray.init`` without its no-route and token-authentication notices (other lines are kept)."""
    from segsweep.base.env import native_logs_shown, startup_noise_filtered

    if native_logs_shown():  # --verbose shows everything
        yield
        return
    token_logger = logging.getLogger(_RAY_TOKEN_LOGGER)
    level = token_logger.level
    token_logger.setLevel(logging.ERROR)
    try:
        with startup_noise_filtered(is_ray_start_notice):
            yield
    finally:
        token_logger.setLevel(level)


def resolve_concurrency(spec: SweepSpec) -> int:
    """The given --concurrency, or as many trials as the cluster's CPUs and GPUs hold at once.

    Also checks that one trial fits on some node, since Ray would otherwise wait for ever.
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = max((float(n["Resources"].get("CPU", 0)) for n in nodes), default=0.0)
    node_gpus = max((float(n["Resources"].get("GPU", 0)) for n in nodes), default=0.0)
    if spec.cpus_per_trial > node_cpus:
        raise ConfigError(
            f"--cpus-per-trial {spec.cpus_per_trial:g} but the largest node has {node_cpus:g} CPUs; "
            f"use --cpus-per-trial {node_cpus:g} or less"
        )
    if spec.gpus_per_trial > node_gpus:
        raise ConfigError(
            f"--gpus-per-trial {spec.gpus_per_trial:g} but the largest node has {node_gpus:g} GPUs; "
            + ("use --gpus-per-trial 0 (no GPU found)" if node_gpus == 0 else f"use {node_gpus:g} or less")
        )
    if spec.concurrency:
        return spec.concurrency
    total = ray.cluster_resources()
    fits = int(float(total.get("CPU", 0)) // spec.cpus_per_trial)
    if spec.gpus_per_trial:
        fits = min(fits, int(float(total.get("GPU", 0)) // spec.gpus_per_trial))
    return max(1, min(fits, spec.trials))


def _ray_trial_statuses(grid: Any) -> dict[str, str]:
    """Ray's final status of every trial it knows (TERMINATED, ERROR, or unfinished ones)."""
    analysis = getattr(grid, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None) or []
    return {str(t.trial_id): str(t.status) for t in trials}


def _reconcile(spec: SweepSpec, statuses: dict[str, str], *, stopped: bool = False) -> bool:
    """Settle trial.json and the study where a driver death left them RUNNING; True if finished.

    A proposal Ray never recorded (driver killed between proposing and snapshotting) is FAILED
    with that reason; Ray drew a replacement when it resumed. After a stop, Tune calls every
    unfinished trial TERMINATED in memory while its saved state resumes them: those stay RUNNING.
    """
    from sweeps._optuna import reconcile_study

    records: dict[str, TrialRecord] = {}
    for folder in spec.folder.trial_dirs():
        record = read_trial_record(folder)
        if record.empty:
            continue
        if record.state == RUNNING:
            status = statuses.get(folder.name)
            if status is None:
                record = update_trial_record(
                    folder,
                    state=FAILED,
                    ended=now(),
                    reason="the sweep driver stopped before this proposal started; Ray drew another",
                )
            elif status == "TERMINATED":
                done = record.all_folds_done
                if done or not stopped:
                    record = update_trial_record(folder, state=COMPLETE if done else PRUNED, ended=now())
            elif status == "ERROR":
                record = update_trial_record(folder, state=FAILED, ended=now())
        records[folder.name] = record
    from sweeps._optuna import space_exhausted

    # The searcher ends a sweep whose space holds no unscored configuration before --trials: finished.
    exhausted = space_exhausted(spec.sweep_dir, spec.name) is not None
    finished = (bool(statuses) or exhausted) and all(s in ("TERMINATED", "ERROR") for s in statuses.values())
    # Finished when every trial asked for has ended, stop or not: a trial that a stop ended
    # unfinished is still RUNNING in its record (it resumes); one that ended before the stop is not.
    ended = all(records[trial_id].state != RUNNING for trial_id in statuses if trial_id in records)
    finished = finished and (len(statuses) >= spec.trials or exhausted) and ended
    if finished:
        reconcile_study(spec.sweep_dir, spec.name, records)
    return finished


def _record_run(spec: SweepSpec, wall: float, restore: bool, finished: bool, stopped: str | None) -> None:
    """Append this run's wall time to sweep.json (per-trial overhead = wall - training time)."""
    from sweeps._optuna import space_exhausted

    record = read_spec_record(spec.folder)
    run = {"ended": now(), "wall_seconds": round(wall, 2), "resumed": restore, "finished": finished, "stopped": stopped}
    exhausted = space_exhausted(spec.sweep_dir, spec.name) if finished else None
    if exhausted:  # said by `sweep list` and `sweep status`: why fewer trials than --trials ran
        run["exhausted"] = exhausted
    record.runs.append(run)
    write_spec_record(spec.folder, record)
