"""Reports: the winner's report, the final model (retrain), predictions and the polyp counter.

From Python: ``reports.retrain(sweep, out)`` trains the winner of a :class:`sweeps.Sweep` into a model
bundle, ``reports.predict(model, images, out, masks=...)`` predicts and scores a folder; the
``segsweep report|retrain|predict|count`` verbs are thin layers over this package.
"""

import segsweep.base.env  # noqa: F401
from reports.predict import PredictionReport, predict
from reports.retrain import retrain

__all__ = ["PredictionReport", "predict", "retrain"]
