"""The ``segsweep`` command's root, and the sweeps package's own verbs (``sweep``, ``ui``).

Each package registers its verbs from its own ``cli.py``; the table of those registrations is the
``segsweep.verbs`` entry-point group in pyproject.toml (named ``<stage>.<package>``, listed in
pipeline order), so the root names no package it does not build on. Heavy imports (TensorFlow,
Ray) happen inside the verbs: ``segsweep --help``, ``--version`` and option errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

import trainer._env  # noqa: F401  (sets the Keras environment before anything imports it)
from trainer import version
from trainer.errors import ConfigError, SegsweepError

#: Entry-point group through which each package adds its verbs: ``register(subparsers)``.
VERBS_GROUP = "segsweep.verbs"


def verb_registrations() -> list[Callable[[Any], None]]:
    """Every package's ``register`` function, in pipeline order (trainer, sweeps, reports)."""
    found = sorted(entry_points(group=VERBS_GROUP), key=lambda e: e.name)
    if not found:
        raise SystemExit(
            "segsweep: no verbs registered; install the project (`pip install -c constraints.txt -e .`)"
        )
    return [e.load() for e in found]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segsweep",
        description="Hyperparameter sweeps with experiment tracking for medical image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"segsweep {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register_verbs in verb_registrations():
        register_verbs(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except SegsweepError as exc:
        print(f"segsweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segsweep: interrupted", file=sys.stderr)
        return 130
    return code


# --- the sweeps package's verbs -------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add ``segsweep sweep run|resume|status`` and ``segsweep ui``."""
    from sweeps.folder import storage_help
    from sweeps.spec import SweepSpec

    defaults = SweepSpec(name="", data="", space="", trials=0, storage="")
    sweep = sub.add_parser(
        "sweep",
        help="run, resume or inspect a hyperparameter sweep",
        description="Optuna proposes configurations, Ray Tune runs each as a cross-validation.",
    )
    verbs = sweep.add_subparsers(dest="sweep_command", metavar="ACTION", required=True)

    run = verbs.add_parser(
        "run",
        help="start a sweep",
        description="Start a sweep in STORAGE/NAME (sweep.json, optuna.db, trials/, ray/). It runs on a "
        "local Ray on this machine, or on a running Ray cluster with --address.",
    )
    add_run_options(run, defaults)
    run.set_defaults(handler=_cmd_run)

    resume = verbs.add_parser(
        "resume",
        help="finish a sweep whose driver stopped",
        description="Continue STORAGE/NAME: unfinished trials resume at their first unfinished fold, "
        "finished trials and folds are kept.",
    )
    resume.add_argument("name", help="sweep name")
    resume.add_argument("--storage", default=None, help=storage_help())
    resume.add_argument("--address", default=None,
                        help="HOST:PORT of the Ray cluster to continue on (default: the sweep's own --address)")
    resume.set_defaults(handler=_cmd_resume)

    status = verbs.add_parser("status", help="print a sweep's leaderboard (and its submitted job's state)")
    status.add_argument("name", help="sweep name")
    status.add_argument("--storage", default=None, help=storage_help())
    status.add_argument("--follow", action="store_true", help="stream a submitted Ray Job's log until it ends")
    status.set_defaults(handler=_cmd_status)

    _register_submit(verbs, defaults)
    stop = verbs.add_parser("stop", help="stop a submitted sweep's job (Slurm or Ray Job); resumable")
    stop.add_argument("name", help="sweep name")
    stop.add_argument("--storage", default=None, help=storage_help())
    stop.set_defaults(handler=_cmd_stop)

    _register_ui(sub)


def add_run_options(parser: Any, defaults: Any, *, required: bool = True) -> None:
    """The options of ``sweep run``, shared by ``sweep submit`` (which checks ``required`` itself,
    since ``submit NAME --resume`` takes none of them)."""
    from sweeps.folder import storage_help
    from sweeps.spec import SCHEDULERS

    parser.add_argument("--data", required=required, help="data set folder with images/ and masks/")
    parser.add_argument("--space", required=required, help="search space: paper, quick, or a YAML file")
    parser.add_argument("--trials", required=required, type=int, help="number of configurations to try")
    parser.add_argument("--name", required=required, help="sweep name (folder and Optuna study name)")
    parser.add_argument("--storage", default=None, help=storage_help())
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency,
                        help="trials at a time (default: as many as the CPUs/GPUs hold)")
    parser.add_argument("--cpus-per-trial", type=float, default=defaults.cpus_per_trial,
                        help=f"CPUs per trial (default {defaults.cpus_per_trial:g})")
    parser.add_argument("--gpus-per-trial", type=float, default=defaults.gpus_per_trial,
                        help="GPUs per trial, fractions allowed (0.5: two trials share a card; "
                        f"default {defaults.gpus_per_trial:g})")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=defaults.scheduler,
                        help=f"asha stops weak trials after their first folds, none runs all folds "
                        f"(default {defaults.scheduler})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"seed of the sampler and of every trial's folds (default {defaults.seed})")
    parser.add_argument("--address", default=defaults.address,
                        help="HOST:PORT of a running Ray cluster's head (default: start Ray on this machine)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs (quick runs)")
    parser.add_argument("--image-size", type=int, default=None, help="override the space's image size")
    parser.add_argument("--folds", type=int, default=None, help="override the space's number of folds")
    parser.add_argument("--epochs", type=int, default=None, help="override the space's epochs")
    parser.add_argument("--dev-split", default=None,
                        help="split file (or its name in the data set, e.g. medico2020_train) listing the "
                        "development stems; keep a test set out of the sweep (default: every pair)")
    parser.add_argument("--tracker", default=defaults.tracker,
                        help="comma-separated trackers for every trial: mlflow, neptune, or none "
                        "(default: mlflow, plus neptune when NEPTUNE_PROJECT is set)")


def _register_submit(verbs: Any, defaults: Any) -> None:

    submit = verbs.add_parser(
        "submit",
        help="run a sweep's driver as a Slurm job or a Ray Job (detached)",
        description="Submit the sweep driver to a cluster and return: --slurm writes STORAGE/NAME/slurm.sbatch "
        "(Ray on the job's nodes, the driver, Ray stopped after) and submits it with sbatch; --ray URL submits "
        "it as a Ray Job to a running cluster. Takes `sweep run`'s options; `submit NAME --resume` continues "
        "an interrupted sweep.",
    )
    submit.add_argument("resume_name", nargs="?", metavar="NAME", help="with --resume: the sweep to continue")
    where = submit.add_mutually_exclusive_group()
    where.add_argument("--slurm", action="store_true", help="submit a Slurm batch job (sbatch)")
    where.add_argument("--ray", metavar="URL", default=None,
                       help="submit a Ray Job to the cluster whose dashboard is at URL (http://HEAD_IP:8265)")
    submit.add_argument("--resume", action="store_true",
                        help="continue sweep NAME: resubmit its batch script as it is, or a new Ray Job")
    submit.add_argument("--dry-run", action="store_true",
                        help="write the batch script (or show the job); submit nothing")
    submit.add_argument("--follow", action="store_true", help="Ray Jobs: stream the job's log until it ends")
    slurm = submit.add_argument_group("Slurm")
    slurm.add_argument("--nodes", type=int, default=1, help="nodes (default 1); Ray's head runs on the first")
    slurm.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default 0)")
    slurm.add_argument("--cpus-per-node", type=int, default=None,
                       help="CPUs per node (default: whole nodes, --exclusive)")
    slurm.add_argument("--time", default=None, help="time limit, HH:MM:SS or D-HH:MM:SS (default: the partition's)")
    slurm.add_argument("--partition", default=None, help="Slurm partition")
    slurm.add_argument("--account", default=None, help="Slurm account")
    slurm.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                       help="one more sbatch option for the script, e.g. --sbatch-arg=--qos=long (repeatable)")
    slurm.add_argument("--setup", action="append", default=None, metavar="LINE",
                       help="shell line run on the nodes before segsweep, e.g. 'module load cuda/12' (repeatable; "
                       "default: activate the virtual environment segsweep runs from)")
    add_run_options(submit, defaults, required=False)
    submit.set_defaults(handler=_cmd_submit)


def _register_ui(sub: Any) -> None:
    from sweeps.folder import storage_help
    from sweeps.ui import DEFAULT_MLFLOW_PORT, DEFAULT_OPTUNA_PORT

    ui = sub.add_parser(
        "ui",
        help="open MLflow's UI and optuna-dashboard for a sweep",
        description="Serve MLflow's UI (the sweep's mlflow.db) and optuna-dashboard (its optuna.db) on "
        "127.0.0.1 and print both addresses; Ctrl-C stops both with every process they started.",
    )
    ui.add_argument("name", help="the sweep's name (its folder under --storage)")
    ui.add_argument("--storage", default=None, help=storage_help())
    ui.add_argument("--port-mlflow", type=int, default=DEFAULT_MLFLOW_PORT,
                    help=f"MLflow UI port (default {DEFAULT_MLFLOW_PORT}; 0 picks a free one)")
    ui.add_argument("--port-optuna", type=int, default=DEFAULT_OPTUNA_PORT,
                    help=f"optuna-dashboard port (default {DEFAULT_OPTUNA_PORT}; 0 picks a free one)")
    ui.set_defaults(handler=_cmd_ui)


def spec_from_args(args: argparse.Namespace) -> Any:
    """The SweepSpec that ``sweep run``'s options (see :func:`add_run_options`) describe."""
    from sweeps.folder import default_storage
    from sweeps.spec import SweepSpec

    return SweepSpec(
        name=args.name,
        data=args.data,
        space=args.space,
        trials=args.trials,
        storage=str(args.storage or default_storage()),
        concurrency=args.concurrency,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        scheduler=args.scheduler,
        seed=args.seed,
        address=args.address,
        overrides={"limit": args.limit, "image_size": args.image_size, "folds": args.folds,
                   "epochs": args.epochs, "dev_split": args.dev_split},
        tracker=args.tracker,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from sweeps.runner import run_sweep

    spec = spec_from_args(args)
    spec.validate()  # before any heavy import: option errors answer at once
    return _finish(run_sweep(spec))


def _cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.runner import resume_sweep

    return _finish(resume_sweep(args.storage, args.name, address=args.address))


def _cmd_status(args: argparse.Namespace) -> int:
    from sweeps.folder import NoSuchSweep, SweepFolder, format_leaderboard, load_sweep
    from sweeps.submit import describe, follow

    folder = SweepFolder.at(args.storage, args.name)
    job = describe(folder)
    if args.follow and follow(folder) is not None:
        job = describe(folder)
    if job:
        print("\n".join(job))
    if not folder.exists():
        if job is None:
            raise NoSuchSweep(folder)
        print(f"(no sweep.json in {folder.path} yet: the job has not started the sweep)")
        return 0
    sweep = load_sweep(args.storage, args.name)
    _warn(sweep.warnings)
    print(format_leaderboard(sweep))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from sweeps import submit

    options = submit.SlurmOptions(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node, time=args.time,
        partition=args.partition, account=args.account, sbatch_args=list(args.sbatch_arg),
        setup=list(args.setup) if args.setup is not None else submit.default_setup(),
    )
    if args.resume:
        name = args.resume_name or args.name
        if not name:
            raise ConfigError("--resume needs the sweep's name: `segsweep sweep submit NAME --resume`")
        done = submit.resubmit(args.storage, name, slurm=options if args.slurm else None, ray=args.ray,
                               dry_run=args.dry_run)
    else:
        if args.resume_name:
            raise ConfigError(f"{args.resume_name!r}: a new sweep takes --name; to continue one, add --resume")
        missing = [f"--{o}" for o in ("data", "space", "trials", "name") if getattr(args, o) is None]
        if missing:
            raise ConfigError(f"a new sweep needs {', '.join(missing)} (as `sweep run` does)")
        if not args.slurm and not args.ray:
            raise ConfigError("say where the sweep runs: --slurm, or --ray http://HEAD_IP:8265")
        spec = spec_from_args(args)
        done = (submit.submit_slurm(spec, options, dry_run=args.dry_run) if args.slurm
                else submit.submit_ray_job(spec, args.ray, dry_run=args.dry_run))
    where = f" --storage {done.folder.storage}"
    if done.job_id is None:
        print(f"[segsweep] dry run: wrote {done.script}" if done.script else "[segsweep] dry run: nothing submitted")
        return 0
    print(f"[segsweep] submitted {done.kind} job {done.job_id}" + (f" to {done.address}" if done.address else ""))
    if done.script:
        print(f"[segsweep] script {done.script}; log {done.folder.slurm_log(done.job_id)}")
    print(f"[segsweep] follow it with `segsweep sweep status {done.folder.name}{where}`; stop it with "
          f"`segsweep sweep stop {done.folder.name}{where}`")
    if args.follow and done.kind == submit.RAY_JOB:
        state = submit.follow(done.folder)
        print(f"[segsweep] Ray Job {done.job_id}: {state}")
        return 0 if state == "SUCCEEDED" else 1
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from sweeps.folder import SweepFolder
    from sweeps.submit import stop

    folder = SweepFolder.at(args.storage, args.name)
    done = stop(folder)
    if done is None:
        folder.require()
        raise ConfigError(f"sweep {args.name!r} was not submitted as a job; stop its driver with Ctrl-C")
    print(f"[segsweep] {done}; continue it later with `segsweep sweep submit {args.name} --resume`")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from sweeps.folder import SweepFolder
    from sweeps.ui import serve_dashboards

    folder = SweepFolder.at(args.storage, args.name)
    return serve_dashboards(folder.path, mlflow_port=args.port_mlflow, optuna_port=args.port_optuna)


def _warn(warnings: Sequence[str]) -> None:
    for line in warnings:
        print(f"segsweep: warning: {line}", file=sys.stderr)


def _finish(outcome: Any) -> int:
    from sweeps.folder import COMPLETE, format_leaderboard

    results = outcome.results
    print()
    _warn(results.warnings)
    print(format_leaderboard(results))
    print(f"[segsweep] wall time {outcome.wall_seconds:.1f} s", file=sys.stderr)
    if not outcome.finished:
        print(
            f"segsweep: sweep {results.name!r} did not finish; continue it with "
            f"`segsweep sweep resume {results.name} --storage {results.path.parent}`",
            file=sys.stderr,
        )
        return 1
    if not any(t.state == COMPLETE for t in results.trials):
        print("segsweep: no trial completed; see the reasons above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
