"""The ``segsweep`` command's root, and the sweeps package's own verbs (``sweep``, ``ui``).

Each package registers its verbs from its own ``cli.py``; the table of those registrations is the
``segsweep.verbs`` entry-point group in pyproject.toml (named ``<stage>.<package>``, listed in
pipeline order), so the root names no package it does not build on. Heavy imports (TensorFlow,
Ray) happen inside the verbs: ``segsweep --help``, ``--version`` and option errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

import trainer._env  # first: sets the Keras environment before anything imports it
from trainer import version
from trainer.errors import SegsweepError

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
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register_verbs in verb_registrations():
        register_verbs(sub)
    _add_verbose_to_verbs(parser)
    return parser


_VERBOSE_HELP = "show TensorFlow's native start-up and log lines (oneDNN, CUDA probes), hidden by default"


def _add_verbose_to_verbs(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` after any verb too (``segsweep cv ... --verbose``), where the verb has none of its own."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb in action.choices.values():
                if "--verbose" not in verb._option_string_actions:
                    # SUPPRESS: an absent verb-level flag must not reset `segsweep --verbose VERB`.
                    verb.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                                      help=_VERBOSE_HELP)
                _add_verbose_to_verbs(verb)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "verbose", False):
        trainer._env.show_native_logs()
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
    from sweeps.spec import SCHEDULERS, SweepSpec
    from trainer.cli import add_runtime_options

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
    run.add_argument("--data", required=True, help="data set folder with images/ and masks/")
    run.add_argument("--space", required=True, help="search space: paper, quick, or a YAML file")
    run.add_argument("--trials", required=True, type=int, help="number of configurations to try")
    run.add_argument("--name", required=True, help="sweep name (folder and Optuna study name)")
    run.add_argument("--storage", default=None, help=storage_help())
    run.add_argument("--concurrency", type=int, default=defaults.concurrency,
                     help="trials at a time (default: as many as the CPUs/GPUs hold)")
    run.add_argument("--cpus-per-trial", type=float, default=defaults.cpus_per_trial,
                     help=f"CPUs per trial (default {defaults.cpus_per_trial:g})")
    run.add_argument("--gpus-per-trial", type=float, default=defaults.gpus_per_trial,
                     help="GPUs per trial, fractions allowed (0.5: two trials share a card; "
                     f"default {defaults.gpus_per_trial:g})")
    run.add_argument("--scheduler", choices=SCHEDULERS, default=defaults.scheduler,
                     help=f"asha stops weak trials after their first folds, none runs all folds "
                     f"(default {defaults.scheduler})")
    run.add_argument("--seed", type=int, default=defaults.seed,
                     help=f"seed of the sampler and of every trial's folds (default {defaults.seed})")
    run.add_argument("--address", default=defaults.address,
                     help="HOST:PORT of a running Ray cluster's head (default: start Ray on this machine)")
    run.add_argument("--limit", type=int, default=None, help="use only the first N pairs (quick runs)")
    run.add_argument("--image-size", type=int, default=None, help="override the space's image size")
    run.add_argument("--folds", type=int, default=None, help="override the space's number of folds")
    run.add_argument("--epochs", type=int, default=None, help="override the space's epochs")
    run.add_argument("--dev-split", default=None,
                     help="split file (or its name in the data set, e.g. medico2020_train) listing the "
                     "development stems; keep a test set out of the sweep (default: every pair)")
    run.add_argument("--tracker", default=defaults.tracker,
                     help="comma-separated trackers for every trial: mlflow, neptune, or none "
                     "(default: mlflow, plus neptune when NEPTUNE_PROJECT is set)")
    add_runtime_options(run)  # --mixed-precision, --threads (default threads: the trial's CPUs)
    run.set_defaults(handler=_cmd_run)

    resume = verbs.add_parser(
        "resume",
        help="finish a sweep whose driver stopped",
        description="Continue STORAGE/NAME: unfinished trials resume at their first unfinished fold, "
        "finished trials and folds are kept.",
    )
    resume.add_argument("name", help="sweep name")
    resume.add_argument("--storage", default=None, help=storage_help())
    resume.set_defaults(handler=_cmd_resume)

    status = verbs.add_parser("status", help="print a sweep's leaderboard")
    status.add_argument("name", help="sweep name")
    status.add_argument("--storage", default=None, help=storage_help())
    status.set_defaults(handler=_cmd_status)

    _register_ui(sub)


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


def _cmd_run(args: argparse.Namespace) -> int:
    from sweeps.folder import default_storage
    from sweeps.runner import run_sweep
    from sweeps.spec import SweepSpec
    from trainer.models import MIXED_PRECISION_ENV

    spec = SweepSpec(
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
        mixed_precision=args.mixed_precision or os.environ.get(MIXED_PRECISION_ENV) or "auto",
        threads=args.threads,
    )
    spec.validate()  # before any heavy import: option errors answer at once
    return _finish(run_sweep(spec))


def _cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.runner import resume_sweep

    return _finish(resume_sweep(args.storage, args.name))


def _cmd_status(args: argparse.Namespace) -> int:
    from sweeps.folder import format_leaderboard, load_sweep

    sweep = load_sweep(args.storage, args.name)
    _warn(sweep.warnings)
    print(format_leaderboard(sweep))
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
