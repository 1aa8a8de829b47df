"""The losses a model can train with: one registry, the home of every loss name.

``--loss``, a config file's ``loss``, a search space's ``loss`` choices (checked through
``CVConfig.validate``), the ``cv`` help and model compiling all read :data:`LOSSES`. Adding a loss
is one :func:`register_loss` call here (plus its row in ``tests/trainer/test_losses.py``, which
builds every registered loss). Factories import segmentation-models only when called, so the
registry (and option checking) does not load TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Loss:
    """One loss: its ``--loss`` word, a one-line description for the help, and what builds it."""

    name: str
    description: str
    #: Builds the Keras loss (a callable ``loss(y_true, y_pred)``, e.g. a segmentation-models loss).
    factory: Callable[[], Any]


#: Every loss by its ``--loss`` word, in the order registered (the help's and error lines' order).
LOSSES: dict[str, Loss] = {}


def register_loss(name: str, description: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Register the decorated factory as the loss ``name`` (a lower-case word without spaces)."""

    def register(factory: Callable[[], Any]) -> Callable[[], Any]:
        if not name or name != name.strip().lower() or " " in name or "," in name:
            raise ValueError(f"a loss name must be a lower-case word, not {name!r}")
        existing = LOSSES.get(name)
        if existing is not None and existing.factory is not factory:
            raise ValueError(f"loss {name!r} is already registered ({existing.factory.__module__})")
        LOSSES[name] = Loss(name, description, factory)
        return factory

    return register


def make_loss(name: str) -> Any:
    """The Keras loss registered as ``name`` (``CVConfig.validate`` has refused any other name)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}")
    return LOSSES[name].factory()


def loss_help() -> str:
    """``--loss``'s help: every registered loss with its description, e.g. ``iou (Jaccard), ... or bce_dice (...)``."""
    words = [f"{loss.name} ({loss.description})" for loss in LOSSES.values()]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


@register_loss("iou", "Jaccard: 1 - IoU")
def _iou() -> Any:
    import segmentation_models as sm

    return sm.losses.JaccardLoss()


@register_loss("dice", "1 - Dice")
def _dice() -> Any:
    import segmentation_models as sm

    return sm.losses.DiceLoss()


@register_loss("bce_dice", "binary cross-entropy plus 1 - Dice")
def _bce_dice() -> Any:
    import segmentation_models as sm

    return sm.losses.BinaryCELoss() + sm.losses.DiceLoss()
