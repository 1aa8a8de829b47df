"""Environment that must be in place before anything imports Keras.

segmentation-models 1.0.1 picks its Keras backend from ``SM_FRAMEWORK`` at import time, and
TensorFlow 2.21 only serves the Keras 2 API (which segmentation-models needs) through ``tf_keras``
when ``TF_USE_LEGACY_KERAS=1``. Users never export these: every segsweep package imports this
module first.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
# TensorFlow's C++ start-up chatter (CPU feature guards, oneDNN notices) drowns segsweep's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# segsweep never phones home, and neither do the libraries it starts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# albumentations asks PyPI for a newer version at import time: no traffic leaves the machine for that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


#: Outputs can hold a clinic's data (images in caches and predictions, scores, databases): by default
#: only their owner may read them. SEGSWEEP_UMASK (octal, e.g. 022) opens them up.
DEFAULT_UMASK = 0o077


def apply_umask() -> int:
    """Set the process umask from SEGSWEEP_UMASK (default 077: folders 0700, files 0600); return it.

    Set once at start-up, so every file segsweep, its libraries (SQLite, MLflow, Optuna) and the
    processes it starts (a local Ray's workers) create follows it.
    """
    from trainer.errors import ConfigError

    raw = os.environ.get("SEGSWEEP_UMASK", "").strip()
    try:
        mask = int(raw, 8) if raw else DEFAULT_UMASK
    except ValueError:
        raise ConfigError(f"SEGSWEEP_UMASK={raw!r} is not an octal umask; use e.g. 077 (private) or 022") from None
    if not 0 <= mask <= 0o777:
        raise ConfigError(f"SEGSWEEP_UMASK={raw!r} is out of range; use e.g. 077 (private) or 022")
    os.umask(mask)
    return mask


def created_file_mode() -> int:
    """The mode a new file gets under the current umask (0666 & ~umask)."""
    current = os.umask(0)
    os.umask(current)
    return 0o666 & ~current
