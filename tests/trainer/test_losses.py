"""trainer.losses: the one registry of losses, read by config validation, the cv help and compiling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from segsweep.base.errors import ConfigError
from sweeps.cli import main
from trainer.config import CVConfig
from trainer.losses import LOSSES, make_loss, register_loss


@pytest.fixture
def registry_restored() -> Iterator[None]:
    """Leave the registry as found: a loss a test registers does not outlive the test."""
    saved = dict(LOSSES)
    yield
    LOSSES.clear()
    LOSSES.update(saved)


def _tiny_batch() -> tuple[Any, Any]:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    y_true = (rng.random((2, 32, 32, 1)) > 0.5).astype("float32")
    y_pred = rng.uniform(0.05, 0.95, (2, 32, 32, 1)).astype("float32")
    return tf.constant(y_true), tf.constant(y_pred)


def test_the_built_in_losses_keep_their_names() -> None:
    assert list(LOSSES) == ["iou", "dice", "bce_dice"]


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_registered_loss_builds_and_gives_a_finite_value(name: str) -> None:
    y_true, y_pred = _tiny_batch()
    value = float(make_loss(name)(y_true, y_pred))
    assert np.isfinite(value)
    assert value > 0  # a random prediction is far from the masks
    perfect = float(make_loss(name)(y_true, y_true))
    assert perfect < value


def test_an_unknown_loss_is_refused_naming_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match=r"^unknown loss 'focal'; choose one of: iou, dice, bce_dice$"):
        CVConfig(loss="focal").validate()


def test_a_loss_registered_in_one_place_is_accepted_and_offered(
    registry_restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    @register_loss("focal_stand_in", "a stand-in registered by this test")
    def _stand_in() -> Any:
        return lambda y_true, y_pred: abs(y_true - y_pred)

    CVConfig(loss="focal_stand_in").validate()
    assert make_loss("focal_stand_in") is not None
    with pytest.raises(SystemExit) as exit_info:
        main(["cv", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "bce_dice (binary cross-entropy plus 1 - Dice) or focal_stand_in (a stand-in registered by this test)" in (
        help_text
    )


def test_a_loss_name_is_registered_once(registry_restored: None) -> None:
    with pytest.raises(ValueError, match="loss 'iou' is already registered"):
        register_loss("iou", "another IoU")(lambda: None)
