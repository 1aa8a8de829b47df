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
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segsweep.base import version
from segsweep.base.errors import ConfigError, SegsweepError
from trainer.config import CVConfig
from trainer.results import CV_FILE, MODELS_DIR, read_cv_result

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


def retrain_checkpoint_path(out: str | Path) -> Path:
    """Where a retrain into bundle folder ``out`` keeps its epoch checkpoint until the bundle exists.

    Beside ``out``, not in it: the bundle folder appears only whole (see write_bundle).
    """
    out = Path(out)
    return out.parent / f".{out.name}.checkpoint.npz"


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
        raise BundleError(f"{path / CONFIG_FILE} is not a segsweep model bundle description (no bundle_format)")
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


def bundle_meta(
    config: CVConfig, *, data: Mapping[str, Any], source: Mapping[str, Any], seconds: float, **more: Any
) -> dict[str, Any]:
    """config.json of a bundle: format, version, time, configuration, preprocessing, threshold, data, source
    (and ``more``, e.g. the TensorFlow runtime it trained with)."""
    from datetime import UTC, datetime

    return {
        "bundle_format": BUNDLE_FORMAT,
        "segsweep_version": version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "preprocessing": describe(config),
        "threshold": 0.5,
        "data": dict(data),
        "source": dict(source),
        "seconds": seconds,
        **more,
    }


def write_bundle(
    out: Path,
    model: tf_keras.Model,
    meta: Mapping[str, Any],
    *,
    history: Sequence[Any] = (),
    train_stems: Sequence[str] = (),
    extra_files: Mapping[str, str | Mapping[str, Any]] | None = None,
) -> Path:
    """Write a bundle folder at ``out`` (which must not exist or be empty) and return it.

    Written next to the destination and renamed, so an interrupted write leaves no half bundle.
    ``history`` items are dataclasses (EpochRecord) or mappings; ``extra_files`` maps file names to
    text (written as is) or mappings (written as JSON).
    """
    from dataclasses import asdict, is_dataclass

    from segsweep.base.files import disk_full_as_error, write_json_atomic, write_text_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # A full disk (h5py's OSError, errno 28) is one line with the bundle's size; the staging goes.
        with disk_full_as_error(out.parent, weights_bytes(model) + (1 << 20)):
            model.save_weights(str(staging / WEIGHTS_FILE))
            write_json_atomic(staging / CONFIG_FILE, dict(meta))
            rows = [asdict(h) if is_dataclass(h) and not isinstance(h, type) else dict(h) for h in history]
            write_json_atomic(staging / HISTORY_FILE, rows)
            for name, content in (extra_files or {}).items():
                if isinstance(content, str):
                    write_text_atomic(staging / name, content)
                else:
                    write_json_atomic(staging / name, dict(content))
            write_text_atomic(staging / TRAIN_STEMS_FILE, "".join(f"{stem}\n" for stem in train_stems))
        # mkdtemp makes an owner-only folder: give the bundle the modes of every other output (the
        # umask; segsweep's default 077 keeps a model trained on patients' images private).
        from segsweep.base.env import created_file_mode, created_folder_mode

        staging.chmod(created_folder_mode())
        for path in staging.iterdir():
            path.chmod(created_file_mode())
        if out.exists():
            out.rmdir()  # the caller checked it is empty
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def weights_bytes(model: tf_keras.Model) -> int:
    """Bytes of the model's weights: about the size of its weights.h5 (and of an export's variables)."""
    return sum(int(w.shape.num_elements() or 0) * w.dtype.size for w in model.weights)


def load_bundles(path: str | Path) -> list[ModelBundle]:
    """One model bundle, or every fold model of a fold-model set (a fold ensemble), in fold order.

    A fold-model set is a `segsweep cv --keep-models` output folder or a sweep trial's folder (both
    hold ``models/fold_NN/``), or that ``models/`` folder itself. All its folds must share one
    configuration, and a set beside a ``cv.json`` must hold a model for every fold it lists.
    """
    path = Path(path)
    if (path / CONFIG_FILE).is_file() or not path.is_dir():
        return [load_bundle(path)]
    models = path / MODELS_DIR if (path / MODELS_DIR).is_dir() else path
    folds = sorted(p for p in models.glob("fold_*") if p.is_dir())
    if not folds:
        raise BundleError(
            f"{path} is neither a model bundle ({CONFIG_FILE}, {WEIGHTS_FILE}) nor a fold-model set "
            "(models/fold_NN/ from `segsweep cv --keep-models` or `segsweep sweep run --keep-models K`); "
            "pass the --out of `segsweep retrain` or of `segsweep cv --keep-models`"
        )
    bundles = [load_bundle(fold) for fold in folds]
    cv_path = models.parent / CV_FILE
    if cv_path.is_file():
        cv = read_cv_result(models.parent)
        n_folds = cv.n_folds if cv is not None else len(bundles)
        if len(bundles) != n_folds:
            raise BundleError(
                f"{models} holds {len(bundles)} fold model(s) but {cv_path} has {n_folds} folds: the "
                "cross-validation is unfinished or ran without --keep-models; finish it with --keep-models "
                "(or pass one fold's folder to predict with that fold alone)"
            )
    first = bundles[0].config.to_dict()
    for bundle in bundles[1:]:
        if bundle.config.to_dict() != first:
            raise BundleError(
                f"{bundle.path} was trained with another configuration than {bundles[0].path}; a fold "
                "ensemble averages models of one configuration"
            )
    return bundles


def describe(config: CVConfig) -> dict[str, str]:
    """How inputs must be prepared for a model of this configuration (stored in config.json)."""
    return {
        "encoder": config.encoder,
        "function": f"segmentation_models.get_preprocessing({config.encoder!r})",
        "input": f"RGB uint8 resized to {config.image_size}x{config.image_size} (area interpolation), as float32",
        "output": "sigmoid foreground probability per pixel; foreground where > 0.5",
    }
