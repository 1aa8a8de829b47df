"""Fault injection: every user-fixable fault is one line naming the problem and the fix, exit 2, no traceback,
and nothing already written is lost or changed.

Each row of ``FAULTS`` builds its input in a fresh workspace (a copy of the 12-pair synthetic Kvasir-SEG
set in ``data/``, and whatever the case plants), runs ``segsweep`` in-process with ``argv`` (a real
subprocess only where a signal is needed), and checks: the exit code, exactly one non-empty line on the
case's stream (stderr unless said) besides known warnings, that line against ``line`` (a regex), no
"Traceback", that every file that existed before is still there unchanged, and the case's own ``check``.

To add a case, add a row: ``Fault(id, description, build, exit, line)``; ``build(ws)`` plants the fault
under ``ws.root`` and returns the argv after ``segsweep``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from sweeps.cli import main
from sweeps.folder import SweepFolder
from tests.support import TINY_ENCODER
from tests.support.fake_sweep import FakeTrial, make_sweep

#: stderr lines that are not the one message: warnings segsweep or its libraries print on the way (MLflow's
#: and TensorFlow's start-up logs in a subprocess).
KNOWN_NOISE = re.compile(
    r"^(segsweep: warning: |\[segsweep\] |\s+\S+ (is|truncated|cannot) |\d{4}/\d\d/\d\d \S+ INFO |"
    r"WARNING: All log messages before absl|[IWE]\d{4} \d\d:\d\d:\d\d)"
)


@dataclass
class Workspace:
    """A case's folder: ``data`` (12 synthetic pairs, Kvasir-SEG layout) and room for outputs."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def mask(self, stem: str = "case003") -> Path:
        return self.data / "masks" / f"{stem}.jpg"

    def replace_mask(self, array: np.ndarray, stem: str = "case003", suffix: str = ".png") -> Path:
        """Replace a mask by ``array`` written losslessly (PNG/TIFF keep the depth)."""
        self.mask(stem).unlink()
        path = self.data / "masks" / f"{stem}{suffix}"
        assert cv2.imwrite(str(path), array)
        return path

    def object_mask(self, stem: str = "case003") -> np.ndarray:
        """The synthetic 0/1 mask of ``stem``."""
        grey = cv2.imread(str(self.mask(stem)), cv2.IMREAD_GRAYSCALE)
        return (grey >= 128).astype(np.uint8)

    def cut(self, path: Path, keep: float = 0.5) -> None:
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


@dataclass(frozen=True)
class Fault:
    id: str
    description: str
    build: Callable[[Workspace], list[str]]
    exit: int
    line: str
    stream: str = "stderr"
    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[Workspace, str], None] | None = None
    #: A folder (relative to the workspace) on a simulated full disk: see full_disk.
    full: str | None = None


def cv(ws: Workspace, *extra: str) -> list[str]:
    """`segsweep cv` on the workspace's data, light and untracked, with ``extra`` options."""
    return [
        "cv",
        "--data",
        str(ws.data),
        "--out",
        str(ws.root / "out"),
        "--weights",
        "none",
        "--encoder",
        TINY_ENCODER,
        "--image-size",
        "64",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--tracker",
        "none",
        "--quiet",
        *extra,
    ]


def sweep(ws: Workspace, *extra: str, data: Path | None = None) -> list[str]:
    """`segsweep sweep run` on the workspace's data with ``extra`` options (later options win)."""
    return [
        "sweep",
        "run",
        "--data",
        str(data or ws.data),
        "--space",
        "quick",
        "--trials",
        "1",
        "--name",
        "s",
        "--storage",
        str(ws.root / "sweeps"),
        "--limit",
        "12",
        "--tracker",
        "none",
        *extra,
    ]


def _label_map(ws: Workspace) -> list[str]:
    labels = ws.object_mask()
    labels[:8, :8] = 2  # object values 1 and 2
    ws.replace_mask(labels)
    return cv(ws)


def _with_corner(mask: np.ndarray, value: int) -> np.ndarray:
    mask[:8, :8] = value
    return mask


def _sixteen_bit(ws: Workspace) -> list[str]:
    for i in range(12):
        ws.replace_mask(ws.object_mask(f"case{i:03d}").astype(np.uint16) * 255, f"case{i:03d}")
    return ["data", "check", str(ws.data)]


def _count_sixteen_bit(ws: Workspace, out: str) -> None:
    rows = [line.split(",") for line in out.strip().splitlines()[1:]]
    assert {r[0] for r in rows} == {f"case{i:03d}" for i in range(12)}, out
    assert all(int(r[1]) >= 1 for r in rows), out  # every mask has its objects


def _count_of(array_of: Callable[[Workspace], np.ndarray]) -> Callable[[Workspace], list[str]]:
    def build(ws: Workspace) -> list[str]:
        ws.replace_mask(array_of(ws))
        return ["count", str(ws.data / "masks")]

    return build


def _assert_in(text: str, out: str) -> None:
    assert text in out, out


def _assert_absent(path: Path) -> None:
    assert not path.exists(), sorted(path.rglob("*"))


def _anti_aliased_masks(ws: Workspace) -> list[str]:
    from tests.support.synth import anti_aliased

    for stem in ("case003", "case007"):
        ws.replace_mask(anti_aliased(ws.object_mask(stem)), stem)
    return ["data", "check", str(ws.data)]


def _zero_one_jpeg(ws: Workspace) -> list[str]:
    mask = ws.object_mask()
    assert cv2.imwrite(str(ws.mask()), mask, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return ["data", "check", str(ws.data)]


def _zero_one_jpeg_line(ws: Workspace, out: str) -> None:
    line = next(line for line in out.splitlines() if line.startswith("  error"))
    assert "case003.jpg: is a 0/1 mask saved as JPEG" in line and "save the masks as PNG" in line, out
    assert "is a label map" not in line and "merge" not in line, out


def _all_empty(ws: Workspace) -> None:
    for i in range(12):
        cv2.imwrite(str(ws.mask(f"case{i:03d}")), np.zeros((64, 64), np.uint8))


#: Secret values planted by cases: no output may carry them (not even the error refusing them).
def _bundle(ws: Workspace) -> Path:
    """A model bundle's description (config.json, empty weights): the --out checks come before the model loads."""
    from trainer.bundle import bundle_meta
    from trainer.config import CVConfig

    bundle = ws.root / "model"
    if not bundle.is_dir():
        bundle.mkdir()
        config = CVConfig(encoder=TINY_ENCODER, weights="none", image_size=64, folds=2)
        (bundle / "config.json").write_text(json.dumps(bundle_meta(config, data={}, source={}, seconds=0.0)))
        (bundle / "weights.h5").write_bytes(b"")
    return bundle


def _predict(ws: Workspace, out: Path | str, images: Path | None = None, masks: Path | None = None) -> list[str]:
    """`segsweep predict` of the workspace's data (its images and masks unless given) into ``out``."""
    return ["predict", str(_bundle(ws)), "--images", str(images or ws.data / "images"),
            "--masks", str(masks or ws.data / "masks"), "--out", str(out)]  # fmt: skip


def _data_untouched(ws: Workspace, out: str) -> None:
    """Nothing was added beside the true masks (JPEG masks got predictions as masks/<stem>.png)."""
    assert not [p for p in ws.data.iterdir() if p.name not in ("images", "masks", "splits")]
    assert sorted(p.suffix for p in (ws.data / "masks").iterdir()) == [".jpg"] * 12
    assert not list(ws.root.rglob(".*.lock"))


def _masks_elsewhere(ws: Workspace) -> Path:
    """A copy of the masks outside any data set folder, reached through a symlink (``truth-link``)."""
    shutil.copytree(ws.data / "masks", ws.root / "truth")
    (ws.root / "truth-link").symlink_to(ws.root / "truth")
    return ws.root / "truth-link"


def _earlier_prediction(ws: Workspace, state: str = "complete", model: str = "/elsewhere/other-model") -> Path:
    """A folder as `predict` leaves it: masks/*.png and prediction.json (of another model by default)."""
    out = ws.root / "pred"
    (out / "masks").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(out / "masks" / f"case{i:03d}.png"), ws.object_mask(f"case{i:03d}") * 255)
    record = {"model": model, "images": str(ws.data / "images"), "state": state, "pid": 4242,
              "started": "2025-01-01T00:00:00+00:00"}  # fmt: skip
    (out / "prediction.json").write_text(json.dumps(record))
    return out


PLANTED_SECRETS = ("abcdef123456", "hunter22hunter")


def _nested_secret_config(ws: Workspace) -> list[str]:
    config = ws.write("c.yaml", "extra:\n  neptune:\n    api_token: abcdef123456\n")
    return cv(ws, "--config", str(config))


def _nested_secret_space(ws: Workspace) -> list[str]:
    space = ws.write(
        "space.yaml",
        "params:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        f"fixed:\n  encoder: {TINY_ENCODER}\n  weights: none\n  folds: 2\n  epochs: 1\n  batch_size: 2\n"
        "  image_size: 64\n  extra:\n    tracker:\n      - {password: hunter22hunter}\n",
    )
    return sweep(ws, "--space", str(space))


def _bad_yaml_config(ws: Workspace) -> list[str]:
    config = ws.write("c.yaml", "encoder: mobilenetv2\nepochs: [1, 2\nlr: 0.001\n")
    return cv(ws, "--config", str(config))


def _bad_yaml_space(ws: Workspace) -> list[str]:
    space = ws.write("space.yaml", "params:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2\nfixed:\n  folds: 2\n")
    return sweep(ws, "--space", str(space))


def _start_outside_space(ws: Workspace) -> list[str]:
    start = ws.write("start.yaml", "- {label: too-fast, encoder: resnet18, lr: 0.5}\n")
    return sweep(ws, "--start", str(start))


def _start_unknown_field(ws: Workspace) -> list[str]:
    start = ws.write("best.json", '{"config": {"encoder": "resnet18", "learning_rate": 0.001}}')
    return sweep(ws, "--start", str(start))


def _storage_file(ws: Workspace) -> list[str]:
    ws.write("storage-file", "not a folder")
    return sweep(ws, "--storage", str(ws.root / "storage-file"))


def _storage_under_file(ws: Workspace) -> list[str]:
    ws.write("storage-file", "not a folder")
    return sweep(ws, "--storage", str(ws.root / "storage-file" / "sweeps"))


def _cache_is_file(ws: Workspace) -> list[str]:
    ws.write("cache-file", "not a folder")
    return cv(ws)


def _truncated_image(ws: Workspace) -> list[str]:
    ws.cut(ws.data / "images" / "case004.jpg")
    return cv(ws)


def _truncated_mask_sweep(ws: Workspace) -> list[str]:
    path = ws.replace_mask(ws.object_mask() * 255)
    ws.cut(path, 0.8)
    return sweep(ws)


def _existing_out(ws: Workspace) -> list[str]:
    """An output folder holding another configuration's cv.json: refused, left as it was."""
    out = ws.root / "out"
    out.mkdir()
    (out / "cv.json").write_text(json.dumps({"config": {"encoder": "other"}, "data": {"cache_key": "x"}}))
    return cv(ws)


# -- sweep-folder records (items 5 and 8): a fabricated sweep, then a damaged or overridden record ---------------


def _fake_sweep(ws: Workspace, trials: list[FakeTrial] | None = None) -> SweepFolder:
    make_sweep(ws.root / "sweeps", "s", trials, data=ws.data)
    return SweepFolder.at(ws.root / "sweeps", "s")


def _damaged_trial_json(ws: Workspace) -> list[str]:
    record = _fake_sweep(ws).trial_dir("trial_00000") / "trial.json"
    record.write_bytes(record.read_bytes()[:40])
    return ["sweep", "status", "s", "--storage", str(ws.root / "sweeps")]


def _foreign_trial_json(ws: Workspace) -> list[str]:
    record = _fake_sweep(ws).trial_dir("trial_00000") / "trial.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "colour": "red"}))
    return ["sweep", "status", "s", "--storage", str(ws.root / "sweeps")]


def _damaged_fold_file(ws: Workspace) -> list[str]:
    fold = _fake_sweep(ws).trial_dir("trial_00000") / "folds" / "fold_02.json"
    fold.write_bytes(fold.read_bytes()[:25])
    return ["report", "s", "--storage", str(ws.root / "sweeps"), "--format", "json", "--out", str(ws.root / "r")]


def _damaged_sweep_json(ws: Workspace, verb: list[str]) -> list[str]:
    spec = _fake_sweep(ws).spec_file
    spec.write_bytes(spec.read_bytes()[:30])
    return [*verb, "s", "--storage", str(ws.root / "sweeps")]


def _sweep_json_with_unknown_key(ws: Workspace) -> list[str]:
    spec = _fake_sweep(ws).spec_file
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "trails": 9}))  # a hand edit's typo
    return ["sweep", "resume", "s", "--storage", str(ws.root / "sweeps")]


def _overridden_epochs(ws: Workspace) -> list[str]:
    proposed_two = FakeTrial({"encoder": TINY_ENCODER, "weights": "none", "batch_size": 4, "lr": 1e-3, "epochs": 2},
                             [0.6, 0.7], epochs=1)  # fmt: skip
    make_sweep(ws.root / "sweeps", "s", [proposed_two], data=ws.data, with_study=False)
    return ["sweep", "status", "s", "--storage", str(ws.root / "sweeps")]


def _shows_ran_with(ws: Workspace, out: str) -> None:
    row = next(line for line in out.splitlines() if "(trial_00000)" in line)
    assert " 1* " in row and "epochs: proposed 2" in out, out


def _rebuilt_row(ws: Workspace, out: str) -> None:
    row = next(line for line in out.splitlines() if "(trial_00000)" in line)
    assert row.split()[:3] == ["1", "#0", "(trial_00000)"] and "2/2" in row and "COMPLETE" in row, out


def _both_folds_in_best(ws: Workspace, out: str) -> None:
    assert len(json.loads((ws.root / "r" / "best.json").read_text())["cv"]["folds"]) == 2


# -- issue 21, cases 9 and 12: bounds, ports and ~ in --storage -----------------------------------------------


def _huge_high_space(ws: Workspace) -> list[str]:
    space = ws.write("space.yaml", "params:\n  epochs: {type: int, low: 1, high: 99999999999999999999999}\n")
    return sweep(ws, "--space", str(space))


def _ui(ws: Workspace, *ports: str) -> list[str]:
    """`segsweep ui` of a fabricated sweep with both stores (mlflow.db empty: no server gets that far)."""
    folder = _fake_sweep(ws)
    folder.mlflow_db.touch()
    return ["ui", "s", "--storage", str(ws.root / "sweeps"), *ports]


#: Sockets that hold a port for a case until its check closes them.
_HELD_PORTS: list[socket.socket] = []


def _ui_port_in_use(ws: Workspace) -> list[str]:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    _HELD_PORTS.append(held)
    return _ui(ws, "--port-mlflow", "0", "--port-optuna", str(held.getsockname()[1]))


def _release_ports(ws: Workspace, out: str) -> None:
    while _HELD_PORTS:
        _HELD_PORTS.pop().close()


def _home_sweep(ws: Workspace, *argv: str) -> list[str]:
    """``argv`` after a fabricated sweep ``s`` in $HOME/sweeps (the case sets HOME to its home/)."""
    make_sweep(ws.root / "home" / "sweeps", "s", data=ws.data)
    return list(argv)


def _no_literal_tilde(ws: Workspace, out: str) -> None:
    assert not (ws.root / "~").exists(), "a folder named ~ was created in the working directory"


_HOME = {"HOME": "{root}/home"}


# -- a full disk (issue 21, case 13): writes under ws.root / Fault.full fail as on a full device -----------------

#: Bytes that fit under the full folder before the device is full: a few lines of JSON fit, a report does not.
FULL_DISK_ROOM = 4096


class _FullDiskFile:
    """A real file on a device with ``room[0]`` bytes left: past them a write raises ENOSPC, as the kernel
    does, after writing what fitted (the truncated file a careless writer leaves under its final name)."""

    def __init__(self, handle: Any, room: list[int]) -> None:
        self._handle, self._room = handle, room

    def write(self, data: Any) -> int:
        chunk = data.encode() if isinstance(data, str) else bytes(memoryview(data).cast("B"))
        if len(chunk) > self._room[0]:
            fitted = chunk[: self._room[0]]
            self._handle.write(fitted.decode(errors="ignore") if isinstance(data, str) else fitted)
            self._handle.flush()
            self._room[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._handle.name)
        self._room[0] -= len(chunk)
        return int(self._handle.write(data))

    def __enter__(self) -> _FullDiskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def full_disk(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` behave as a full device in this process: Python's writes there (open, pathlib,
    np.savez through a file) stop with ENOSPC past FULL_DISK_ROOM bytes in all, h5py's at once (errno 28, as h5py
    reports it). TensorFlow's own C++ writers are not reached: test_export runs one on a real tiny tmpfs."""
    import builtins
    import io

    import h5py

    real_open, real_h5 = builtins.open, h5py.File
    room = [FULL_DISK_ROOM]

    def under(name: Any) -> bool:
        return isinstance(name, str | os.PathLike) and Path(os.path.abspath(name)).is_relative_to(folder)

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return _FullDiskFile(handle, room) if under(file) and set(mode) & set("wax+") else handle

    def h5_file(name: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if under(name) and mode != "r":
            raise OSError(errno.ENOSPC, f"Unable to synchronously create file (file write failed: errno = 28, "
                                        f"error message = 'No space left on device', filename = '{name}')")  # fmt: skip
        return real_h5(name, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(h5py, "File", h5_file)


_NO_SPACE = r"^segsweep: error: no space left on device on /\S* \(needs ~[\d.]+ MB, [\d.]+ MB free\)"


def _untrained_bundle(ws: Workspace) -> Path:
    """A model bundle of the tiny encoder as it is built (no training: predict needs only a bundle)."""
    from trainer.bundle import bundle_meta, write_bundle
    from trainer.config import CVConfig
    from trainer.models import build_model

    config = CVConfig.from_dict({"encoder": TINY_ENCODER, "weights": "none", "image_size": 64}, source="test")
    return write_bundle(ws.root / "model", build_model(config, mixed_precision=False),
                        bundle_meta(config, data={}, source={}, seconds=0.0))  # fmt: skip


def _retrain_into_full(ws: Workspace) -> list[str]:
    params = {"encoder": TINY_ENCODER, "weights": "none", "batch_size": 4, "lr": 1e-3}
    make_sweep(ws.root / "sweeps", "s", [FakeTrial(params, [0.6, 0.7], epochs=1)], data=ws.data)
    return ["retrain", "s", "--storage", str(ws.root / "sweeps"), "--out", str(ws.root / "full" / "model"), "--quiet"]


def _nothing_partial(ws: Workspace, out: str) -> None:
    """The failed writer left no file or staging folder on the full device (what it wrote went with it)."""
    left = sorted(str(p.relative_to(ws.root)) for p in (ws.root / "full").rglob("*") if not p.is_dir())
    staging = sorted(p.name for p in (ws.root / "full").glob(".*") if p.is_dir())
    assert not left and not staging, (left, staging)


def _only_whole_files(folder: Path) -> None:
    """What a writer without a staging folder left is whole: no temporary file, every PNG decodes."""
    assert not [p for p in folder.rglob(".*")], sorted(folder.rglob(".*"))
    assert all(cv2.imread(str(p)) is not None for p in folder.rglob("*.png"))


FAULTS: list[Fault] = [
    # -- issue 21 ----------------------------------------------------------------------------------------------
    Fault(
        "seed-too-large-cv",
        "cv --seed 2**32 (a ValueError traceback in scikit-learn's KFold)",
        lambda ws: cv(ws, "--seed", "4294967296"),
        2,
        r"^segsweep: error: seed 4294967296 is out of range; use a whole number from 0 to 4294967295",
    ),
    Fault(
        "seed-negative-config",
        '"seed": -1 in a cv --config file',
        lambda ws: cv(ws, "--config", str(ws.write("c.json", '{"seed": -1}'))),
        2,
        r"^segsweep: error: seed -1 is out of range; use a whole number from 0 to 4294967295",
    ),
    Fault(
        "seed-too-large-sweep",
        "sweep run --seed 2**32 (a ValueError traceback in Optuna's sampler)",
        lambda ws: sweep(ws, "--seed", "4294967296"),
        2,
        r"^segsweep: error: --seed 4294967296 is out of range; use a whole number from 0 to 4294967295",
    ),
    Fault(
        "space-high-beyond-any-integer",
        "a space's high: 99999999999999999999999 (an OverflowError traceback)",
        _huge_high_space,
        2,
        r"^segsweep: error: .*space\.yaml, line 2: parameter 'epochs': value 99999999999999999999999 .*"
        r"more than 10000, the most segsweep trains",
    ),
    Fault(
        "ui-port-out-of-range",
        "ui --port-mlflow 99999 (an OverflowError traceback in bind)",
        lambda ws: _ui(ws, "--port-mlflow", "99999"),
        2,
        r"^segsweep: error: --port-mlflow 99999 is not a port; use 1 to 65535 \(0 picks a free one\)$",
    ),
    Fault(
        "ui-same-port-twice",
        "ui with one port for both dashboards (both announced, then MLflow's log, exit 1)",
        lambda ws: _ui(ws, "--port-mlflow", "48213", "--port-optuna", "48213"),
        2,
        r"^segsweep: error: --port-mlflow and --port-optuna are both 48213: each dashboard needs its own port",
    ),
    Fault(
        "ui-port-in-use",
        "ui --port-optuna on a port another process listens on",
        _ui_port_in_use,
        2,
        r"^segsweep: error: port \d+ on 127\.0\.0\.1 is in use; pass --port-optuna with another port",
        check=_release_ports,
    ),
    Fault(
        "folds-more-than-images-sweep",
        "sweep run --folds 20 on 12 pairs stops before Ray (every trial failed)",
        lambda ws: sweep(ws, "--folds", "20"),
        2,
        r"^segsweep: error: 20 folds need at least 20 images",
    ),
    Fault(
        "storage-tilde-status",
        'sweep status --storage "~/sweeps" (looked for a folder named ~)',
        lambda ws: _home_sweep(ws, "sweep", "status", "s", "--storage", "~/sweeps"),
        0,
        r"optuna-dashboard sqlite:///.*/home/sweeps/s/",
        stream="stdout",
        env=_HOME,
    ),
    Fault(
        "storage-tilde-home-env",
        'SEGSWEEP_HOME="~/sweeps" (sweep list found no sweeps)',
        lambda ws: _home_sweep(ws, "sweep", "list"),
        0,
        r"^s +\S+ +5/5 ",
        stream="stdout",
        env={**_HOME, "SEGSWEEP_HOME": "~/sweeps"},
    ),
    Fault(
        "storage-tilde-run",
        'sweep run --storage "~/sweeps" finds the sweep in $HOME/sweeps (not ./~/sweeps)',
        lambda ws: _home_sweep(ws, *sweep(ws, "--storage", "~/sweeps")),
        2,
        r"^segsweep: error: a sweep named 's' exists in /\S+/home/sweeps; continue it with "
        r"`segsweep sweep resume s --storage /\S+/home/sweeps`",
        env=_HOME,
        check=_no_literal_tilde,
    ),
    # -- issue 9 ---------------------------------------------------------------------------------------------
    Fault(
        "mask-16bit-data-check",
        "16-bit 0/255 PNG masks (were read as empty) are usable, none empty",
        _sixteen_bit,
        0,
        r"^0 errors, 0 warnings: the data set is usable$",
        stream="stdout",
    ),
    Fault(
        "mask-16bit-count",
        "count reads 16-bit 0/255 masks at their depth (counted 0 objects before)",
        lambda ws: [_sixteen_bit(ws), "count", str(ws.data / "masks")][1:],
        0,
        r"^image,object,area_px,area_fraction,x,y,width,height$",
        stream="stdout-first",
        check=lambda ws, out: _count_sixteen_bit(ws, out),
    ),
    Fault(
        "mask-label-map-cv",
        "a label map {0,1,2} as a mask",
        _label_map,
        2,
        r"^segsweep: error: .*case003\.png: is a label map.*values 0, 1, 2.*; .*--skip-bad",
    ),
    Fault(
        "mask-0-128-255-cv",
        "a label map {0,128,255} as a mask",
        lambda ws: [ws.replace_mask(_with_corner(ws.object_mask() * 255, 128)), *cv(ws)][1:],
        2,
        r"^segsweep: error: .*case003\.png: is a label map.*0, 128, 255",
    ),
    Fault(
        "mask-colour-cv",
        "a red-on-black colour mask",
        lambda ws: [
            ws.replace_mask(np.dstack([ws.object_mask() * 0, ws.object_mask() * 0, ws.object_mask() * 255])),
            *cv(ws),
        ][1:],
        2,
        r"^segsweep: error: .*case003\.png: has colour channels that differ",
    ),
    Fault(
        "mask-gradient-count",
        "count on a gradient 'mask' (counted 1 object before)",
        _count_of(lambda ws: np.tile(np.linspace(0, 255, 64), (64, 1)).astype(np.uint8)),
        2,
        r"^segsweep: error: .*case003\.png: is not binary.*count reads binary masks only",
    ),
    Fault(
        "mask-noise-count",
        "count on a noise 'mask' (counted 7 objects before)",
        _count_of(lambda ws: np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)),
        2,
        r"^segsweep: error: .*case003\.png: is not binary",
    ),
    Fault(
        "mask-photo-count",
        "count on a photo as mask (counted 9 objects before)",
        lambda ws: [
            shutil.copy(ws.data / "images" / "case000.jpg", ws.data / "masks" / "case003.jpg"),
            "count",
            str(ws.data / "masks"),
        ][1:],
        2,
        r"^segsweep: error: .*case003\.jpg: (is not binary|has colour channels)",
    ),
    Fault(
        "mask-noise-sweep",
        "sweep run with a noise mask stops before Ray",
        lambda ws: [ws.replace_mask(np.random.default_rng(1).integers(0, 256, (64, 64)).astype(np.uint8)), *sweep(ws)][
            1:
        ],
        2,
        r"^segsweep: error: .*case003\.png: is not binary",
    ),
    # -- issue 21 (cases 12 and 17) -------------------------------------------------------------------------
    Fault(
        "mask-anti-aliased-data-check",
        "masks 0/255 but for anti-aliased edges (refused before): one warning",
        _anti_aliased_masks,
        0,
        r"^0 errors, 1 warning: the data set is usable$",
        stream="stdout",
        check=lambda ws, out: _assert_in("masks: 2 mask(s) have anti-aliased edges, binarised at 128", out),
    ),
    Fault(
        "mask-blurred-count",
        "count on a blurred mask: refused, what is wrong first, a count and an example",
        _count_of(lambda ws: cv2.GaussianBlur(ws.object_mask() * 255, (0, 0), 1.2)),
        2,
        r"^segsweep: error: 1 of the 12 masks in .*masks cannot be used as binary masks, e\.g\. "
        r".*case003\.png: is not binary: its edges are soft.*count reads binary masks only\)$",
    ),
    Fault(
        "mask-zero-one-jpeg-data-check",
        "0/1 masks saved as JPEG (called label maps, 'merge the labels')",
        _zero_one_jpeg,
        2,
        r"^1 error, 0 warnings: fix the errors",
        stream="stdout",
        check=_zero_one_jpeg_line,
    ),
    Fault(
        "all-masks-empty-cv",
        "every mask empty: cv refuses, naming the data folder",
        lambda ws: [_all_empty(ws), *cv(ws)][1:],
        2,
        r"^segsweep: error: all 12 masks of the pairs used from .*data are empty",
    ),
    Fault(
        "all-masks-empty-sweep",
        "every mask empty: sweep run refuses before Ray",
        lambda ws: [_all_empty(ws), *sweep(ws)][1:],
        2,
        r"^segsweep: error: all 12 masks .* are empty",
    ),
    Fault(
        "truncated-jpeg-cv",
        "an image JPEG cut in half",
        _truncated_image,
        2,
        r"^segsweep: error: .*images/case004\.jpg: truncated JPEG.*--skip-bad.*segsweep data check",
    ),
    Fault(
        "truncated-jpeg-data-check",
        "data check names the same file",
        lambda ws: [_truncated_image(ws), "data", "check", str(ws.data)][1:],
        2,
        r"^1 error, 0 warnings: fix the errors",
        stream="stdout",
    ),
    Fault(
        "truncated-png-mask-sweep",
        "a PNG mask cut short: sweep run stops before Ray",
        _truncated_mask_sweep,
        2,
        r"^segsweep: error: .*masks/case003\.png: truncated PNG.*--skip-bad",
    ),
    Fault(
        "secret-nested-config",
        "a token nested two levels deep in --config",
        _nested_secret_config,
        2,
        r"^segsweep: error: .*extra\.neptune\.api_token look like secrets.*environment",
    ),
    Fault(
        "secret-nested-space",
        "a password in a list in a space's fixed extra",
        _nested_secret_space,
        2,
        r"^segsweep: error: .*space\.yaml.*extra\.tracker\.0\.password look like secrets",
    ),
    Fault(
        "start-outside-space",
        "sweep run --start with lr 0.5 where the space stops at 1e-2: before Ray",
        _start_outside_space,
        2,
        r"^segsweep: error: .*start\.yaml: starting point 'too-fast': lr 0\.5 lies outside the space 'quick' "
        r"\(range 0\.0001 to 0\.01\); change the starting point or widen the space$",
        check=lambda ws, out: None if not (ws.root / "sweeps" / "s").exists() else pytest.fail("sweep folder made"),
    ),
    Fault(
        "start-unknown-field",
        "sweep run --start best.json naming a field no configuration has",
        _start_unknown_field,
        2,
        r"^segsweep: error: .*best\.json: starting point '\w+': unknown key\(s\) learning_rate; valid keys:",
    ),
    Fault(
        "warm-start-no-such-sweep",
        "sweep run --warm-start naming no sweep",
        lambda ws: sweep(ws, "--warm-start", "nope"),
        2,
        r"^segsweep: error: --warm-start nope: no sweep there .*name an earlier sweep$",
    ),
    Fault(
        "storage-is-file",
        "sweep run --storage FILE",
        _storage_file,
        2,
        r"^segsweep: error: --storage .*storage-file is a file, not a folder",
    ),
    Fault(
        "storage-unwritable",
        "sweep run --storage under a file (cannot be created)",
        _storage_under_file,
        2,
        r"^segsweep: error: cannot write to --storage .*storage-file/sweeps: Not a directory",
    ),
    Fault(
        "address-nothing-listens",
        "sweep run --address 127.0.0.1:1",
        lambda ws: sweep(ws, "--address", "127.0.0.1:1"),
        2,
        r"^segsweep: error: no Ray head answers at --address 127\.0\.0\.1:1 .*ray start --head --port 1",
    ),
    Fault(
        "cache-is-file",
        "SEGSWEEP_CACHE points at a file",
        _cache_is_file,
        2,
        r"^segsweep: error: the data cache .*cache-file is a file, not a folder; point SEGSWEEP_CACHE",
        env={"SEGSWEEP_CACHE": "{root}/cache-file"},
    ),
    Fault(
        "yaml-config-syntax",
        "malformed YAML --config",
        _bad_yaml_config,
        2,
        r"^segsweep: error: .*c\.yaml, line 3, column \d+: not valid YAML \(.*\); fix the syntax there$",
    ),
    Fault(
        "yaml-space-syntax",
        "malformed YAML search space",
        _bad_yaml_space,
        2,
        r"^segsweep: error: .*space\.yaml, line 3, column \d+: not valid YAML",
    ),
    Fault(
        "umask-invalid",
        "SEGSWEEP_UMASK that is not octal",
        lambda ws: cv(ws),
        2,
        r"^segsweep: error: SEGSWEEP_UMASK='u=rwx' is not an octal umask",
        env={"SEGSWEEP_UMASK": "u=rwx"},
    ),
    # -- sweep-folder records (items 5 and 8) ----------------------------------------------------------------
    Fault(
        "status-shows-values-run-with",
        "--epochs 1 over a proposed 2: the leaderboard shows 1*, names the 2",
        _overridden_epochs,
        0,
        r"optuna-dashboard sqlite:///",
        stream="stdout",
        check=_shows_ran_with,
    ),
    Fault(
        "trial-json-damaged-status",
        "a cut-short trial.json is rebuilt from cv.json, folds, events, study",
        _damaged_trial_json,
        0,
        r"optuna-dashboard sqlite:///",
        stream="stdout",
        check=_rebuilt_row,
    ),
    Fault(
        "trial-json-unknown-field-status",
        "a trial.json with a field its format does not hold is refused, kept",
        _foreign_trial_json,
        2,
        r"^segsweep: error: \S+/trial\.json: unknown field\(s\) 'colour' \(fix or remove",
    ),
    Fault(
        "fold-file-damaged-report",
        "a cut-short fold file is read from cv.json: the report still has 2 folds",
        _damaged_fold_file,
        0,
        r"^winner: trial trial_00000",
        stream="stdout",
        check=_both_folds_in_best,
    ),
    Fault(
        "sweep-json-damaged-status",
        "a half-written sweep.json",
        lambda ws: _damaged_sweep_json(ws, ["sweep", "status"]),
        2,
        r"^segsweep: error: .*sweep\.json is damaged \(.*\); it alone records .* restore it from",
    ),
    Fault(
        "sweep-json-damaged-report",
        "a half-written sweep.json, report",
        lambda ws: _damaged_sweep_json(ws, ["report"]),
        2,
        r"sweep\.json is damaged .* restore it from a backup",
    ),
    Fault(
        "sweep-json-damaged-resume",
        "a half-written sweep.json, resume (before Ray starts)",
        lambda ws: _damaged_sweep_json(ws, ["sweep", "resume"]),
        2,
        r"sweep\.json is damaged .* restore it",
    ),
    Fault(
        "sweep-json-unknown-key-resume",
        "a sweep.json with a key SweepSpec has not (refused, not dropped)",
        _sweep_json_with_unknown_key,
        2,
        r"^segsweep: error: .*sweep\.json: unknown key\(s\) trails \(did you mean 'trials'\?\); valid keys: "
        r"address, .*, warm_start_mode$",
    ),
    # -- earlier well-behaved cases, kept in the same table ----------------------------------------------------
    Fault(
        "data-missing-cv",
        "cv --data on a folder that does not exist",
        lambda ws: cv(ws, "--data", str(ws.root / "nope")),
        2,
        r"^segsweep: error: data folder .*nope does not exist",
    ),
    Fault(
        "data-no-masks-folder",
        "a data folder without masks/",
        lambda ws: [shutil.rmtree(ws.data / "masks"), *cv(ws)][1:],
        2,
        r"^segsweep: error: .*has no masks/ folder",
    ),
    Fault(
        "data-check-missing",
        "data check on a folder that does not exist",
        lambda ws: ["data", "check", str(ws.root / "nope")],
        2,
        r"^1 error, 0 warnings",
        stream="stdout",
    ),
    Fault(
        "unknown-encoder",
        "cv --encoder resnet9",
        lambda ws: cv(ws, "--encoder", "resnet9"),
        2,
        r"^segsweep: error: .*unknown encoder 'resnet9'; (did you mean '\w+'\? )?choose one of",
    ),
    Fault(
        "misspelt-encoder-cv",
        "cv --encoder resnt34 (the list of 32 encoders, no hint)",
        lambda ws: cv(ws, "--encoder", "resnt34"),
        2,
        r"^segsweep: error: unknown encoder 'resnt34'; did you mean 'resnet34'\? choose one of: vgg16, ",
    ),
    Fault(
        "misspelt-space-sweep",
        "sweep run --space qiuck (no hint)",
        lambda ws: sweep(ws, "--space", "qiuck"),
        2,
        r"^segsweep: error: unknown search space 'qiuck'; did you mean 'quick'\? use a built-in \(paper, quick, cpu\)",
        check=lambda ws, out: _assert_absent(ws.root / "sweeps" / "s"),
    ),
    Fault(
        "unknown-loss",
        "cv --loss focal (a loss trainer.losses has not registered)",
        lambda ws: cv(ws, "--loss", "focal"),
        2,
        r"^segsweep: error: .*unknown loss 'focal'; choose one of: iou, dice, bce_dice$",
    ),
    Fault(
        "image-size-not-32",
        "cv --image-size 100",
        lambda ws: cv(ws, "--image-size", "100"),
        2,
        r"^segsweep: error: .*not a multiple of 32",
    ),
    Fault(
        "batch-larger-than-fold",
        "cv --batch-size 30 on 12 pairs",
        lambda ws: cv(ws, "--batch-size", "30"),
        2,
        r"^segsweep: error: batch size 30 is larger than a training fold",
    ),
    Fault(
        "folds-one",
        "cv --folds 1",
        lambda ws: cv(ws, "--folds", "1"),
        2,
        r"^segsweep: error: .*folds must be at least 2",
    ),
    Fault(
        "folds-more-than-images",
        "cv --folds 20 on 12 pairs",
        lambda ws: cv(ws, "--folds", "20"),
        2,
        r"^segsweep: error: 20 folds need at least 20 images",
    ),
    Fault(
        "bad-split",
        "cv --dev-split nope",
        lambda ws: cv(ws, "--dev-split", "nope"),
        2,
        r"^segsweep: error: split 'nope' not found.*available: train\.txt, val\.txt",
    ),
    Fault(
        "split-names-missing-stem",
        "a split file naming a stem without a pair",
        lambda ws: [ws.write("data/splits/bad.txt", "case000\nghost\n"), *cv(ws, "--dev-split", "bad")][1:],
        2,
        r"^segsweep: error: split 'bad' names 1 stem\(s\) without an image/mask pair",
    ),
    Fault(
        "missing-weights-file",
        "cv --weights /nope.h5",
        lambda ws: cv(ws, "--weights", str(ws.root / "nope.h5")),
        2,
        r"^segsweep: error: .*nope\.h5",
    ),
    Fault(
        "out-under-a-file",
        "cv --out below a file",
        lambda ws: [ws.write("blocker", ""), *cv(ws, "--out", str(ws.root / "blocker" / "out"))][1:],
        2,
        r"^segsweep: error: cannot write to output folder",
    ),
    Fault(
        "out-of-another-config",
        "cv into a folder holding another configuration's cv.json",
        _existing_out,
        2,
        r"^segsweep: error: .*holds a cross-validation of another configuration",
    ),
    Fault(
        "config-file-missing",
        "cv --config that does not exist",
        lambda ws: cv(ws, "--config", str(ws.root / "nope.yaml")),
        2,
        r"^segsweep: error: cannot read configuration file .*nope\.yaml",
    ),
    Fault(
        "sweep-unknown-space",
        "sweep run --space nope",
        lambda ws: sweep(ws, "--space", "nope"),
        2,
        r"^segsweep: error: unknown search space 'nope'",
    ),
    Fault(
        "sweep-bad-name",
        "sweep run --name a/b",
        lambda ws: sweep(ws, "--name", "a/b"),
        2,
        r"^segsweep: error: sweep name 'a/b' is not usable",
    ),
    Fault(
        "sweep-zero-trials",
        "sweep run --trials 0",
        lambda ws: sweep(ws, "--trials", "0"),
        2,
        r"^segsweep: error: --trials must be at least 1",
    ),
    Fault(
        "sweep-bad-address",
        "sweep run --address nowhere",
        lambda ws: sweep(ws, "--address", "nowhere"),
        2,
        r"^segsweep: error: --address 'nowhere' is not HOST:PORT",
    ),
    Fault(
        "sweep-missing-data",
        "sweep run --data missing",
        lambda ws: sweep(ws, data=ws.root / "missing"),
        2,
        r"^segsweep: error: data folder .*missing does not exist",
    ),
    Fault(
        "sweep-status-unknown",
        "sweep status of a sweep that is not there",
        lambda ws: ["sweep", "status", "nope", "--storage", str(ws.root)],
        2,
        r"^segsweep: error: no sweep named 'nope'",
    ),
    Fault(
        "report-unknown",
        "report of a sweep that is not there",
        lambda ws: ["report", "nope", "--storage", str(ws.root)],
        2,
        r"^segsweep: error: no sweep named 'nope'",
    ),
    Fault(
        "count-missing-folder",
        "count on a folder that does not exist",
        lambda ws: ["count", str(ws.root / "nope")],
        2,
        r"^segsweep: error: masks folder .*nope does not exist",
    ),
    Fault(
        "count-bad-min-area",
        "count --min-area 5",
        lambda ws: ["count", str(ws.data / "masks"), "--min-area", "5"],
        2,
        r"^segsweep: error: --min-area is a fraction",
    ),
    Fault(
        "predict-missing-model",
        "predict from a folder that is not a model bundle",
        lambda ws: ["predict", str(ws.root / "nope"), "--images", str(ws.data / "images"), "--out", str(ws.root / "p")],
        2,
        r"^segsweep: error: .*nope",
    ),
    # --out in the data: PNG masks were overwritten by predictions and scored against themselves (Dice 1.0),
    # JPEG masks got predictions beside them (masks/<stem>.png), and `data check` then failed.
    Fault(
        "predict-out-is-data-set",
        "predict --out D with --images D/images --masks D/masks",
        lambda ws: _predict(ws, ws.data),
        2,
        r"^segsweep: error: --out \S+/data is the data set folder \S+/data \(it holds images/ and masks/\); "
        r"pass an --out outside the data",
        check=_data_untouched,
    ),
    Fault(
        "predict-out-is-masks",
        "predict --out D/masks, given relative to the working folder",
        lambda ws: _predict(ws, "data/masks"),
        2,
        r"^segsweep: error: --out data/masks lies inside the data set folder \S+/data ",
        check=_data_untouched,
    ),
    Fault(
        "predict-out-in-masks-via-symlink",
        "predict --out LINK/pred where LINK -> the --masks folder",
        lambda ws: _predict(ws, ws.root / "truth-link" / "pred", masks=_masks_elsewhere(ws)),
        2,
        r"^segsweep: error: --out \S+truth-link/pred lies inside the --masks folder \S+truth-link; "
        r"pass an --out outside",
    ),
    Fault(
        "predict-out-holds-images",
        "predict --out into a folder that holds the --images folder",
        lambda ws: [
            shutil.copytree(ws.data / "images", ws.root / "set" / "pics"),
            *_predict(ws, ws.root / "set", images=ws.root / "set" / "pics"),
        ][1:],
        2,
        r"^segsweep: error: --out \S+/set holds the --images folder \S+/set/pics; ",
    ),
    # A second prediction beside the first: `count` counted both models' masks as one test set.
    Fault(
        "predict-out-other-prediction",
        "predict into an --out holding another model's prediction",
        lambda ws: _predict(ws, _earlier_prediction(ws)),
        2,
        r"^segsweep: error: --out \S+/pred holds a prediction of /elsewhere/other-model on \S+/data/images; "
        r"predict into a new --out",
    ),
    Fault(
        "predict-out-not-a-prediction",
        "predict into a non-empty folder that is not a prediction",
        lambda ws: _predict(ws, ws.write("notes/plan.txt", "mine").parent),
        2,
        r"^segsweep: error: --out \S+/notes is not empty and is not a segsweep prediction \(it holds plan\.txt\)",
    ),
    Fault(
        "count-unfinished-prediction",
        "count the masks of a prediction that was killed",
        lambda ws: ["count", str(_earlier_prediction(ws, state="running") / "masks")],
        2,
        r"^segsweep: error: \S+/pred/masks is part of an unfinished prediction \(\S+/prediction\.json says "
        r"'running': started 2025-01-01T00:00:00\+00:00 by pid 4242, killed or still running\); rerun",
    ),
    # -- issue 21, case 13: a full disk is one line naming the file system and the size, and leaves no partial file
    Fault(
        "disk-full-report",
        "report onto a full disk (left a truncated report.html, then a traceback)",
        lambda ws: [
            _fake_sweep(ws),
            "report",
            "s",
            "--storage",
            str(ws.root / "sweeps"),
            "--out",
            str(ws.root / "full" / "r"),
        ][1:],
        2,
        _NO_SPACE + r" writing .*full/r;",
        full="full",
        check=_nothing_partial,
    ),
    Fault(
        "disk-full-cv",
        "cv onto a full disk (a traceback)",
        lambda ws: cv(ws, "--out", str(ws.root / "full" / "out")),
        2,
        _NO_SPACE + r" writing .*full/out;",
        full="full/out",
    ),
    Fault(
        "disk-full-retrain",
        "retrain onto a full disk (h5py's errno-28 traceback after training)",
        _retrain_into_full,
        2,
        _NO_SPACE + r" writing .*full;",
        full="full",
        check=_nothing_partial,
    ),
    Fault(
        "disk-full-predict",
        "predict onto a full disk (libpng's line, then 'check that the folder is writable')",
        lambda ws: [
            "predict",
            str(_untrained_bundle(ws)),
            "--images",
            str(ws.data / "images"),
            "--out",
            str(ws.root / "full" / "p"),
        ],
        2,
        _NO_SPACE + r" writing .*full/p;",
        full="full",
        check=lambda ws, out: _only_whole_files(ws.root / "full" / "p"),
    ),
    # (export onto a full disk: tests/reports/test_export.py, on a real tiny tmpfs, where TensorFlow writes)
]


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def workspace(tmp_path: Path, kvasir_seg_dir: Path) -> Workspace:
    shutil.copytree(kvasir_seg_dir, tmp_path / "data")
    return Workspace(tmp_path)


def _message_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not KNOWN_NOISE.match(line)]


def test_fault_ids_are_unique() -> None:
    assert len({f.id for f in FAULTS}) == len(FAULTS)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_fault(
    fault: Fault, workspace: Workspace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in fault.env.items():
        monkeypatch.setenv(name, value.format(root=workspace.root))
    monkeypatch.chdir(workspace.root)
    argv = fault.build(workspace)
    before = _snapshot(workspace.root)
    if fault.full is not None:
        full_disk(monkeypatch, workspace.root / fault.full)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert not [s for s in PLANTED_SECRETS if s in captured.err + captured.out]
    assert code == fault.exit, captured.err
    if fault.stream == "stderr":
        lines = _message_lines(captured.err)
    elif fault.stream == "stdout":  # data check: the verdict is the last line of its report
        lines = captured.out.strip().splitlines()[-1:]
        assert not _message_lines(captured.err), captured.err
    else:  # stdout-first: a CSV's header
        lines = captured.out.strip().splitlines()[:1]
        assert not _message_lines(captured.err), captured.err
    assert len(lines) == 1, captured.err or captured.out
    assert re.search(fault.line, lines[0]), lines[0]
    after = _snapshot(workspace.root)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that was there changed or went"
    if fault.check is not None:
        fault.check(workspace, captured.out)


def test_skip_bad_agrees_with_data_check(workspace: Workspace, tmp_path: Path) -> None:
    """One function decides which files are bad: `data check` errors are exactly what --skip-bad leaves out."""
    from trainer.data import prepare_dataset
    from trainer.data_check import check_dataset

    workspace.cut(workspace.data / "images" / "case004.jpg")
    workspace.replace_mask(np.tile(np.linspace(0, 255, 64), (64, 1)).astype(np.uint8), "case005")
    (workspace.data / "images" / "case006.jpg").write_text("not a picture")
    workspace.replace_mask(_with_corner(workspace.object_mask("case007"), 2), "case007")
    with pytest.raises(Exception, match=r"case004\.jpg: truncated JPEG.*\(and 3 more bad file"):
        prepare_dataset(workspace.data, 32, cache_dir=tmp_path / "cache")
    data = prepare_dataset(workspace.data, 32, cache_dir=tmp_path / "cache", skip_bad=True)
    checked = {f.path for f in check_dataset(workspace.data).errors}
    assert {Path(f) for f, _ in data.skipped} == checked
    assert len(data) == 8 and "case004" not in data.stems
    assert sorted(s["file"] for s in data.quality()["skipped"]) == sorted(str(p) for p in checked)
    # A cached entry prepared with --skip-bad is not served without it.
    with pytest.raises(Exception, match=r"--skip-bad"):
        prepare_dataset(workspace.data, 32, cache_dir=tmp_path / "cache")


@pytest.mark.slow
def test_ctrl_c_during_cv_says_how_to_resume_and_kills_the_fold_run_once(tmp_path: Path, kvasir_seg_dir: Path) -> None:
    """SIGINT in fold 1: exit 130, one line with the command that resumes; strict JSON; fold run KILLED + tagged."""
    out = tmp_path / "out"
    argv = [
        "cv",
        "--data",
        str(kvasir_seg_dir),
        "--out",
        str(out),
        "--weights",
        "none",
        "--encoder",
        TINY_ENCODER,
        "--image-size",
        "64",
        "--folds",
        "2",
        "--epochs",
        "50",
        "--batch-size",
        "2",
        "--tracker",
        "mlflow",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    # The CLI as a terminal starts it: a background job (or a pytest-xdist worker) running this test
    # passes SIGINT on ignored, and Python then never raises KeyboardInterrupt.
    run_cli = (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('sweeps.cli', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", run_cli, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until fold 1 trains an epoch
        if "epoch  1/50" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack goes to stderr
        _, err = proc.communicate()
        raise AssertionError(f"still running 120 s after SIGINT:\n{err[-6000:]}") from None
    assert proc.returncode == 130, err
    lines = _message_lines(err)
    assert "Traceback" not in err and len(lines) == 1, err
    match = re.fullmatch(
        r"segsweep: interrupted; finished folds and epochs are kept in (.*); resume with `(segsweep cv .*)`", lines[0]
    )
    assert match and match.group(1) == str(out), lines[0]
    assert f"--out {out}" in match.group(2) and "--epochs 50" in match.group(2)

    def strict(constant: str) -> None:
        raise AssertionError(f"cv.json holds {constant}: not strict JSON")

    record = json.loads((out / "cv.json").read_text(), parse_constant=strict)
    assert record["mean"]["dice"] is None and record["complete"] is False

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    folds = [r for r in runs if r.data.tags.get("segsweep.kind") == "fold"]
    assert [(r.info.status, r.data.tags.get("segsweep.interrupted")) for r in folds] == [("KILLED", "true")]
