"""The cross-validation worker: data, augmentation, models, metrics and the K-fold loop.

Runs as plain Python, without Ray; ``sweeps`` adapts it to Ray Tune through a Reporter.
"""

import segsweep.base.env  # noqa: F401  (must run before anything imports Keras)
from trainer.config import ARCHITECTURES, ENCODERS, CVConfig, load_config_file
from trainer.losses import LOSSES
from trainer.reporter import FoldPreview, MultiReporter, Reporter
from trainer.results import CVResult, EpochRecord, FoldResult

__all__ = [
    "ARCHITECTURES",
    "ENCODERS",
    "LOSSES",
    "CVConfig",
    "CVResult",
    "EpochRecord",
    "FoldPreview",
    "FoldResult",
    "MultiReporter",
    "Reporter",
    "load_config_file",
]
