"""CLI verbs of the reports package: ``report``, ``retrain``, ``predict``, ``export`` and ``count``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add this package's verbs to the ``segsweep`` parser."""
    from reports.count import DEFAULT_MIN_AREA
    from reports.export import EXPORT_FORMATS
    from reports.predict import PREDICT_BATCH_SIZE
    from sweeps.folder import storage_help
    from trainer.cli import add_runtime_options

    report = sub.add_parser(
        "report",
        help="leaderboard, winner, plots and best.json of a sweep",
        description="Write report.html (one self-contained file), report.md and best.json (the winner's "
        "configuration for `segsweep cv --config`) for a sweep.",
    )
    report.add_argument("name", help="sweep name (as given to `sweep run --name`)")
    report.add_argument("--storage", default=None, help=storage_help())
    report.add_argument("--out", default=None, help="report folder (default STORAGE/NAME/report)")
    report.add_argument("--format", default="md,html,json", help="comma-separated: md, html, json (default all)")
    report.add_argument(
        "--test-prediction",
        action="append",
        default=[],
        metavar="DIR",
        help="a `segsweep predict --masks` folder of the winner's or a starting point's model on a test set "
        "(repeatable: the winner's and the starting points'); the report pairs them image by image",
    )
    report.set_defaults(handler=_cmd_report)

    retrain = sub.add_parser(
        "retrain",
        help="train a sweep's winner on all development images into a model bundle",
        description="Train the winner on every development image with the learning-rate schedule its "
        "cross-validation folds followed, and save a model bundle (config, weights, card).",
    )
    retrain.add_argument("name", help="sweep name, or a `segsweep cv` output folder (retrains that configuration)")
    retrain.add_argument("--storage", default=None, help=storage_help())
    retrain.add_argument("--out", required=True, help="model bundle folder to create")
    retrain.add_argument("--trial", default=None, help="retrain this trial id instead of the winner")
    retrain.add_argument(
        "--seed", type=int, default=None,
        help="train with this seed instead of the trial's: a second retrain of one configuration measures how "
        "much the final model owes to the draw (recorded in the bundle's configuration and card)",
    )  # fmt: skip
    retrain.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    add_runtime_options(retrain)
    retrain.set_defaults(handler=_cmd_retrain)

    predict = sub.add_parser(
        "predict",
        help="predict masks with a model bundle; score them where masks are given",
        description="Write a lossless PNG mask (0/255) at each image's original size, an overlay per image, "
        "counts.csv, and with --masks metrics.json (MedAI Dice and IoU at the original resolution).",
    )
    predict.add_argument(
        "model",
        help="model bundle folder written by `segsweep retrain`, or a fold-model set (the --out of "
        "`segsweep cv --keep-models`, a sweep trial folder kept with --keep-models): a fold ensemble",
    )
    predict.add_argument("--images", required=True, help="folder of images")
    predict.add_argument("--masks", default=None, help="folder of true masks paired with the images by name")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--tta", action="store_true", help="also predict with flip test-time augmentation")
    predict.add_argument(
        "--batch-size",
        type=int,
        default=PREDICT_BATCH_SIZE,
        help=f"images per prediction batch (default {PREDICT_BATCH_SIZE})",
    )
    predict.add_argument(
        "--min-area",
        type=float,
        default=DEFAULT_MIN_AREA,
        help=f"counter's smallest object as a fraction of the image's area, the area_fraction of counts.csv "
        f"(default {DEFAULT_MIN_AREA})",
    )
    predict.add_argument(
        "--postprocess",
        default=None,
        help="comma-separated: min-area (drop objects the counter would not count), fill-holes; adds a "
        "metrics row for each and for all together, and writes masks_postprocessed/",
    )
    predict.set_defaults(handler=_cmd_predict)

    export = sub.add_parser(
        "export",
        help="a model bundle as a TensorFlow SavedModel or ONNX model that serves without segsweep",
        description="Write the bundle's model with the encoder's preprocessing and the 0.5 threshold inside: "
        "input uint8 RGB images of the trained size, outputs probabilities and mask. The model card "
        "(README.md) and export.json travel with it. Each export is checked against the bundle's masks.",
    )
    export.add_argument("model", help="model bundle folder written by `segsweep retrain`")
    export.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        dest="export_format",
        help="savedmodel (TensorFlow) or onnx (needs the `export` extra)",
    )
    export.add_argument("--out", required=True, help="export folder to create")
    export.set_defaults(handler=_cmd_export)

    count = sub.add_parser(
        "count",
        help="count the objects (polyps) in a folder of masks",
        description="External contours of each binarised mask, dropping specks below --min-area; one CSV row "
        "per object: image, object number, area in pixels and as a fraction of the image (area_fraction, the "
        "unit of --min-area), bounding box x, y, width, height (an image without objects: one row, object 0).",
    )
    count.add_argument("masks", help="folder of masks")
    count.add_argument(
        "--min-area",
        type=float,
        default=DEFAULT_MIN_AREA,
        help=f"smallest object as a fraction of the image's area, counts.csv's area_fraction (default "
        f"{DEFAULT_MIN_AREA}, chosen on Kvasir-SEG's masks)",
    )
    count.add_argument("--out", default=None, help="CSV file to write (default: standard output)")
    count.set_defaults(handler=_cmd_count)


def _cmd_report(args: argparse.Namespace) -> int:
    from reports.report import run_report_command

    return run_report_command(
        args.name,
        args.storage,
        Path(args.out) if args.out else None,
        args.format,
        [Path(folder) for folder in args.test_prediction],
    )


def _cmd_retrain(args: argparse.Namespace) -> int:
    from reports.retrain import run_retrain_command
    from trainer.bundle import retrain_checkpoint_path
    from trainer.cli import Interrupted, sigterm_interrupts

    try:
        with sigterm_interrupts():
            return run_retrain_command(
                args.name, args.storage, Path(args.out), trial_id=args.trial, seed=args.seed,
                verbose=not args.quiet, threads=args.threads, mixed_precision=args.mixed_precision,
            )  # fmt: skip
    except KeyboardInterrupt:
        checkpoint = retrain_checkpoint_path(args.out)
        kept = f"finished epochs are kept in {checkpoint}; " if checkpoint.is_file() else ""
        raise Interrupted(f"{kept}resume with `{retrain_command(args)}`") from None


def retrain_command(args: argparse.Namespace) -> str:
    """The `segsweep retrain` command that resumes this one: the same sweep, trial, seed and --out."""
    import shlex

    from trainer.cli import option_words

    words = ["segsweep", "retrain", args.name,
             *option_words(args, ["storage", "out", "trial", "seed", "threads", "mixed_precision"])]  # fmt: skip
    return shlex.join(words + (["--quiet"] if args.quiet else []))


def _cmd_predict(args: argparse.Namespace) -> int:
    from reports.predict import run_predict_command

    return run_predict_command(
        Path(args.model),
        Path(args.images),
        Path(args.masks) if args.masks else None,
        Path(args.out),
        tta=args.tta,
        batch_size=args.batch_size,
        min_area=args.min_area,
        postprocess=args.postprocess,
    )


def _cmd_export(args: argparse.Namespace) -> int:
    from reports.export import run_export_command

    return run_export_command(Path(args.model), Path(args.out), args.export_format)


def _cmd_count(args: argparse.Namespace) -> int:
    from reports.count import run_count_command

    return run_count_command(Path(args.masks), args.min_area, Path(args.out) if args.out else None)
