"""trainer.config: values from options, --config files and records are taken as written, or refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segsweep.base.errors import ConfigError
from sweeps.cli import main
from trainer.config import (
    BATCH_SIZE_MAX,
    EPOCHS_MAX,
    IMAGE_SIZE_MAX,
    SEED_MAX,
    CVConfig,
    load_config_file,
)


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


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("seed", 2**32, "seed 4294967296 is out of range; use a whole number from 0 to 4294967295"),
        ("seed", -1, "seed -1 is out of range; use a whole number from 0 to 4294967295"),
        ("epochs", 54_881_351, "epochs 54881351 is more than 10000, the most segsweep trains"),
        ("image_size", 32_000, r"image size 32000 is more than 4096 px, the largest segsweep trains; use 4096"),
        ("image_size", 4128, "image size 4128 is more than 4096 px"),
        ("batch_size", 10**9, "batch size 1000000000 is more than 65536"),
        ("lr", float("inf"), "learning rate must be a positive finite number, got inf"),
    ],
)
def test_values_no_run_can_use_are_refused_with_the_limit(key: str, value: object, message: str) -> None:
    # `cv --seed 4294967296` and `"seed": -1` died in scikit-learn's KFold; 32000 px and 54,881,351 epochs ran.
    with pytest.raises(ConfigError, match=message):
        CVConfig(**{key: value}).validate()  # type: ignore[arg-type]


def test_the_limits_themselves_are_usable() -> None:
    CVConfig(seed=SEED_MAX, epochs=EPOCHS_MAX, image_size=IMAGE_SIZE_MAX, batch_size=BATCH_SIZE_MAX).validate()
    CVConfig(seed=0).validate()


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


@pytest.mark.parametrize(
    ("field", "misspelt", "closest"),
    [("encoder", "resnet43", "resnet34"), ("arch", "unte", "unet"), ("loss", "dcie", "dice")],
)
def test_a_misspelt_encoder_architecture_or_loss_names_the_closest(field: str, misspelt: str, closest: str) -> None:
    with pytest.raises(ConfigError, match=rf"{misspelt!r}; did you mean {closest!r}\? choose one of: "):
        CVConfig.from_dict({field: misspelt}).validate()


def test_a_misspelt_configuration_key_names_the_closest(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"encodr": "resnet34"}')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) encodr \(did you mean 'encoder'\?\)"):
        load_config_file(config)
