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
from typing import TYPE_CHECKING, Any

import segsweep.base.env  # sets the Keras environment before anything imports it; umask at start
from segsweep.base import version
from segsweep.base.errors import ConfigError, SegsweepError
from segsweep.base.parser import SegsweepParser

if TYPE_CHECKING:
    from sweeps.folder import SweepFolder

#: Entry-point group through which each package adds its verbs: ``register(subparsers)``.
VERBS_GROUP = "segsweep.verbs"


def verb_registrations() -> list[Callable[[Any], None]]:
    """Every package's ``register`` function, in pipeline order (trainer, sweeps, reports)."""
    found = sorted(entry_points(group=VERBS_GROUP), key=lambda e: e.name)
    if not found:
        raise SystemExit("segsweep: no verbs registered; install the project (`pip install -c constraints.txt -e .`)")
    return [e.load() for e in found]


def build_parser() -> argparse.ArgumentParser:
    parser = SegsweepParser(
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
                    verb.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
                _add_verbose_to_verbs(verb)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "verbose", False):
        segsweep.base.env.show_native_logs()
    try:
        segsweep.base.env.apply_umask()
        code: int = args.handler(args)
    except SegsweepError as exc:
        print(f"segsweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"segsweep: interrupted{'; ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    return code


# --- the sweeps package's verbs -------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add ``segsweep sweep run|resume|status|list|stop`` and ``segsweep ui``."""
    from sweeps.folder import storage_help

    sweep = sub.add_parser(
        "sweep",
        help="run, resume, follow, list or stop hyperparameter sweeps",
        description="Optuna proposes configurations, Ray Tune runs each as a cross-validation.",
    )
    verbs = sweep.add_subparsers(dest="sweep_command", metavar="ACTION", required=True)

    run = verbs.add_parser(
        "run",
        help="start a sweep",
        description="Start a sweep in STORAGE/NAME (sweep.json, optuna.db, trials/, ray/). It runs on a "
        "local Ray on this machine, or on a running Ray cluster with --address. Every option can also "
        "come from --config FILE; options given here win, and sweep.json records the merged result.",
    )
    add_run_options(run)
    run.set_defaults(handler=_cmd_run)

    resume = verbs.add_parser(
        "resume",
        help="continue a sweep that stopped or whose driver died",
        description="Continue STORAGE/NAME: unfinished trials resume at their first unfinished fold, "
        "finished trials and folds are kept. A budget given here counts from now.",
    )
    resume.add_argument("name", help="sweep name")
    resume.add_argument("--storage", default=None, help=storage_help())
    _add_limit_options(resume)
    resume.add_argument(
        "--address",
        default=None,
        help="HOST:PORT of the Ray cluster to continue on (default: the sweep's own --address)",
    )
    resume.set_defaults(handler=_cmd_resume)

    status = verbs.add_parser("status", help="print a sweep's leaderboard, or follow it live (--watch)")
    status.add_argument("name", help="sweep name")
    status.add_argument("--storage", default=None, help=storage_help())
    status.add_argument(
        "--watch",
        action="store_true",
        help="follow the running sweep: a line per running trial (fold, epoch, val IoU), "
        "the best so far and an ETA, until it ends (Ctrl-C leaves it running)",
    )
    status.add_argument("--interval", type=float, default=None, help="seconds between refreshes with --watch")
    status.add_argument("--follow", action="store_true", help="stream a submitted Ray Job's log until it ends")
    machine = status.add_mutually_exclusive_group()
    machine.add_argument(
        "--json", action="store_true", help="print the sweep's state, counts and trials as JSON (fields: README)"
    )
    machine.add_argument("--csv", action="store_true", help="print the trial table as CSV (one row per trial)")
    status.set_defaults(handler=_cmd_status)

    listing = verbs.add_parser("list", help="every sweep in the storage folder, with its state")
    listing.add_argument("--storage", default=None, help=storage_help())
    listing.add_argument("--json", action="store_true", help="print the sweeps as JSON (fields: README)")
    listing.set_defaults(handler=_cmd_list)

    _register_submit(verbs)
    stop = verbs.add_parser(
        "stop",
        help="stop a running sweep cleanly (resumable); a submitted job through its scheduler",
        description="Ask the sweep's driver to stop: no new trials, running trials stop at the end of their "
        "current fold (at once with --now; their running folds then rerun on resume). `sweep resume` "
        "continues it.",
    )
    stop.add_argument("name", help="sweep name")
    stop.add_argument("--storage", default=None, help=storage_help())
    stop.add_argument("--now", action="store_true", help="stop running folds too instead of letting them end")
    stop.set_defaults(handler=_cmd_stop)

    _register_ui(sub)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``sweep run``'s options (also those of any verb that starts a sweep elsewhere), from their one
    declaration, ``sweeps.spec.RUN_OPTIONS``.

    Defaults are None here: a value comes from the command line, else --config, else SweepSpec.
    """
    from sweeps.spec import RUN_OPTIONS
    from trainer.cli import add_runtime_options

    parser.add_argument(
        "--config",
        default=None,
        help="YAML/JSON file with any of these options (names with _ for -); a sweep's "
        "sweep.json re-runs that sweep; options given here win",
    )
    for option in RUN_OPTIONS:
        if not option.runtime:
            option.add_to(parser)
    add_runtime_options(parser)  # --mixed-precision, --threads (default threads: the trial's CPUs)


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    """The options that end one run of a sweep (``sweep resume`` takes them too)."""
    from sweeps.spec import LIMIT_KEYS, RUN_OPTION_BY_KEY

    for key in LIMIT_KEYS:
        RUN_OPTION_BY_KEY[key].add_to(parser)


def spec_from_args(args: argparse.Namespace) -> Any:
    """The SweepSpec of ``sweep run``: --config's values, then the options given, then the defaults."""
    from segsweep.base.errors import ConfigError
    from sweeps.folder import default_storage
    from sweeps.spec import OVERRIDE_KEYS, OVERRIDES, RUN_OPTIONS, SweepSpec, read_sweep_config
    from trainer.models import MIXED_PRECISION_ENV

    values: dict[str, Any] = read_sweep_config(args.config) if args.config else {}
    overrides = {key: None for key in OVERRIDE_KEYS} | dict(values.get(OVERRIDES) or {})
    for option in RUN_OPTIONS:
        given = getattr(args, option.key, None)
        if given is None or option.key == "start":
            continue
        value = option.convert(given) if option.convert is not None else given
        if option.spec_field == OVERRIDES:
            overrides[option.key] = value
        else:
            values[option.target] = value
    values[OVERRIDES] = overrides
    if getattr(args, "start", None):  # --start names files; their entries join the config's `start:`
        from sweeps._start import read_start_file

        values["start"] = [*(values.get("start") or []), *(e.to_dict() for f in args.start for e in read_start_file(f))]
    if args.space is not None:  # a space named on the command line replaces the file's
        values.pop("space_definition", None)
    required = [option.key for option in RUN_OPTIONS if option.required]
    missing = [k for k in required if values.get(k) is None]
    if missing:
        source = f" or in {args.config}" if args.config else " (or in a --config file)"
        raise ConfigError(f"sweep run needs {', '.join('--' + m for m in missing)}{source}")
    values["storage"] = str(values.get("storage") or default_storage())
    values.setdefault("mixed_precision", os.environ.get(MIXED_PRECISION_ENV) or "auto")
    spec = SweepSpec.from_dict(values, source=args.config or "sweep run's options")
    spec.validate()  # before any heavy import: option errors answer at once
    return spec


def _register_submit(verbs: Any) -> None:

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
    where.add_argument(
        "--ray",
        metavar="URL",
        default=None,
        help="submit a Ray Job to the cluster whose dashboard is at URL (http://HEAD_IP:8265)",
    )
    submit.add_argument(
        "--resume",
        action="store_true",
        help="continue sweep NAME: resubmit its batch script as it is, or a new Ray Job",
    )
    submit.add_argument(
        "--dry-run", action="store_true", help="write the batch script (or show the job); submit nothing"
    )
    submit.add_argument("--follow", action="store_true", help="Ray Jobs: stream the job's log until it ends")
    slurm = submit.add_argument_group("Slurm")
    slurm.add_argument("--nodes", type=int, default=1, help="nodes (default 1); Ray's head runs on the first")
    slurm.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default 0)")
    slurm.add_argument(
        "--cpus-per-node", type=int, default=None, help="CPUs per node (default: whole nodes, --exclusive)"
    )
    slurm.add_argument("--time", default=None, help="time limit, HH:MM:SS or D-HH:MM:SS (default: the partition's)")
    slurm.add_argument("--partition", default=None, help="Slurm partition")
    slurm.add_argument("--account", default=None, help="Slurm account")
    slurm.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more sbatch option for the script, e.g. --sbatch-arg=--qos=long (repeatable)",
    )
    slurm.add_argument(
        "--setup",
        action="append",
        default=None,
        metavar="LINE",
        help="shell line run on the nodes before segsweep, e.g. 'module load cuda/12' (repeatable; "
        "default: activate the virtual environment segsweep runs from)",
    )
    add_run_options(submit)
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
    ui.add_argument(
        "--port-mlflow",
        type=int,
        default=DEFAULT_MLFLOW_PORT,
        help=f"MLflow UI port (default {DEFAULT_MLFLOW_PORT}; 0 picks a free one)",
    )
    ui.add_argument(
        "--port-optuna",
        type=int,
        default=DEFAULT_OPTUNA_PORT,
        help=f"optuna-dashboard port (default {DEFAULT_OPTUNA_PORT}; 0 picks a free one)",
    )
    ui.set_defaults(handler=_cmd_ui)


def _cmd_run(args: argparse.Namespace) -> int:
    from sweeps.runner import run_sweep

    return _finish(run_sweep(spec_from_args(args)))


def _cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.runner import resume_sweep
    from sweeps.spec import parse_duration

    budget = parse_duration(args.time_budget) if args.time_budget is not None else None
    return _finish(
        resume_sweep(
            args.storage, args.name, time_budget_s=budget, max_failed_trials=args.max_failures, address=args.address
        )
    )


def _cmd_status(args: argparse.Namespace) -> int:
    from sweeps.folder import NoSuchSweep, SweepFolder, format_leaderboard, load_sweep, read_spec_record
    from sweeps.submit import describe, follow

    folder = SweepFolder.at(args.storage, args.name)
    if args.json or args.csv:
        return _print_machine_status(folder, as_json=args.json)
    if args.watch:
        from sweeps._live_view import REFRESH_S, watch

        read_spec_record(folder)  # one line for a sweep that is not there, before the view starts
        return watch(folder, interval_s=args.interval or REFRESH_S)
    job = describe(folder)  # a sweep submitted as a Slurm job or Ray Job: its state and log tail
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


def _cmd_list(args: argparse.Namespace) -> int:
    from sweeps.folder import (
        DamagedRecord,
        SweepFolder,
        format_text_table,
        storage_path,
        summarise_sweep,
        sweep_names,
    )

    storage = storage_path(args.storage)
    if args.json:
        from sweeps._machine_output import dumps, list_document

        warnings: list[str] = []
        document = list_document(storage, warnings)
        _warn(warnings)
        print(dumps(document))
        return 0
    names = sweep_names(storage)
    if not names:
        print(f"no sweeps in {storage}")
        return 0
    rows = []
    for name in names:
        try:
            s = summarise_sweep(SweepFolder.at(storage, name))
        except DamagedRecord as exc:
            _warn([str(exc)])
            continue
        best = f"{s.best_dice:.4f}" if s.best_dice is not None else "-"
        rows.append(
            [s.name, s.state, f"{s.finished}/{s.asked}", best, s.started or "-", s.last_update or "-", s.path, s.detail]
        )
    print(format_text_table(["sweep", "state", "trials", "best Dice", "started", "last update", "folder", ""], rows))
    return 0


def _print_machine_status(folder: SweepFolder, *, as_json: bool) -> int:
    """``status --json`` / ``--csv`` (sweeps._machine_output): only the document on standard output."""
    from sweeps._machine_output import dumps, status_document, trial_table

    if as_json:
        print(dumps(status_document(folder)))
    else:
        sys.stdout.write(trial_table(folder).to_csv(index=False))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from segsweep.base.errors import SegsweepError
    from sweeps.folder import SweepFolder, driver_info, driver_running, read_spec_record, request_stop
    from sweeps.submit import stop

    folder = SweepFolder.at(args.storage, args.name)
    # A submitted job still running is stopped through its scheduler, wherever its driver runs, so that
    # the scheduler records the stop (a Ray Job ends STOPPED, not FAILED).
    done = stop(folder, at_once=args.now)
    if done is not None:
        print(f"[segsweep] {done}; continue it later with `segsweep sweep submit {folder.cli_args} --resume`")
        return 0
    read_spec_record(folder)
    if not driver_running(folder):
        raise SegsweepError(
            f"sweep {folder.name!r} is not running (no driver holds {folder.driver_file}); nothing to stop. "
            f"`segsweep sweep resume {folder.cli_args}` continues it"
        )
    request = request_stop(folder, "stopped by `segsweep sweep stop`", now=args.now)
    info = driver_info(folder)
    print(
        f"asked sweep {folder.name!r} (driver pid {info.get('pid')} on {info.get('host')}) to stop "
        + ("now" if request.now else "at the end of its running folds")
        + f"; `segsweep sweep resume {folder.cli_args}` continues it"
    )
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from sweeps import submit

    options = submit.SlurmOptions(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpus_per_node=args.cpus_per_node,
        time=args.time,
        partition=args.partition,
        account=args.account,
        sbatch_args=list(args.sbatch_arg),
        setup=list(args.setup) if args.setup is not None else submit.default_setup(),
    )
    if args.resume:
        name = args.resume_name or args.name
        if not name:
            raise ConfigError("--resume needs the sweep's name: `segsweep sweep submit NAME --resume`")
        done = submit.resubmit(
            args.storage, name, slurm=options if args.slurm else None, ray=args.ray, dry_run=args.dry_run
        )
    else:
        if args.resume_name:
            raise ConfigError(f"{args.resume_name!r}: a new sweep takes --name; to continue one, add --resume")
        if not args.slurm and not args.ray:
            raise ConfigError("say where the sweep runs: --slurm, or --ray http://HEAD_IP:8265")
        spec = spec_from_args(args)
        done = (
            submit.submit_slurm(spec, options, dry_run=args.dry_run)
            if args.slurm
            else submit.submit_ray_job(spec, args.ray, dry_run=args.dry_run)
        )
    if done.job_id is None:
        print(f"[segsweep] dry run: wrote {done.script}" if done.script else "[segsweep] dry run: nothing submitted")
        return 0
    print(f"[segsweep] submitted {done.kind} job {done.job_id}" + (f" to {done.address}" if done.address else ""))
    if done.script:
        print(f"[segsweep] script {done.script}; log {done.folder.slurm_log(done.job_id)}")
    print(
        f"[segsweep] follow it with `segsweep sweep status {done.folder.cli_args}`; stop it with "
        f"`segsweep sweep stop {done.folder.cli_args}`"
    )
    if args.follow and done.kind == submit.RAY_JOB:
        state = submit.follow(done.folder)
        print(f"[segsweep] Ray Job {done.job_id}: {state}")
        return 0 if state == "SUCCEEDED" else 1
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
        why = f" ({outcome.stopped})" if outcome.stopped else ""
        print(
            f"segsweep: sweep {results.name!r} did not finish{why}; continue it with "
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
