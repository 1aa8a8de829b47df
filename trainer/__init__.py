"""The cross-validation worker: data, augmentation, models, metrics and the K-fold loop.

Runs as plain Python, without Ray; ``sweeps`` adapts it to Ray Tune through a Reporter.
"""

from trainer import _env  # noqa: F401  (must run before anything imports Keras)
from trainer.config import ARCHITECTURES, ENCODERS, CVConfig, load_config_file
from trainer.errors import ConfigError, DataError, SegsweepError, WeightsError
from trainer.losses import LOSSES
from trainer.reporting import FoldPreview, MultiReporter, Reporter
from trainer.results import CVResult, EpochRecord, FoldResult


def version() -> str:
    """segsweep's installed version (what cv.json, model bundles and ``--version`` record)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("segsweep")
    except PackageNotFoundError:
        return "0+unknown"


__all__ = [
    "ARCHITECTURES",
    "ENCODERS",
    "LOSSES",
    "CVConfig",
    "CVResult",
    "ConfigError",
    "DataError",
    "EpochRecord",
    "FoldPreview",
    "FoldResult",
    "MultiReporter",
    "Reporter",
    "SegsweepError",
    "WeightsError",
    "load_config_file",
    "version",
]
