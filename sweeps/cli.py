"""The ``segsweep`` command: one verb per pipeline stage.

Each package registers its own verbs (trainer: cv, data, weights; sweeps: sweep, ui; reports:
report, retrain, predict, count). Heavy imports (TensorFlow, Ray) happen inside the verbs, so
``segsweep --help`` and input errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trainer._env  # sets the Keras environment before anything imports it; umask at start
from trainer.errors import SegsweepError


def build_parser() -> argparse.ArgumentParser:
    from reports import cli as reports_cli
    from sweeps import commands as sweeps_cli
    from trainer import cli as trainer_cli

    parser = argparse.ArgumentParser(
        prog="segsweep",
        description="Hyperparameter sweeps with experiment tracking for medical image segmentation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    trainer_cli.register(sub)
    sweeps_cli.register(sub)
    reports_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        trainer._env.apply_umask()
        code: int = args.handler(args)
    except SegsweepError as exc:
        print(f"segsweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"segsweep: interrupted{'; ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
