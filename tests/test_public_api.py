"""``import segsweep``: the one documented Python API, cheap to import and complete."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import segsweep


def test_import_segsweep_loads_neither_tensorflow_nor_ray() -> None:
    probe = "import segsweep, sys; print(segsweep.__version__, 'tensorflow' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == [version("segsweep"), "False", "False"]


def test_every_public_name_resolves_to_its_home() -> None:
    from reports.export import export_bundle
    from reports.predict import predict
    from reports.retrain import retrain
    from segsweep.base.errors import SegsweepError
    from sweeps.api import Sweep, open_sweep
    from trainer.config import CVConfig
    from trainer.cv import cross_validate

    for name in segsweep.__all__:
        assert getattr(segsweep, name) is not None, name
    assert (segsweep.cv, segsweep.retrain, segsweep.predict, segsweep.export) == (
        cross_validate, retrain, predict, export_bundle)  # fmt: skip
    assert (segsweep.Sweep, segsweep.open_sweep, segsweep.CVConfig) == (Sweep, open_sweep, CVConfig)
    assert issubclass(segsweep.ConfigError, SegsweepError) and segsweep.SegsweepError is SegsweepError
    assert sorted(dir(segsweep)) == sorted(segsweep.__all__)


def test_the_package_is_typed() -> None:
    assert (Path(segsweep.__file__).parent / "py.typed").is_file()
