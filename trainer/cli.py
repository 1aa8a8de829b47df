"""CLI verbs of the trainer: ``cv``, ``data check``, ``data download`` and ``weights import``."""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from segsweep.base.errors import ConfigError
from trainer.config import CVConfig, load_config_file
from trainer.losses import loss_help

# Options of `segsweep cv` that map one to one onto CVConfig fields; help texts end with the default
# CVConfig itself holds (one home for each default). A callable help is read when the parser is built
# (the loss registry's words: a loss registered in trainer.losses appears without an edit here).
_CV_OPTIONS: dict[str, tuple[type, str | Callable[[], str]]] = {
    "encoder": (str, "encoder name (segmentation-models backbone)"),
    "arch": (str, "unet, fpn or linknet"),
    "weights": (str, "imagenet, none, or a weights file for the encoder"),
    "batch_size": (int, "images per batch"),
    "epochs": (int, "epochs per fold"),
    "lr": (float, "Adam learning rate"),
    "loss": (str, loss_help),
    "folds": (int, "number of cross-validation folds"),
    "image_size": (int, "side of the square model input, a multiple of 32"),
    "seed": (int, "seed for folds, augmentation and weights initialisation"),
    "limit": (int, "use only the first N pairs in stem order (quick runs)"),
    "dev_split": (str, "split file (or its name in the data set) listing the development stems"),
    "val_split": (str, "split file of validation stems: one given fold instead of K-fold"),
}


def _with_default(name: str, text: str) -> str:
    default = getattr(CVConfig(), name)
    return (
        text
        if default is None
        else f"{text} (default {default:g})"
        if isinstance(default, float)
        else f"{text} (default {default})"
    )


def register(sub: Any) -> None:
    from trainer.tracking import tracker_help

    cv = sub.add_parser(
        "cv",
        help="cross-validate one configuration",
        description="Train and cross-validate one configuration; writes OUT/cv.json. Rerunning the "
        "same command into the same --out resumes at the first unfinished fold.",
    )
    cv.add_argument("--data", help="data set folder with images/ and masks/")
    cv.add_argument("--out", help="output folder (cv.json, folds/)")
    cv.add_argument("--config", help="YAML or JSON file with the same keys; options given here win")
    for name, (kind, text) in _CV_OPTIONS.items():
        cv.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            help=_with_default(name, text() if callable(text) else text),
        )
    cv.add_argument(
        "--no-augment", dest="augment", action="store_false", default=None, help="train without augmentation"
    )
    cv.add_argument(
        "--tracker",
        default=None,
        help=tracker_help(),
    )
    cv.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    cv.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out pairs whose image or mask is cut short, undecodable or not a binary mask "
        "(listed, and recorded in cv.json); default: stop naming the file",
    )
    cv.add_argument(
        "--keep-models",
        action="store_true",
        help="save each fold's model as a bundle in OUT/models/fold_NN (for `segsweep predict OUT`: a fold ensemble)",
    )
    cv.add_argument(
        "--no-bn-reestimate",
        dest="bn_reestimate",
        action="store_false",
        default=None,
        help="validate with Keras' moving batch-norm statistics instead of re-estimating them (for comparison)",
    )
    add_runtime_options(cv)
    cv.set_defaults(handler=_cmd_cv)

    data = sub.add_parser("data", help="check or download data sets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_sub.add_parser("check", help="report every problem of a data set folder in one pass")
    check.add_argument("path", help="data set folder with images/ and masks/")
    check.set_defaults(handler=_cmd_data_check)
    download = data_sub.add_parser("download", help="download and verify an official data set")
    download.add_argument("name", choices=["kvasir-seg", "kvasir-instrument"])
    download.add_argument("--to", required=True, help="folder to download and unpack into")
    download.add_argument("--url", default=None, help="archive address (default: the official one)")
    download.set_defaults(handler=_cmd_data_download)

    weights = sub.add_parser("weights", help="manage encoder weights")
    weights_sub = weights.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    imp = weights_sub.add_parser("import", help="put a copy of an encoder's ImageNet weights file into the Keras cache")
    imp.add_argument("file", help="the weights file (.h5) as published by the encoder's authors")
    imp.add_argument("--encoder", required=True, help="encoder the file belongs to")
    imp.set_defaults(handler=_cmd_weights_import)


def add_runtime_options(parser: Any) -> None:
    """``--mixed-precision`` and ``--threads``: how TensorFlow runs (recorded in cv.json, not the config).

    Shared by ``cv``, ``sweep run`` and ``retrain``; the environment variables are the fallbacks.
    """
    from trainer.models import MIXED_PRECISION_CHOICES, MIXED_PRECISION_ENV, THREADS_ENV

    parser.add_argument(
        "--mixed-precision", choices=MIXED_PRECISION_CHOICES, default=None,
        help="reduced-precision compute with float32 weights: on = float16 (GPUs with tensor cores), bf16 = "
        "bfloat16 (CPUs with AVX512-BF16 or AMX, GPUs from Ampere); auto = float16 when every visible GPU "
        "has compute capability 7.0 or more, bfloat16 on a CPU that has it natively, else off; "
        f"default ${MIXED_PRECISION_ENV}, else auto",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None,
        help=f"TensorFlow intra-op threads (0: one per core); default ${THREADS_ENV}, else one per core",
    )  # fmt: skip


def resolve_cv_args(args: argparse.Namespace) -> tuple[CVConfig, Path, Path, dict[str, Any] | None]:
    """Merge --config with the command-line options (options win) and check what is needed; also
    return the TensorFlow settings the file records (``runtime`` of a cv.json or best.json), if any."""
    values: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    if args.config:
        config, extras = load_config_file(args.config)
        values = config.to_dict()
    for name in [*_CV_OPTIONS, "augment", "bn_reestimate"]:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    config = CVConfig.from_dict(values, source="options")
    config.validate()
    data = args.data or extras.get("data")
    out = args.out or extras.get("out")
    if not data:
        raise ConfigError("no data set given; pass --data FOLDER (a folder with images/ and masks/)")
    if not out:
        raise ConfigError("no output folder given; pass --out FOLDER")
    recorded = extras.get("runtime")
    if recorded is not None and not isinstance(recorded, dict):
        raise ConfigError(f"{args.config}: `runtime` must be a mapping, as segsweep records it; fix or remove it")
    return config, Path(data), Path(out), recorded or None


def _cmd_cv(args: argparse.Namespace) -> int:
    from trainer.cv import run_cv_command
    from trainer.models import recorded_runtime_options

    config, data, out, recorded = resolve_cv_args(args)
    threads, mixed_precision = args.threads, args.mixed_precision
    if recorded is not None:  # rerun as recorded (the sweep's trials set their threads); options win
        recorded_threads, recorded_precision = recorded_runtime_options(recorded, str(args.config))
        threads = recorded_threads if threads is None else threads
        mixed_precision = recorded_precision if mixed_precision is None else mixed_precision
    try:
        with sigterm_interrupts():
            return run_cv_command(
                config,
                data,
                out,
                tracker=args.tracker,
                verbose=not args.quiet,
                skip_bad=args.skip_bad,
                keep_models=args.keep_models,
                threads=threads,
                mixed_precision=mixed_precision,
                recorded_runtime=recorded,
                recorded_source=args.config,
            )
    except KeyboardInterrupt:
        raise Interrupted(
            f"finished folds and epochs are kept in {out}; resume with `{resume_command(args)}`"
        ) from None


def sigterm_interrupts() -> contextlib.AbstractContextManager[None]:
    """SIGTERM ends the run as Ctrl-C does: the tracker's fold run is marked KILLED and the CLI says
    how to resume. SIGTERM is what stops a `segsweep cv` in a Slurm job (scancel, the time limit) or
    under `kill`, and what reaches one started in the background, where SIGINT arrives ignored."""
    from segsweep.base.signals import signal_handlers

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal_handlers({signal.SIGTERM: interrupt})


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what to run to go on (the CLI prints it after "interrupted")."""


def option_words(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """``--name value`` for each of ``names`` given in ``args`` (not None): a rerun's options as typed."""
    words: list[str] = []
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            words += ["--" + name.replace("_", "-"), str(value)]
    return words


def resume_command(args: argparse.Namespace) -> str:
    """The `segsweep cv` command that resumes this run: the same options into the same --out."""
    import shlex

    words = [
        "segsweep",
        "cv",
        *option_words(args, ["data", "out", "config", *_CV_OPTIONS, "tracker", "threads", "mixed_precision"]),
    ]
    if args.augment is False:
        words.append("--no-augment")
    if getattr(args, "bn_reestimate", None) is False:
        words.append("--no-bn-reestimate")
    flags = (("--quiet", args.quiet), ("--skip-bad", args.skip_bad), ("--keep-models", args.keep_models))
    words += [flag for flag, on in flags if on]
    return shlex.join(words)


def _cmd_data_check(args: argparse.Namespace) -> int:
    from trainer.data_check import run_check_command

    return run_check_command(Path(args.path))


def _cmd_data_download(args: argparse.Namespace) -> int:
    from trainer.download import run_download_command

    return run_download_command(args.name, Path(args.to), url=args.url)


def _cmd_weights_import(args: argparse.Namespace) -> int:
    from trainer.weights import run_import_command

    return run_import_command(Path(args.file), args.encoder)
