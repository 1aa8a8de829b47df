"""CLI verbs of the sweeps package: ``sweep run``, ``sweep resume`` and ``sweep status``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_STORAGE = "./sweeps"


def register(sub: Any) -> None:
    """Add ``segsweep sweep run|resume|status`` to the ``segsweep`` parser."""
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
    run.add_argument("--data", required=True, help="data set folder with images/ and masks/")
    run.add_argument("--space", required=True, help="search space: paper, quick, or a YAML file")
    run.add_argument("--trials", required=True, type=int, help="number of configurations to try")
    run.add_argument("--name", required=True, help="sweep name (folder and Optuna study name)")
    _storage_option(run)
    run.add_argument("--concurrency", type=int, default=None,
                     help="trials at a time (default: as many as the CPUs/GPUs hold)")
    run.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    run.add_argument("--gpus-per-trial", type=float, default=0.0,
                     help="GPUs per trial, fractions allowed (0.5: two trials share a card; default 0)")
    run.add_argument("--scheduler", choices=["asha", "none"], default="asha",
                     help="asha stops weak trials after their first folds (default); none runs all folds")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of the sampler and of every trial's folds (default 0)")
    run.add_argument("--address", default=None,
                     help="HOST:PORT of a running Ray cluster's head (default: start Ray on this machine)")
    run.add_argument("--limit", type=int, default=None, help="use only the first N pairs (quick runs)")
    run.add_argument("--image-size", type=int, default=None, help="override the space's image size")
    run.add_argument("--folds", type=int, default=None, help="override the space's number of folds")
    run.add_argument("--epochs", type=int, default=None, help="override the space's epochs")
    run.add_argument("--dev-split", default=None,
                     help="split file (or its name in the data set, e.g. medico2020_train) listing the "
                     "development stems; keep a test set out of the sweep (default: every pair)")
    run.add_argument("--tracker", default=None,
                     help="comma-separated trackers for every trial: mlflow, neptune, or none "
                     "(default: mlflow, plus neptune when NEPTUNE_PROJECT is set)")
    run.add_argument("--keep-models", type=int, default=0, metavar="K",
                     help="keep each fold's model for the best K trials (fold ensembles for `segsweep predict "
                     "TRIAL_FOLDER`); other trials' models are deleted as they fall out (default 0: none)")
    run.set_defaults(handler=_cmd_run)

    resume = verbs.add_parser(
        "resume",
        help="finish a sweep whose driver stopped",
        description="Continue STORAGE/NAME: unfinished trials resume at their first unfinished fold, "
        "finished trials and folds are kept.",
    )
    resume.add_argument("name", help="sweep name")
    _storage_option(resume)
    resume.set_defaults(handler=_cmd_resume)

    status = verbs.add_parser("status", help="print a sweep's leaderboard")
    status.add_argument("name", help="sweep name")
    _storage_option(status)
    status.set_defaults(handler=_cmd_status)

    from sweeps.ui import register_ui

    register_ui(sub)


def _storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help=f"folder that holds the sweeps (default {DEFAULT_STORAGE})")


def _cmd_run(args: argparse.Namespace) -> int:
    from sweeps.runner import run_sweep
    from sweeps.spec import SweepSpec

    spec = SweepSpec(
        name=args.name,
        data=args.data,
        space=args.space,
        trials=args.trials,
        storage=args.storage,
        concurrency=args.concurrency,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        scheduler=args.scheduler,
        seed=args.seed,
        address=args.address,
        overrides={"limit": args.limit, "image_size": args.image_size, "folds": args.folds,
                   "epochs": args.epochs, "dev_split": args.dev_split},
        tracker=args.tracker,
        keep_models=args.keep_models,
    )
    spec.validate()  # before any heavy import: option errors answer at once
    return _finish(run_sweep(spec))


def _cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.runner import resume_sweep

    return _finish(resume_sweep(args.storage, args.name))


def _cmd_status(args: argparse.Namespace) -> int:
    from reports.results import load_sweep
    from sweeps.leaderboard import format_leaderboard

    print(format_leaderboard(load_sweep(args.storage, args.name)))
    return 0


def _finish(outcome: Any) -> int:
    from reports.results import COMPLETE
    from sweeps.leaderboard import format_leaderboard

    results = outcome.results
    print()
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
