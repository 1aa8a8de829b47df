"""trainer.config: values from options, --config files and records are taken as written, or refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeps.cli import main
from trainer.config import CVConfig, load_config_file
from trainer.errors import ConfigError


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", 2.5, "epochs must be a whole number, got 2.5"),
        ("batch_size", 7.9, "batch_size must be a whole number, got 7.9"),
        ("limit", 31.5, "limit must be a whole number, got 31.5"),
        ("epochs", True, "epochs must be a number, got True"),
        ("lr", True, "lr must be a number, got True"),
    ],
)
def test_numbers_are_not_truncated_or_taken_from_booleans(key: str, value: object, message: str) -> None:
    # int(2.5) == 2 and float(True) == 1.0: `epochs: 2.5` trained 2 epochs and `lr: yes` at 1.0.
    with pytest.raises(ConfigError, match=message):
        CVConfig.from_dict({key: value}, source="c.yaml")


def test_whole_floats_and_numeric_strings_still_read() -> None:
    config = CVConfig.from_dict({"epochs": 20.0, "lr": "1e-3", "batch_size": "8"})
    assert (config.epochs, config.lr, config.batch_size) == (20, 0.001, 8)


def test_cv_config_file_with_a_fractional_epoch_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 2.5\n")
    assert main(["cv", "--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epochs must be a whole number, got 2.5" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "o").exists()


def test_fields_beside_config_mapping_are_refused(tmp_path: Path) -> None:
    # A best.json-style file is read from its `config:` mapping; `epochs: 2` beside it was dropped.
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"config": {"encoder": "vgg16", "epochs": 20}, "epochs": 2, "data": "/d", "sweep": "s"}))
    with pytest.raises(ConfigError, match=r"best.json: epochs stand\(s\) beside `config:` and would be ignored"):
        load_config_file(path)
    path.write_text(json.dumps({"config": {"encoder": "vgg16", "epochs": 20}, "data": "/d", "sweep": "s"}))
    config, extras = load_config_file(path)
    assert (config.encoder, config.epochs, extras) == ("vgg16", 20, {"data": "/d"})
