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
