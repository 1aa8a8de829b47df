"""segsweep.base.parser: every verb refuses abbreviations, suggests the closest word and shows its own usage."""

from __future__ import annotations

import pytest

from sweeps.cli import main


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The stderr lines of an argparse refusal (exit 2, before any verb runs)."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


def test_a_prefix_of_an_option_is_refused_not_taken_for_it(capsys: pytest.CaptureFixture[str]) -> None:
    # argparse's default allow_abbrev ran `cv --epoch 3` as `--epochs 3`.
    lines = _refused(["cv", "--data", "d", "--out", "o", "--epoch", "3"], capsys)
    assert lines[-1] == "segsweep cv: error: unrecognized arguments: --epoch 3 (did you mean '--epochs'?)"


def test_an_unknown_option_gets_the_sub_commands_usage_and_the_closest_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = _refused(["sweep", "run", "--spcae=quick"], capsys)
    assert lines[0].startswith("usage: segsweep sweep run ")  # not the root's `usage: segsweep [-h] ... COMMAND`
    assert lines[-1] == "segsweep sweep run: error: unrecognized arguments: --spcae=quick (did you mean '--space'?)"


def test_an_unknown_word_with_nothing_close_gets_no_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _refused(["sweep", "status", "s", "--zzzz"], capsys)
    assert lines[-1] == "segsweep sweep status: error: unrecognized arguments: --zzzz"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["swep", "list"], "segsweep: error: argument COMMAND: invalid choice: 'swep' (did you mean 'sweep'? "),
        (["sweep", "stat", "s"], "segsweep sweep: error: argument ACTION: invalid choice: 'stat' "
         "(did you mean 'status'? "),
        (["export", "m", "--out", "o", "--format", "onxx"], "segsweep export: error: argument --format: invalid "
         "choice: 'onxx' (did you mean 'onnx'? choose from savedmodel, onnx)"),
    ],
)  # fmt: skip
def test_a_misspelt_verb_or_choice_names_the_closest(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _refused(argv, capsys)[-1].startswith(line)


def test_every_verb_parser_refuses_abbreviations() -> None:
    import argparse

    from sweeps.cli import build_parser

    def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        found = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for verb in action.choices.values():
                    found += parsers(verb)
        return found

    every = parsers(build_parser())
    assert len(every) > 15 and not [p.prog for p in every if p.allow_abbrev]
