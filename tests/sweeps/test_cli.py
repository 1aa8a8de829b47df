"""`segsweep sweep` options, input errors (one line, exit 2, before Ray starts) and the leaderboard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segsweep.base.errors import ConfigError
from segsweep.base.files import write_json_atomic
from sweeps.cli import main
from sweeps.folder import format_leaderboard, load_sweep, update_trial_record
from sweeps.runner import probe_config
from sweeps.spec import SweepSpec
from trainer.results import FoldResult, fold_path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--trials", "0"], "--trials must be at least 1"),
        (["--name", "a/b"], "not usable as a folder"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial must be positive"),
        (["--gpus-per-trial", "1.5"], "above 1 a trial takes whole GPUs"),
        (["--address", "nowhere"], "is not HOST:PORT"),
    ],
)
def test_bad_options_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, options: list[str], message: str
) -> None:
    base = {
        "--data": str(tmp_path),
        "--space": "quick",
        "--trials": "2",
        "--name": "s",
        "--storage": str(tmp_path / "out"),
    }
    for flag, value in zip(options[::2], options[1::2], strict=True):
        base[flag] = value
    code, text = _run(capsys, "sweep", "run", *[x for kv in base.items() for x in kv])
    assert code == 2 and message in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_unknown_space_and_missing_data_fail_before_ray(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kvasir_seg_dir: Path
) -> None:
    code, text = _run(
        capsys,
        "sweep",
        "run",
        "--data",
        str(kvasir_seg_dir),
        "--space",
        "nope",
        "--trials",
        "1",
        "--name",
        "s",
        "--storage",
        str(tmp_path),
    )
    assert code == 2 and "unknown search space 'nope'" in text
    code, text = _run(
        capsys,
        "sweep",
        "run",
        "--data",
        str(tmp_path / "missing"),
        "--space",
        "quick",
        "--trials",
        "1",
        "--name",
        "s",
        "--storage",
        str(tmp_path),
    )
    assert code == 2 and "missing" in text


def test_existing_sweep_is_not_overwritten(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    SweepSpec(name="s", data=str(tmp_path), space="quick", trials=1, storage=str(tmp_path)).write()
    code, text = _run(
        capsys,
        "sweep",
        "run",
        "--data",
        str(tmp_path),
        "--space",
        "quick",
        "--trials",
        "1",
        "--name",
        "s",
        "--storage",
        str(tmp_path),
    )
    assert code == 2 and "segsweep sweep resume s" in text


def test_resume_and_status_of_an_unknown_sweep_name_the_ones_there(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    SweepSpec(name="other", data=str(tmp_path), space="quick", trials=1, storage=str(tmp_path)).write()
    for verb in ("resume", "status"):
        code, text = _run(capsys, "sweep", verb, "nope", "--storage", str(tmp_path))
        assert code == 2 and "no sweep named 'nope'" in text and "other" in text


def test_probe_rejects_a_searched_image_size(tmp_path: Path) -> None:
    from search_spaces import load_space

    space_file = tmp_path / "s.yaml"
    space_file.write_text(
        "params:\n  image_size: {type: categorical, choices: [64, 128]}\nfixed: {weights: none, folds: 2}\n"
    )
    with pytest.raises(ConfigError, match="move image_size to `fixed`"):
        probe_config(load_space(space_file), {"seed": 0}, 0)
    assert probe_config(load_space(space_file), {"image_size": 64, "seed": 0}, 0).image_size == 64
    quick = probe_config(load_space("quick"), {"folds": 3, "epochs": 1, "seed": 5}, 0)
    assert (quick.folds, quick.epochs, quick.seed, quick.image_size) == (3, 1, 5, 64)


def _fold(number: int, dice: float) -> dict[str, object]:
    return FoldResult(
        fold=number, n_train=8, n_val=8, dice=dice, iou=dice - 0.1, epochs_run=1, lr_drops=[], history=[], seconds=1.0
    ).to_dict()


def test_status_prints_the_leaderboard(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = SweepSpec(name="s", data="/data", space="quick", trials=4, storage=str(tmp_path))
    spec.write()
    trials = {
        "aaa": ({"number": 0, "state": "COMPLETE", "params": {"lr": 0.001, "encoder": "resnet18"}}, [0.6, 0.7]),
        "bbb": (
            {
                "number": 1,
                "state": "PRUNED",
                "params": {"lr": 0.0001, "encoder": "mobilenetv2"},
                "reason": "stopped by the scheduler after 1 of 2 folds",
            },
            [0.2],
        ),
        "ccc": (
            {
                "number": 2,
                "state": "FAILED",
                "params": {"lr": 0.01, "encoder": "resnet18"},
                "reason": "TrainingError: loss became NaN",
            },
            [],
        ),
        "ddd": ({"number": 3, "state": "COMPLETE", "params": {"lr": 0.002, "encoder": "resnet18"}}, [0.8, 0.8]),
    }
    for trial_id, (record, dices) in trials.items():
        folder = spec.folder.trial_dir(trial_id)
        update_trial_record(folder, trial_id=trial_id, n_folds=2, **record)
        for i, dice in enumerate(dices, start=1):
            write_json_atomic(fold_path(folder, i), _fold(i, dice))
    code, text = _run(capsys, "sweep", "status", "s", "--storage", str(tmp_path))
    assert code == 0
    lines = text.splitlines()
    assert "4/4 trials proposed; 2 complete, 1 pruned, 1 failed" in lines[0]
    assert lines[1].split() == ["rank", "trial", "lr", "encoder", "folds", "Dice", "IoU", "state", "reason"]
    assert lines[2].split()[:6] == ["1", "#3", "(ddd)", "0.002", "resnet18", "2/2"]
    assert "0.8000 ± 0.0000" in lines[2]
    assert lines[3].split()[:3] == ["2", "#0", "(aaa)"] and "0.6500 ± 0.0707" in lines[3]
    assert "PRUNED" in lines[4] and "stopped by the scheduler" in lines[4]
    assert "FAILED" in lines[5] and "loss became NaN" in lines[5] and "0/2" in lines[5]
    assert "optuna-dashboard sqlite:///" in lines[-1]
    assert format_leaderboard(load_sweep(tmp_path, "s")) == text.rstrip("\n")


def test_spec_round_trips_through_sweep_json(tmp_path: Path) -> None:
    spec = SweepSpec(
        name="s",
        data="/d",
        space="paper",
        trials=3,
        storage=str(tmp_path),
        gpus_per_trial=0.5,
        overrides={"limit": 10, "image_size": None, "folds": None, "epochs": 2},
        tracker="mlflow",
    )
    spec.write()
    back = SweepSpec.read(tmp_path, "s")
    assert back.to_dict() == {**spec.to_dict(), "storage": str(tmp_path.resolve())}
    assert back.cv_overrides() == {"limit": 10, "epochs": 2, "seed": 0}
    assert json.loads(spec.folder.spec_file.read_text())["gpus_per_trial"] == 0.5


#: A value for every `sweep run` option, as typed after its flag (None: a flag without a value).
_OPTION_VALUES: dict[str, str | None] = {
    "data": "/d", "space": "quick", "trials": "3", "name": "x", "storage": "STORAGE", "concurrency": "2",
    "cpus_per_trial": "2", "gpus_per_trial": "0.5", "scheduler": "none", "seed": "4", "address": "10.0.0.5:6379",
    "limit": "8", "image_size": "64", "folds": "2", "epochs": "1", "dev_split": "train", "tracker": "none",
    "keep_models": "1", "skip_bad": None, "warm_start": "earlier", "time_budget": "1h30m", "max_failures": "3",
    "mixed_precision": "off", "threads": "2",
}  # fmt: skip
#: --config keys that are no option: what sweep.json records besides the options' values (it re-runs that sweep).
_RECORD_ONLY_KEYS = {"format", "runs", "overrides", "space_definition", "trial_retries", "time_budget_s",
                     "max_failed_trials", "created", "data_key", "warm_start_mode"}  # fmt: skip


def _run_option_dests() -> set[str]:
    import argparse

    from sweeps.cli import add_run_options

    parser = argparse.ArgumentParser()
    add_run_options(parser)
    return {a.dest for a in parser._actions if a.dest not in ("help", "config")}


def test_every_run_option_is_a_config_key_and_every_config_key_an_option() -> None:
    from sweeps.spec import RUN_OPTIONS, config_keys

    keys = {option.key for option in RUN_OPTIONS}
    assert _run_option_dests() == keys  # the parser is made from the one table, runtime options included
    assert keys <= set(config_keys())
    assert set(config_keys()) - keys == _RECORD_ONLY_KEYS
    assert set(_OPTION_VALUES) == keys - {"start"}  # --start names files; `start:` holds their entries


def test_the_space_help_names_every_built_in_space() -> None:
    # The help was hand-written ("paper, quick, or a YAML file") and left out the cpu space.
    from search_spaces import BUILTIN_SPACES
    from sweeps.spec import RUN_OPTIONS

    (space,) = [option for option in RUN_OPTIONS if option.key == "space"]
    help_text = space.help() if callable(space.help) else space.help
    assert all(name in help_text for name in BUILTIN_SPACES)


@pytest.mark.parametrize("key", sorted(_OPTION_VALUES))
def test_an_option_on_the_command_line_and_in_config_make_the_same_spec(tmp_path: Path, key: str) -> None:
    import argparse

    import yaml

    from sweeps.cli import add_run_options, spec_from_args
    from sweeps.spec import RUN_OPTION_BY_KEY

    parser = argparse.ArgumentParser()
    add_run_options(parser)
    base = {"data": "/d", "space": "quick", "trials": "3", "name": "x", "storage": str(tmp_path)}
    given = {**base, key: _OPTION_VALUES[key]} if key not in base else base
    if key == "storage":
        given = base
    argv = [a for k, v in given.items() for a in (RUN_OPTION_BY_KEY[k].flag, *([v] if v is not None else []))]
    config = tmp_path / "sweep.yaml"
    # In a file, numbers are numbers and a flag is `true` (yaml.safe_load reads them so).
    config.write_text(yaml.safe_dump({k: True if v is None else yaml.safe_load(v) for k, v in given.items()}))
    from_options = spec_from_args(parser.parse_args(argv))
    from_config = spec_from_args(parser.parse_args(["--config", str(config)]))
    assert from_config.to_dict() == from_options.to_dict()


def test_sweep_json_with_an_unknown_key_is_refused_in_one_line(tmp_path: Path) -> None:
    spec = SweepSpec(name="s", data="/d", space="quick", trials=2, storage=str(tmp_path))
    spec.folder.path.mkdir(parents=True)
    spec.write()
    record = json.loads(spec.folder.spec_file.read_text())
    spec.folder.spec_file.write_text(json.dumps({**record, "max_failed_trails": 3}))
    with pytest.raises(ConfigError) as refused:
        SweepSpec.read(tmp_path, "s")
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"{spec.folder.spec_file}: unknown key(s) max_failed_trails")
    assert "(did you mean 'max_failed_trials'?); valid keys: address, concurrency, cpus_per_trial," in line
    # sweep.json's own keys and an old file's (format 0: max_failures was Ray's retries) are read as before.
    spec.folder.spec_file.write_text(json.dumps({**record, "runs": [{"finished": True}]}))
    assert SweepSpec.read(tmp_path, "s").trials == 2
    old = {k: v for k, v in record.items() if k not in ("format", "trial_retries")} | {"max_failures": 5}
    assert SweepSpec.from_dict(old).trial_retries == 5


def test_status_json_and_csv_and_list_json_are_parsable_with_the_documented_fields(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import csv
    import io

    from tests.support.fake_sweep import make_sweep

    make_sweep(tmp_path, "m", data=tmp_path / "data", with_study=False)
    code, text = _run(capsys, "sweep", "status", "m", "--storage", str(tmp_path), "--json")
    assert code == 0
    status = json.loads(text)
    assert {"format", "name", "state", "finished", "asked", "best_dice", "path", "counts", "trials"} <= set(status)
    assert status["counts"] == {"COMPLETE": 3, "FAILED": 1, "PRUNED": 1} and status["finished"] == 5
    first = status["trials"][0]
    assert first["rank"] == 1 and first["state"] == "COMPLETE" and first["dice_mean"] == pytest.approx(0.64)
    assert status["trials"][-1]["state"] == "FAILED" and status["trials"][-1]["dice_mean"] is None  # NaN: null

    code, text = _run(capsys, "sweep", "status", "m", "--storage", str(tmp_path), "--csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 0 and len(rows) == 5 and rows[0]["trial_id"] == first["trial_id"] and rows[0]["rank"] == "1"

    code, text = _run(capsys, "sweep", "list", "--storage", str(tmp_path), "--json")
    listed = json.loads(text)
    assert code == 0 and [s["name"] for s in listed["sweeps"]] == ["m"]
    assert listed["sweeps"][0]["finished"] == 5 and listed["sweeps"][0]["state"] == "interrupted"


def test_hints_name_the_storage_the_sweep_is_in(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tests.support.fake_sweep import make_sweep

    make_sweep(tmp_path, "h", data=tmp_path / "data", with_study=False)
    code, text = _run(capsys, "sweep", "stop", "h", "--storage", str(tmp_path))
    assert code == 2 and f"`segsweep sweep resume h --storage {tmp_path}` continues it" in text, text
