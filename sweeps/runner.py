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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeps._trainable import CVRunner, TrialSetup
from sweeps.folder import (
    COMPLETE,
    FAILED,
    PRUNED,
    RUNNING,
    SweepResults,
    load_sweep,
    now,
    read_spec_record,
    read_trial_record,
    update_trial_record,
    write_spec_record,
)
from sweeps.spec import OVERRIDE_KEYS, SweepSpec
from trainer.errors import ConfigError

if TYPE_CHECKING:
    from search_spaces import SearchSpace
    from trainer.config import CVConfig
    from trainer.data import PreparedData

#: ASHA's reduction factor: at each rung (1, 3, 9 folds) a trial goes on only if its running mean
#: Dice is in the top third of the trials that reached that rung.
ASHA_REDUCTION_FACTOR = 3
_MIB = 1 << 20


@dataclasses.dataclass
class SweepOutcome:
    """What a run or resume of a sweep ended with."""

    results: SweepResults
    finished: bool
    wall_seconds: float


def run_sweep(spec: SweepSpec, *, cv_runner: CVRunner | None = None) -> SweepOutcome:
    """Start a new sweep in STORAGE/NAME and run it to the end (or until interrupted)."""
    from search_spaces import load_space

    spec.validate()
    spec.storage = str(Path(spec.storage).resolve())
    spec.data = str(Path(spec.data).resolve())
    if spec.folder.exists():
        raise ConfigError(
            f"a sweep named {spec.name!r} exists in {spec.storage}; continue it with "
            f"`segsweep sweep resume {spec.name} --storage {spec.storage}`, or choose another --name"
        )
    space = load_space(spec.space)
    spec.space_definition = space.to_dict()
    return _execute(spec, space, restore=False, cv_runner=cv_runner)


def resume_sweep(
    storage: str | Path | None, name: str, *, cv_runner: CVRunner | None = None, address: str | None = None
) -> SweepOutcome:
    """Finish a sweep whose driver stopped: finished trials and folds are not trained again.

    ``address``: the Ray cluster to continue on, where it is not the one the sweep started on (a
    resubmitted Slurm job starts a new Ray head).
    """
    from ray import tune

    from search_spaces import SearchSpace

    spec = SweepSpec.read(storage, name)
    if address is not None:
        spec.address = address
    space = SearchSpace.from_dict(spec.space_definition, source=str(spec.folder.spec_file))
    restore = tune.Tuner.can_restore(str(spec.folder.ray_dir))
    return _execute(spec, space, restore=restore, cv_runner=cv_runner)


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
    spec: SweepSpec, space: SearchSpace, *, restore: bool, cv_runner: CVRunner | None
) -> SweepOutcome:
    import optuna
    from ray import tune

    from sweeps._callbacks import SweepCallback
    from sweeps._optuna import make_searcher
    from sweeps._trainable import run_trial
    from trainer.data import prepare_dataset, read_split

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    overrides = spec.cv_overrides()
    probe = probe_config(space, overrides, spec.seed)
    print(f"[segsweep] preparing {spec.data} at {probe.image_size}px", flush=True)
    data = prepare_dataset(spec.data, probe.image_size, split=probe.dev_split, limit=probe.limit)
    val_stems = tuple(read_split(spec.data, probe.val_split)) if probe.val_split else None
    n_folds = 1 if probe.val_split else probe.folds
    print(f"[segsweep] {len(data)} pairs ready ({data.key}); {n_folds} folds per trial", flush=True)

    # Tune's experiment snapshot holds every trial, so its cost grows with the sweep: taken on every
    # fold (what CheckpointConfig(num_to_keep=1) forces) or every 3 s, it made the driver's cost per
    # trial grow with the number of trials (benchmarks/bench_sweep_scale.py). Tune's "auto" period
    # keeps snapshots under 5% of the driver's time; a driver killed between two loses no fold (the
    # fold files in each trial folder are what a resumed trial starts from).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "auto")
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
            threads=max(1, math.ceil(spec.cpus_per_trial)),
            spec=spec.to_dict(),
            val_stems=val_stems,
            cv_runner=cv_runner,
        )
        resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
        # with_parameters puts the data into the object store once; every trial maps that copy.
        trainable = tune.with_resources(tune.with_parameters(run_trial, data=shared, setup=setup), resources)
        ray_dir = spec.folder.ray_dir
        if restore:
            print(f"[segsweep] resuming sweep {spec.name!r} from {ray_dir}", flush=True)
            tuner = tune.Tuner.restore(
                str(ray_dir), trainable=trainable, resume_unfinished=True, resume_errored=False,
                restart_errored=False,
            )
        else:
            from ray.tune.search import ConcurrencyLimiter

            searcher = make_searcher(
                spec.sweep_dir, spec.name, space.define_by_run, spec.trials, spec.concurrency, spec.seed
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.concurrency),
                    scheduler=make_scheduler(spec.scheduler, n_folds),
                    num_samples=spec.trials,
                    reuse_actors=True,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=ray_dir.name,
                    storage_path=str(ray_dir.parent),
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    # Each fold's checkpoint holds all fold files so far: the latest one suffices,
                    # but Tune forces an experiment snapshot whenever a trial made num_to_keep
                    # checkpoints since the last one; one more than a trial's folds never does.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=n_folds + 1),
                    callbacks=[SweepCallback(spec.sweep_dir, spec.name)],
                    log_to_file=True,
                    verbose=1,
                ),
            )
            print(
                f"[segsweep] sweep {spec.name!r}: {spec.trials} trials, {spec.concurrency} at a time, "
                f"scheduler {spec.scheduler}; study {spec.folder.optuna_db}",
                flush=True,
            )
        tracking = _start_sweep_tracking(spec)
        grid = tuner.fit()
        statuses = _ray_trial_statuses(grid)
    finished = _reconcile(spec, statuses)
    wall = time.perf_counter() - started
    _record_run(spec, wall, restore, finished)
    outcome = SweepOutcome(load_sweep(spec.storage, spec.name), finished, wall)
    if tracking and finished:  # an unfinished sweep keeps its parent runs open for `sweep resume`
        _finish_sweep_tracking(spec, outcome)
    return outcome


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


def make_scheduler(name: str, n_folds: int) -> Any:
    """ASHA on the running mean Dice, time measured in folds done (or FIFO for ``none``)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    from sweeps._optuna import METRIC, MODE

    if name == "none" or n_folds < 2:
        return FIFOScheduler()
    return AsyncHyperBandScheduler(
        time_attr="folds_done", metric=METRIC, mode=MODE, max_t=n_folds, grace_period=1,
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


def _object_store_bytes(data: PreparedData) -> int:
    return object_store_bytes(int(data.images.nbytes + data.masks.nbytes))


def object_store_bytes(data_bytes: int) -> int:
    """Room for the one copy of the data plus Ray's own objects."""
    return max(256 * _MIB, data_bytes + 256 * _MIB)


@contextlib.contextmanager
def ray_session(address: str | None, *, object_store_bytes: int) -> Iterator[None]:
    """Join the cluster at ``address``, or start a local Ray on 127.0.0.1; shut it down after."""
    import ray

    if ray.is_initialized():  # a caller (a test, a notebook) runs Ray already: use it as it is
        yield
        return
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            _start_local_ray(object_store_bytes, quiet)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        hint = (
            "; start the head with `ray start --head --port PORT` and pass --address HEAD_IP:PORT "
            "(with RAY_AUTH_MODE=token the driver needs the cluster's token in RAY_AUTH_TOKEN "
            "or ~/.ray/auth_token)"
            if address else ""
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot start {where}: {first}{hint}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _start_local_ray(object_store_bytes: int, quiet: dict[str, Any]) -> None:
    import ray

    options = {"include_dashboard": False, "_node_ip_address": "127.0.0.1",
               "object_store_memory": object_store_bytes, **quiet}
    try:
        ray.init(**options)
    except Exception as exc:
        # Ray gives its raylet a fixed 30 s to register; on a loaded machine a second try succeeds.
        if "timed out during startup" not in str(exc):
            raise
        ray.shutdown()
        print("[segsweep] Ray was slow to start (busy machine?); trying once more", flush=True)
        try:
            ray.init(**options)
        except Exception as again:
            raise RuntimeError(str(again)) from None


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


def _reconcile(spec: SweepSpec, statuses: dict[str, str]) -> bool:
    """Settle trial.json and the study where a driver death left them RUNNING; True if finished.

    A proposal Ray never recorded (driver killed between proposing and snapshotting) is FAILED
    with that reason; Ray drew a replacement when it resumed.
    """
    from sweeps._optuna import reconcile_study

    records: dict[str, dict[str, Any]] = {}
    for folder in spec.folder.trial_dirs():
        record = read_trial_record(folder)
        if not record:
            continue
        if record.get("state") == RUNNING:
            status = statuses.get(folder.name)
            if status is None:
                record = update_trial_record(
                    folder, state=FAILED, ended=now(),
                    reason="the sweep driver stopped before this proposal started; Ray drew another",
                )
            elif status == "TERMINATED":
                done = int(record.get("folds_done") or 0) >= int(record.get("n_folds") or 1 << 30)
                record = update_trial_record(folder, state=COMPLETE if done else PRUNED, ended=now())
            elif status == "ERROR":
                record = update_trial_record(folder, state=FAILED, ended=now())
        records[folder.name] = record
    finished = bool(statuses) and all(s in ("TERMINATED", "ERROR") for s in statuses.values())
    finished = finished and len(statuses) >= spec.trials
    if finished:
        reconcile_study(spec.sweep_dir, spec.name, records)
    return finished


def _record_run(spec: SweepSpec, wall: float, restore: bool, finished: bool) -> None:
    """Append this run's wall time to sweep.json (per-trial overhead = wall - training time)."""
    values = read_spec_record(spec.folder)
    values.setdefault("runs", []).append(
        {"ended": now(), "wall_seconds": round(wall, 2), "resumed": restore, "finished": finished}
    )
    write_spec_record(spec.folder, values)
