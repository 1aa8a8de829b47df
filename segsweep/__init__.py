"""segsweep's public Python face: the one documented API.

::

    import segsweep

    sweep = segsweep.Sweep.create("nb", data="../shared/data/kvasir-seg", space="quick", trials=4)
    sweep.run()
    model = segsweep.retrain(sweep, "runs/nb-model")
    scored = segsweep.predict(model, "test/images", "runs/nb-pred", masks="test/masks")

The names resolve lazily (PEP 562), so ``import segsweep`` is cheap and loads neither TensorFlow nor
Ray; each is loaded from its home package (``trainer``, ``sweeps``, ``reports``) on first use. The
top-level packages keep their roles; this module only names what a user may rely on.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from segsweep.base import env as _env  # noqa: F401  (first: the Keras environment, as every package sets it)
from segsweep.base import version
from segsweep.base.errors import ConfigError, DataError, SegsweepError, WeightsError

if TYPE_CHECKING:
    from reports.export import export_bundle as export
    from reports.predict import PredictionReport, predict
    from reports.retrain import retrain
    from sweeps.api import Sweep, SweepRun, open_sweep
    from trainer.config import CVConfig, load_config_file
    from trainer.cv import cross_validate as cv
    from trainer.results import CVResult, FoldResult

__version__: str = version()

#: public name -> (module, attribute): the one table of what ``segsweep`` exports lazily.
_LAZY: dict[str, tuple[str, str]] = {
    "CVConfig": ("trainer.config", "CVConfig"),
    "CVResult": ("trainer.results", "CVResult"),
    "FoldResult": ("trainer.results", "FoldResult"),
    "load_config_file": ("trainer.config", "load_config_file"),
    "cv": ("trainer.cv", "cross_validate"),
    "Sweep": ("sweeps.api", "Sweep"),
    "SweepRun": ("sweeps.api", "SweepRun"),
    "open_sweep": ("sweeps.api", "open_sweep"),
    "retrain": ("reports.retrain", "retrain"),
    "predict": ("reports.predict", "predict"),
    "PredictionReport": ("reports.predict", "PredictionReport"),
    "export": ("reports.export", "export_bundle"),
}

__all__ = [
    "CVConfig",
    "CVResult",
    "ConfigError",
    "DataError",
    "FoldResult",
    "PredictionReport",
    "SegsweepError",
    "Sweep",
    "SweepRun",
    "WeightsError",
    "__version__",
    "cv",
    "export",
    "load_config_file",
    "open_sweep",
    "predict",
    "retrain",
]


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'segsweep' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
