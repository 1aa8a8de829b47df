"""Model bundles: a retrained model as a folder that loads in a fresh process.

A bundle holds::

    config.json     bundle format, segsweep version, the CVConfig, preprocessing, source sweep/trial
    weights.h5      the model's weights (``model.save_weights``)
    history.json    per-epoch loss and learning rate of the retraining
    schedule.json   the learning-rate drop epochs used and the rule that chose them
    README.md       the model card
    train_stems.txt the stems of the training images (predict warns when test images are among them)

Weights are saved without the model: a full segmentation-models Keras model cannot be loaded
without importing segmentation-models and registering its custom objects first. Loading rebuilds
the architecture from the configuration (encoder weights "none") and loads the weights into it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer import version
from trainer.config import CVConfig
from trainer.errors import ConfigError, SegsweepError

if TYPE_CHECKING:
    import tf_keras

#: Bump when the bundle's files or their meaning change; load_bundle refuses other formats.
BUNDLE_FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.h5"
HISTORY_FILE = "history.json"
SCHEDULE_FILE = "schedule.json"
CARD_FILE = "README.md"
TRAIN_STEMS_FILE = "train_stems.txt"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)


class BundleError(SegsweepError):
    """A model bundle that cannot be loaded."""


@dataclass(frozen=True)
class ModelBundle:
    """A loaded bundle's description; :meth:`load_model` builds the Keras model."""

    path: Path
    config: CVConfig
    meta: dict[str, Any]

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    @property
    def source(self) -> dict[str, Any]:
        """Where the model came from: sweep name and folder, trial id (empty if not from a sweep)."""
        source = self.meta.get("source")
        return source if isinstance(source, dict) else {}

    def train_stems(self) -> set[str]:
        """Stems of the images the model was trained on (empty if the bundle does not list them)."""
        path = self.path / TRAIN_STEMS_FILE
        return set(path.read_text().split()) if path.is_file() else set()

    def load_model(self) -> tf_keras.Model:
        """Rebuild the architecture (no encoder weights to fetch) and load the bundle's weights."""
        from trainer.models import build_model

        # float32 whatever the training ran in: the weights are float32 either way.
        model = build_model(replace(self.config, weights="none"), mixed_precision=False)
        try:
            model.load_weights(str(self.path / WEIGHTS_FILE))
        except (ValueError, OSError) as exc:
            raise BundleError(
                f"{self.path / WEIGHTS_FILE} does not fit a {self.config.arch} with encoder "
                f"{self.config.encoder} at {self.config.image_size}px as {self.path / CONFIG_FILE} describes "
                f"({exc}); the bundle is damaged or mixed up: retrain it with `segsweep retrain`"
            ) from None
        return model



def load_bundle(path: str | Path) -> ModelBundle:
    """Read a bundle's description, or say what is missing or which segsweep made it."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(
            f"model bundle {path} does not exist or is not a folder; pass the --out of `segsweep retrain`"
        )
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise BundleError(
            f"{path} is not a complete model bundle: {', '.join(missing)} missing (a bundle holds "
            f"{', '.join((CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE, SCHEDULE_FILE, CARD_FILE))}); "
            "retrain it with `segsweep retrain NAME --out DIR`"
        )
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path / CONFIG_FILE} is not readable JSON ({exc}); retrain the bundle") from None
    if not isinstance(meta, dict) or "bundle_format" not in meta:
        raise BundleError(
            f"{path / CONFIG_FILE} is not a segsweep model bundle description (no bundle_format)"
        )
    if meta["bundle_format"] != BUNDLE_FORMAT:
        raise BundleError(
            f"{path} is a bundle of format {meta['bundle_format']} made by segsweep "
            f"{meta.get('segsweep_version', '?')}; this segsweep ({version()}) reads format "
            f"{BUNDLE_FORMAT}: predict with the segsweep that made it, or retrain it with this one"
        )
    try:
        config = CVConfig.from_dict(meta.get("config", {}), source=str(path / CONFIG_FILE))
        config.validate()
    except ConfigError as exc:
        raise BundleError(f"{exc}; the bundle's configuration is not usable, retrain it") from None
    return ModelBundle(path=path, config=config, meta=meta)


def describe(config: CVConfig) -> dict[str, str]:
    """How inputs must be prepared for a model of this configuration (stored in config.json)."""
    return {
        "encoder": config.encoder,
        "function": f"segmentation_models.get_preprocessing({config.encoder!r})",
        "input": f"RGB uint8 resized to {config.image_size}x{config.image_size} (area interpolation), "
        "as float32",
        "output": "sigmoid foreground probability per pixel; foreground where > 0.5",
    }
