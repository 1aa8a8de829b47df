"""What every benchmark script shares: options, machine facts, data sets, tables and the JSON record.

Each script measures a thing and its baseline in one run, on the same machine state, and prints
their ratio on a last line ``ratio NAME VALUE`` (absolute times drift on shared machines; ratios
hold better). The full record goes to ``--json`` (default ``benchmarks/results/NAME.json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # scripts run as `python benchmarks/x.py`: make trainer/, tests/ importable
    sys.path.insert(0, str(REPO))

import segsweep.base.env  # noqa: E402, F401  (Keras environment before anything imports TensorFlow)

#: The real data set, where it exists beside the repository (never copied into it).
REAL_KVASIR_SEG = REPO.parent / "shared" / "data" / "kvasir-seg"
RESULTS_DIR = REPO / "benchmarks" / "results"
#: Set in the child once a script has re-executed itself inside a loopback-only network namespace.
NETNS_FLAG = "SEGSWEEP_BENCH_IN_NETNS"


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (CI); full mode otherwise")
    p.add_argument(
        "--json",
        type=Path,
        default=RESULTS_DIR / f"{name}.json",
        help=f"where to write the results (default benchmarks/results/{name}.json)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="Kvasir-SEG folder (default ../shared/data/kvasir-seg where present; synthetic in --quick)",
    )
    return p


def machine() -> dict[str, Any]:
    """nproc, CPU model, memory, load and library versions: what the numbers were measured on."""
    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    versions = {}
    for module in ("tensorflow", "tf_keras", "numpy", "cv2", "albumentations", "ray"):
        try:
            versions[module] = __import__(module).__version__ if module in sys.modules else _version(module)
        except Exception:  # a missing optional module only leaves a gap in the record
            versions[module] = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
    }


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    names = {"cv2": "opencv-python-headless", "tf_keras": "tf-keras"}
    try:
        return version(names.get(module, module))
    except PackageNotFoundError:
        return None


def real_data(args: argparse.Namespace) -> Path | None:
    """The real data set to use in full mode, or None (quick mode, or absent)."""
    if args.quick:
        return None
    root = args.data or REAL_KVASIR_SEG
    return root if (root / "images").is_dir() else None


#: A search space around one fixed tiny configuration: only the learning rate is drawn, so every
#: trial of a benchmark sweep costs the same.
TINY_SPACE = """\
name: {name}
description: one fixed configuration (the learning rate is the only thing drawn)
params:
  lr:
    type: float
    low: 1.0e-4
    high: 1.0e-3
    log: true
fixed:
  encoder: {encoder}
  arch: unet
  weights: none
  loss: iou
  batch_size: {batch}
  epochs: 1
  folds: 2
  image_size: {size}
"""


def tiny_space(name: str, encoder: str, size: int, batch: int) -> str:
    """TINY_SPACE filled in, as YAML text for ``segsweep sweep run --space FILE``."""
    return TINY_SPACE.format(name=name, encoder=encoder, size=size, batch=batch)


def synthetic_dataset(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` synthetic Kvasir-SEG-layout pairs of ``size`` px (JPEG images and masks) under ``root``."""
    from tests.support.synth import make_dataset

    return make_dataset(root, n, layout="kvasir-seg", size=size, seed=seed)


@contextmanager
def temporary_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"segsweep-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    seconds: float = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def best_of(fn: Callable[[], float], repeats: int) -> list[float]:
    """``fn()`` ``repeats`` times (each returns a rate or a time); all values, for median/min."""
    return [fn() for _ in range(repeats)]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table (numbers right-aligned, 3 significant decimals for floats)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    lines = [line(headers), "  ".join("-" * w for w in widths)]
    lines.extend(line(row) for row in cells)
    return "\n".join(lines)


def finish(name: str, args: argparse.Namespace, ratio: float, record: dict[str, Any]) -> None:
    """Write the JSON record (machine, mode, results, ratio) and print the final ``ratio`` line."""
    record = {
        "benchmark": name,
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        **record,
        "ratio": ratio,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    print(f"ratio {name} {ratio:.4g}", flush=True)


def reexec_in_loopback_netns() -> None:
    """Run this script again inside a network namespace that has only loopback, unless already there.

    Ray opens ports on every interface it sees; in a fresh namespace with only ``lo`` up it cannot
    reach, or be reached from, anything but 127.0.0.1.
    """
    if os.environ.get(NETNS_FLAG) == "1":
        return
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        sys.exit("this benchmark starts Ray and runs it in a loopback-only namespace; it needs `unshare` and `ip`")
    env = {**os.environ, NETNS_FLAG: "1"}
    command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
    sys.exit(subprocess.call(command, env=env))


@contextmanager
def local_ray(num_cpus: int | None = None, object_store_bytes: int = 256 << 20) -> Iterator[None]:
    """A local Ray on 127.0.0.1 with its files in a private temp folder; stopped (by pid) after.

    Start-up timeouts are raised: on a loaded shared machine Ray's agents can take longer than its
    defaults to come up. Any Ray process that outlives ``ray.shutdown`` and names our temp folder on
    its command line (so was started by us) is killed by pid.
    """
    import logging

    import ray

    from tests.support.ray import stop_processes_using

    temp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths have a length limit
    os.environ["RAY_TMPDIR"] = temp
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
    try:
        for attempt in (1, 2):
            try:
                ray.init(
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    object_store_memory=object_store_bytes,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    _temp_dir=f"{temp}/ray",
                )
                break
            except Exception as exc:  # Ray raises bare Exception when its node times out
                ray.shutdown()
                stop_processes_using(temp)
                if attempt == 2:
                    raise SystemExit(f"Ray did not start on this machine: {exc}") from None
                print(f"Ray did not start ({exc}); trying once more", file=sys.stderr)
        yield
    finally:
        ray.shutdown()
        stop_processes_using(temp)
        shutil.rmtree(temp, ignore_errors=True)
