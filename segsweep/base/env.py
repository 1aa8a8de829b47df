"""Environment that must be in place before anything imports Keras, and TensorFlow's start-up noise.

segmentation-models 1.0.1 picks its Keras backend from ``SM_FRAMEWORK`` at import time, and
TensorFlow 2.21 only serves the Keras 2 API (which segmentation-models needs) through ``tf_keras``
when ``TF_USE_LEGACY_KERAS=1``. Users never export these: every segsweep package imports this
module first.

TensorFlow's C++ start-up lines (oneDNN and CUDA-stub notices, CPU feature guards, and on machines
without a GPU ``E0000 ... cuda_platform.cc ... failed call to cuInit``) read as errors. Some are
written before TensorFlow's logging starts, so ``TF_CPP_MIN_LOG_LEVEL`` cannot hide them: by default
segsweep raises that level to 3 (hides the cuInit error, which comes at device set-up) and filters
standard error at the file-descriptor level while ``tensorflow`` is first imported, replaying every
line that is not such a notice. ``segsweep --verbose`` (:func:`show_native_logs`, or
``SEGSWEEP_VERBOSE=1``, which child processes such as Ray workers inherit) shows all of them.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 or newer; on an AVX2-only
# CPU (many AMD EPYC and Ryzen, older Xeons) convolutions then run Eigen's im2col path. Measured on
# such a 2-core EPYC: resnet18 U-Net, 128 px, batch 8, 6.0-6.4 training images/s with oneDNN against
# 3.0-3.3 without (benchmarks/README.md, section 7: 0.33x on the AVX-512 machine). A user's own
# TF_ENABLE_ONEDNN_OPTS wins; cv.json's runtime records the value a run trained with.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# segsweep never phones home, and neither do the libraries it starts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# albumentations asks PyPI for a newer version at import time: no traffic leaves the machine for that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# MLflow logs INFO lines ("Creating initial MLflow database tables...") on the terminal of every
# sweep, cv and report: its own level, read when mlflow is imported (here and in Ray's workers).
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


#: Outputs can hold a clinic's data (images in caches and predictions, scores, databases): by default
#: only their owner may read them. SEGSWEEP_UMASK (octal, e.g. 022) opens them up.
DEFAULT_UMASK = 0o077


def apply_umask() -> int:
    """Set the process umask from SEGSWEEP_UMASK (default 077: folders 0700, files 0600); return it.

    Set once at start-up, so every file segsweep, its libraries (SQLite, MLflow, Optuna) and the
    processes it starts (a local Ray's workers) create follows it.
    """
    from segsweep.base.errors import ConfigError

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


def created_folder_mode() -> int:
    """The mode a new folder gets under the current umask (0777 & ~umask): for folders made by mkdtemp
    (owner-only whatever the umask) that become outputs, such as a bundle's or an export's staging."""
    current = os.umask(0)
    os.umask(current)
    return 0o777 & ~current


#: ``1``: show TensorFlow's native start-up and log lines (set by ``--verbose``; inherited by workers).
VERBOSE_ENV = "SEGSWEEP_VERBOSE"
_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
#: Whether segsweep (not the user) chose TF_CPP_MIN_LOG_LEVEL in this process tree.
_LEVEL_OURS = "_SEGSWEEP_TF_LOG_LEVEL_SET"

#: Start-up lines of TensorFlow's native libraries: absl/glog INFO and WARNING lines ("I0000 00:00:...",
#: "W0000 ..."), absl's note that it logs to stderr before initialisation, the CPU feature guard's
#: second line, and the CUDA probes of a machine without a GPU. Anything else is replayed.
_NOISE = re.compile(
    r"^(?:[IW]\d{4} \d\d:\d\d:\d\d"
    r"|[EW]\d{4} .*(?:cuda_platform|cuda_executor|cuda_diagnostics|cudart_stub|cuInit)"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)"
)


def native_logs_shown() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def is_startup_noise(line: str) -> bool:
    """Whether ``line`` is one of TensorFlow's native start-up notices hidden by default."""
    return bool(_NOISE.match(line.strip()))


@contextlib.contextmanager
def startup_noise_filtered(is_noise: Callable[[str], bool] = is_startup_noise) -> Iterator[None]:
    """Capture file descriptor 2 for the block; replay what ``is_noise`` does not match (all on error).

    The native libraries (TensorFlow's, Ray's) write before any Python logging is set up, so only
    the file descriptor catches them."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = lines if failed else [line for line in lines if not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


#: A context manager factory a module's first import runs inside.
_ImportContext = Callable[[], contextlib.AbstractContextManager[Any]]


class _LoaderInContext(importlib.abc.Loader):
    """Runs a module's real loader inside ``context()`` (a context manager)."""

    def __init__(self, loader: importlib.abc.Loader, context: _ImportContext) -> None:
        self._loader = loader
        self._context = context

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with self._context():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # resource readers and the like come from the real loader
        return getattr(self._loader, name)


class _FirstImportInContext(importlib.abc.MetaPathFinder):
    """Finds module ``name`` the usual way and runs its first import inside ``context()`` (unless
    ``skip()`` says otherwise by then); then steps aside."""

    def __init__(
        self,
        name: str,
        context: _ImportContext,
        skip: Callable[[], bool] = lambda: False,
    ) -> None:
        self.name, self._context, self._skip = name, context, skip

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        _remove_first_import_wrapper(self.name)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and not self._skip():
            spec.loader = _LoaderInContext(spec.loader, self._context)
        return spec


def _remove_first_import_wrapper(name: str) -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _FirstImportInContext) and f.name == name)]


def _remove_import_filter() -> None:
    _remove_first_import_wrapper("tensorflow")


#: segmentation-models 1.0.1 prints this at import (``print``, not a logger): segsweep chose the
#: framework itself (``SM_FRAMEWORK`` above), so the line tells the user nothing.
SM_BANNER = re.compile(r"^Segmentation Models: using `[\w.]+` framework\.$")


@contextlib.contextmanager
def _sm_banner_removed() -> Iterator[None]:
    """Standard output without segmentation-models' banner; every other line printed meanwhile is kept."""
    import io

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        kept = [line for line in printed.getvalue().splitlines(keepends=True) if not SM_BANNER.match(line.strip())]
        sys.stdout.write("".join(kept))


def show_native_logs() -> None:
    """Show TensorFlow's native lines from now on, here and in child processes (``--verbose``)."""
    os.environ[VERBOSE_ENV] = "1"
    if os.environ.get(_LEVEL_OURS) == "1":
        os.environ[_TF_LOG_LEVEL] = "0"
    _remove_import_filter()


if _TF_LOG_LEVEL not in os.environ:
    os.environ[_TF_LOG_LEVEL] = "0" if native_logs_shown() else "3"
    os.environ[_LEVEL_OURS] = "1"
if not native_logs_shown() and "tensorflow" not in sys.modules:
    _remove_import_filter()
    sys.meta_path.insert(0, _FirstImportInContext("tensorflow", startup_noise_filtered, skip=native_logs_shown))
if "segmentation_models" not in sys.modules and not any(
    isinstance(f, _FirstImportInContext) and f.name == "segmentation_models" for f in sys.meta_path
):
    sys.meta_path.insert(0, _FirstImportInContext("segmentation_models", _sm_banner_removed))
