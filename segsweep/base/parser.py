"""The argument parser of every ``segsweep`` verb: no abbreviations, "did you mean", the verb's own usage.

argparse, left to itself, takes ``--epoch 3`` as ``--epochs 3`` (a prefix of one option is that
option), answers a misspelt verb or choice with the whole list and no hint, and reports an unknown
option with the usage of the root ``segsweep`` command rather than that of the verb it was given to.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, cast

from segsweep.base.suggest import did_you_mean


class SegsweepParser(argparse.ArgumentParser):
    """An ArgumentParser whose option and choice errors suggest the closest valid word.

    Its sub-command parsers (``add_subparsers().add_parser``) are :class:`SubCommandParser`: each
    refuses an option it does not know itself, so the error carries the sub-command's usage.
    """

    #: Whether this parser is a verb's (anything after a verb is the verb's to take or refuse).
    is_sub_command = False

    def __init__(self, **kwargs: Any) -> None:
        # No prefix matching: a misspelt `--epoch` must be refused, not silently taken for `--epochs`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", SubCommandParser)
        return super().add_subparsers(**kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self.is_sub_command:
            # Nothing after a sub-command belongs to its parent: what this parser leaves is an error of its own.
            self.error(self.unrecognized_message(extras))
        return cast(argparse.Namespace, parsed), extras

    def unrecognized_message(self, extras: Sequence[str]) -> str:
        """argparse's "unrecognized arguments" line, with the closest known option for each unknown one."""
        known = [option for option in self._option_string_actions if option.startswith("--")]
        hints = [
            hint.strip()
            for word in extras
            if word.startswith("--") and (hint := did_you_mean(word.split("=", 1)[0], known))
        ]
        return f"unrecognized arguments: {' '.join(extras)}" + (f" ({'; '.join(hints)})" if hints else "")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized_message(extras))
        return namespace

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = [str(choice) for choice in action.choices]
            raise argparse.ArgumentError(
                action,
                f"invalid choice: {value!r} ({did_you_mean(str(value), choices)}choose from {', '.join(choices)})",
            )


class SubCommandParser(SegsweepParser):
    """The parser of a verb (``segsweep cv``, ``segsweep sweep run``)."""

    is_sub_command = True
