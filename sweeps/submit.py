"""``segsweep sweep submit``: the sweep driver as a Slurm job or a Ray Job, detached from the shell.

Two ways onto a cluster, one record: each submission is appended to the sweep folder's
submitted.json (kind, job id, Ray Jobs' address), which ``sweep status`` and ``sweep stop`` read
from the submitting machine.

* Slurm (:mod:`sweeps._slurm`): a batch script in the sweep folder starts Ray on the job's nodes,
  runs ``segsweep sweep run`` (or ``resume``) against it and stops Ray; ``sbatch`` submits it.
* Ray Jobs (:mod:`sweeps._rayjob`): the driver runs on a running Ray cluster's head as a Ray Job.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segsweep.base.errors import ConfigError
from sweeps._slurm import SlurmOptions
from sweeps.folder import SweepFolder, append_submission, now, read_submissions, request_stop, storage_path
from sweeps.spec import OVERRIDES, RUN_OPTIONS, SweepSpec

SLURM, RAY_JOB = "slurm", "ray-job"
#: Lines of a job's log that ``sweep status`` shows.
LOG_TAIL_LINES = 15


@dataclass
class Submitted:
    """What ``sweep submit`` did: the job (None for a dry run) and where its script and log are."""

    kind: str
    job_id: str | None
    folder: SweepFolder
    script: Path | None = None
    address: str | None = None


#: ``sweep run`` options a job is not given: it joins the Ray its job starts, and it cannot read the
#: submitting machine's files (checked_spec refuses both).
NOT_CARRIED = ("address", "start")


def run_argv(spec: SweepSpec) -> list[str]:
    """The ``segsweep sweep run`` command line that makes ``spec`` (without ``--address``).

    The inverse of ``sweeps.cli.spec_from_args``, derived from the same declaration
    (``sweeps.spec.RUN_OPTIONS``), so an option added there reaches submitted jobs too; a test parses
    it back to the same spec. Every set value is said: a cluster's environment (its
    SEGSWEEP_MIXED_PRECISION, say) decides nothing the submitting user chose.
    """
    argv = ["segsweep", "sweep", "run"]
    for option in RUN_OPTIONS:
        if option.key in NOT_CARRIED:
            continue
        value = spec.overrides.get(option.key) if option.target == OVERRIDES else getattr(spec, option.target)
        if option.action == "store_true":
            argv += [option.flag] if value else []
        elif value is not None:
            argv += [option.flag, _argument_text(value)]
    return argv


def _argument_text(value: Any) -> str:
    """``value`` as the command line gives it back: floats in their shortest plain decimals (5400, 0.5),
    since --time-budget takes no exponent."""
    if isinstance(value, float):
        import numpy as np

        return np.format_float_positional(value, trim="-")
    return str(value)


def checked_spec(spec: SweepSpec) -> tuple[SweepSpec, int]:
    """``spec`` with absolute paths, checked as far as the submitting machine can (options, space,
    data folder, no sweep of that name yet); and the Ray object store size its data needs."""
    from search_spaces import load_space

    spec.validate()
    if spec.start:
        # The job's command line names no files of this machine; the entries would be lost on the way.
        raise ConfigError(
            "--start is not carried by `sweep submit`: put the starting points in the space file's `start:` "
            "list (see search_spaces/builtin/cpu.yaml) and submit with --space FILE"
        )
    if spec.address is not None:
        raise ConfigError(
            "--address is for `sweep run`; a submitted sweep starts Ray in its job (Slurm) or "
            "runs on the cluster given by --ray"
        )
    spec.storage = str(storage_path(spec.storage).resolve())
    if Path(spec.space).is_file():
        spec.space = str(Path(spec.space).resolve())
    data = Path(spec.data).resolve()
    spec.data = str(data)
    if not (data / "images").is_dir():
        raise ConfigError(
            f"--data {data}: no images/ folder there; the job must see the data set at this path "
            "(a file system every node mounts)"
        )
    if spec.folder.exists():
        raise ConfigError(
            f"a sweep named {spec.name!r} exists in {spec.storage}; continue it with "
            f"`segsweep sweep submit {spec.name} --storage {spec.storage} --resume`, or choose another --name"
        )
    return spec, _object_store_for(spec, load_space(spec.space))


def _object_store_for(spec: SweepSpec, space: Any) -> int:
    """Ray's object store per node for the sweep's prepared data (an upper bound: every pair)."""
    import optuna

    from sweeps.runner import object_store_bytes, probe_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = probe_config(space, spec.cv_overrides(), spec.seed)
    images = Path(spec.data) / "images"
    n_pairs = sum(1 for p in images.iterdir() if p.is_file()) if images.is_dir() else 0
    if probe.limit:
        n_pairs = min(n_pairs, probe.limit)
    return object_store_bytes(n_pairs * probe.image_size * probe.image_size * 4)  # RGB + mask, uint8


# --- Slurm ------------------------------------------------------------------------------------


def default_setup() -> list[str]:
    """Activate the virtual environment segsweep runs from (on every node, at the same path)."""
    if sys.prefix != sys.base_prefix:
        return [f"source {Path(sys.prefix) / 'bin' / 'activate'}"]
    return []


def submit_slurm(spec: SweepSpec, options: SlurmOptions, *, dry_run: bool = False) -> Submitted:
    """Write SWEEP/slurm.sbatch for a new sweep and submit it (``dry_run``: only write it)."""
    options.validate()
    spec, store = checked_spec(spec)
    return _write_and_submit(spec.folder, options, run_argv(spec), store, dry_run)


def _write_and_submit(
    folder: SweepFolder, options: SlurmOptions, argv: list[str], store: int, dry_run: bool
) -> Submitted:
    from sweeps._slurm import batch_script

    folder.logs_dir.mkdir(parents=True, exist_ok=True)
    script = folder.slurm_script
    script.write_text(batch_script(folder, options, argv, store, now()))
    script.chmod(0o755)
    if dry_run:
        return Submitted(SLURM, None, folder, script)
    return _sbatch(folder, resume=False)


def _sbatch(folder: SweepFolder, *, resume: bool) -> Submitted:
    from sweeps._slurm import sbatch

    job_id = sbatch(folder.slurm_script)
    append_submission(folder, kind=SLURM, job_id=job_id, resume=resume)
    return Submitted(SLURM, job_id, folder, folder.slurm_script)


def resubmit(
    storage: str | Path | None,
    name: str,
    *,
    slurm: SlurmOptions | None = None,
    ray: str | None = None,
    dry_run: bool = False,
) -> Submitted:
    """Submit an interrupted sweep again, the way it was submitted before (or as ``slurm``/``ray`` say).

    Slurm: the batch script in the sweep folder as it is (hand edits kept), or written anew where
    ``slurm`` options are given. Ray Jobs: a new job running ``sweep resume`` on the cluster.
    """
    folder = SweepFolder.at(storage, name)
    folder = SweepFolder(folder.path.resolve())
    submissions = read_submissions(folder)
    last = submissions[-1] if submissions else None
    if last is not None and slurm is None and ray is None:
        _refuse_if_running(folder, last)
    kind = SLURM if slurm is not None else RAY_JOB if ray else (last or {}).get("kind")
    if kind == SLURM:
        if slurm is not None or not folder.slurm_script.is_file():
            spec = SweepSpec.read(folder.storage, name)  # NoSuchSweep when nothing is there
            spec.address = None
            from search_spaces import SearchSpace

            options = slurm or SlurmOptions(setup=default_setup())
            options.validate()
            space = SearchSpace.from_dict(spec.space_definition, source=str(folder.spec_file))
            return _write_and_submit(folder, options, run_argv(spec), _object_store_for(spec, space), dry_run)
        if dry_run:
            return Submitted(SLURM, None, folder, folder.slurm_script)
        return _sbatch(folder, resume=True)
    if kind == RAY_JOB:
        from sweeps import _rayjob

        folder.require()
        address = ray or str((last or {}).get("address"))
        job_id = _rayjob.submit(address, folder, _resume_argv(folder), dry_run=dry_run)
        if job_id is not None:
            append_submission(folder, kind=RAY_JOB, job_id=job_id, address=address, resume=True)
        return Submitted(RAY_JOB, job_id, folder, address=address)
    folder.require()
    raise ConfigError(
        f"sweep {name!r} was not submitted before; say where it goes on: --slurm or --ray URL "
        f"(or continue it here with `segsweep sweep resume {folder.cli_args}`)"
    )


def _resume_argv(folder: SweepFolder) -> list[str]:
    return ["segsweep", "sweep", "resume", folder.name, "--storage", str(folder.storage)]


#: Job states in which a job may still be running its driver (Slurm's and Ray Jobs' names).
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"})


def _refuse_if_running(folder: SweepFolder, last: dict[str, Any]) -> None:
    state = submission_state(last)
    if state in ACTIVE_STATES:
        raise ConfigError(
            f"sweep {folder.name!r} is still {state} as {_job_label(last)}; stop it first with "
            f"`segsweep sweep stop {folder.cli_args}` (or wait for it)"
        )


# --- Ray Jobs ---------------------------------------------------------------------------------


def submit_ray_job(spec: SweepSpec, address: str, *, dry_run: bool = False) -> Submitted:
    """Submit the sweep's driver as a Ray Job to the cluster whose dashboard is at ``address``."""
    from sweeps import _rayjob

    spec, _store = checked_spec(spec)  # the cluster's Ray already sized its object store
    job_id = _rayjob.submit(address, spec.folder, run_argv(spec), dry_run=dry_run)
    if job_id is not None:
        append_submission(spec.folder, kind=RAY_JOB, job_id=job_id, address=address, resume=False)
    return Submitted(RAY_JOB, job_id, spec.folder, address=address)


# --- status and stop from the submitting machine ----------------------------------------------


def last_submission(folder: SweepFolder) -> dict[str, Any] | None:
    submissions = read_submissions(folder)
    return submissions[-1] if submissions else None


def _job_label(submission: dict[str, Any]) -> str:
    if submission.get("kind") == SLURM:
        return f"Slurm job {submission.get('job_id')}"
    return f"Ray Job {submission.get('job_id')} at {submission.get('address')}"


def submission_state(submission: dict[str, Any]) -> str | None:
    """The job's state as its scheduler tells it now (None where it cannot be asked)."""
    if submission.get("kind") == SLURM:
        from sweeps._slurm import job_state

        return job_state(str(submission["job_id"]))
    from sweeps import _rayjob

    try:
        return _rayjob.status(str(submission["address"]), str(submission["job_id"]))
    except ConfigError:
        return None


def describe(folder: SweepFolder) -> list[str] | None:
    """Lines about the sweep's last submitted job (state, end of its log); None if never submitted."""
    last = last_submission(folder)
    if last is None:
        return None
    state = submission_state(last) or "unknown (the scheduler did not answer)"
    lines = [f"{_job_label(last)}, submitted {last.get('submitted')}: {state}"]
    if last.get("kind") == SLURM:
        log = folder.slurm_log(str(last["job_id"]))
        text = log.read_text(errors="replace") if log.is_file() else ""
        lines.append(f"log {log}" + ("" if text else " (not written yet)"))
    else:
        from sweeps import _rayjob

        try:
            text = _rayjob.logs(str(last["address"]), str(last["job_id"]))
        except ConfigError as exc:
            text = f"(logs unavailable: {exc})"
        lines.append("log (last lines):")
    lines.extend("  " + line for line in text.splitlines()[-LOG_TAIL_LINES:])
    return lines


def follow(folder: SweepFolder) -> str | None:
    """Stream the last Ray Job's log until the job ends; its final state (None if not a Ray Job)."""
    from sweeps import _rayjob

    last = last_submission(folder)
    if last is None or last.get("kind") != RAY_JOB:
        return None
    return _rayjob.follow(str(last["address"]), str(last["job_id"]))


def stop(folder: SweepFolder, *, at_once: bool = False) -> str | None:
    """Stop the sweep's job through its scheduler, gracefully (the driver saves the sweep's state);
    what was done, or None when the sweep has no job that is still active.

    ``at_once`` (``--now``) first tells the driver (stop.json), which then takes the scheduler's signal as "stop now"
    rather than "let the running folds finish".
    """
    last = last_submission(folder)
    if last is None or submission_state(last) not in ACTIVE_STATES:
        return None
    if at_once:
        request_stop(folder, "stopped by `segsweep sweep stop --now`", now=True)
    if last.get("kind") == SLURM:
        from sweeps._slurm import cancel

        cancel(str(last["job_id"]))
        return f"asked {_job_label(last)} to stop (SIGTERM to its batch script: driver, then Ray)"
    from sweeps import _rayjob

    _rayjob.stop(str(last["address"]), str(last["job_id"]))
    return f"asked {_job_label(last)} to stop (SIGINT to the driver: Ray Tune saves the sweep's state)"
