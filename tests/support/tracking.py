"""Trackers in tests: driving a reporter by hand, reading Neptune's offline data, finding planted secrets."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from trainer.config import CVConfig
from trainer.reporter import FoldPreview, Reporter
from trainer.results import CVResult, EpochRecord, FoldResult

EPOCHS = 3


def make_preview(size: int = 64, k: int = 2) -> FoldPreview:
    yy, xx = np.mgrid[:size, :size]
    truth = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2).astype(np.uint8)
    probs = np.roll(truth, 3, axis=1).astype(np.float32) * 0.9
    images = np.full((k, size, size, 3), 90, dtype=np.uint8)
    return FoldPreview(tuple(f"img{i}" for i in range(k)), images, np.stack([truth] * k), np.stack([probs] * k))


def make_fold(fold: int) -> FoldResult:
    history = [EpochRecord(e, 1.0 / e, 1.2 / e, 0.1 * e, 1e-3 if e < 3 else 1e-4) for e in range(1, EPOCHS + 1)]
    return FoldResult(
        fold=fold,
        n_train=6,
        n_val=2,
        dice=0.5 + 0.1 * fold,
        iou=0.4 + 0.1 * fold,
        epochs_run=EPOCHS,
        lr_drops=[2],
        history=history,
        seconds=1.5,
    )


def drive(
    reporter: Reporter,
    out_dir: Path,
    folds: tuple[int, ...] = (1, 2),
    n_folds: int = 2,
    finish: bool = True,
    done: list[FoldResult] | None = None,
) -> list[FoldResult]:
    """Call the hooks as run_cv does; return the completed folds."""
    completed = list(done or [])
    try:
        reporter.on_cv_start(CVConfig(encoder="mobilenetv2", folds=n_folds), n_folds, out_dir)
        for fold in folds:
            reporter.on_fold_start(fold, 6, 2)
            result = make_fold(fold)
            for rec in result.history:
                reporter.on_epoch(
                    fold,
                    rec.epoch,
                    {"loss": rec.loss, "val_loss": rec.val_loss, "val_iou": rec.val_iou, "lr": rec.lr},
                )
            completed.append(result)
            reporter.on_fold_end(result, list(completed), make_preview())
        if finish:
            reporter.on_cv_end(
                CVResult(config={}, data={}, n_folds=n_folds, folds=completed, seconds=3.0, complete=True)
            )
    finally:
        reporter.close()
    return completed


def neptune_operations(data_dir: Path) -> list[tuple[Path, dict]]:
    """Every operation the Neptune client queued offline under data_dir, with its run folder."""
    ops = []
    for log in sorted(data_dir.glob("offline/*/data-*.log")):
        for line in log.read_text().splitlines():
            ops.append((log.parent, json.loads(line)["obj"]))
    return ops


def loopback_token(port: int) -> str:
    address = f"http://127.0.0.1:{port}"
    payload = {"api_address": address, "api_url": address, "api_key": "planted-neptune-key-0123456789"}
    return base64.b64encode(json.dumps(payload).encode()).decode()


def find_secrets(folder: Path, secrets: list[str]) -> list[tuple[str, str]]:
    """(file, secret) for every file under folder (sqlite bytes, .neptune, artifacts...) holding one."""
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [(str(path), s) for s in secrets if s.encode() in data]
    return hits
