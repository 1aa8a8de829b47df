"""A stand-in for trainer.cv.run_cv that the Ray sweep tests run in their trials.

It keeps run_cv's contract (fold files and cv.json written as folds end, resume at the first
unfinished fold, the reporter's calls, reporter closed) but "trains" by sleeping, and scores a
configuration by its learning rate, so the Ray plumbing is tested in seconds. A sweep's
``fake.json`` (next to sweep.json; else the environment's ``SEGSWEEP_FAKE_CV``, as
tests.support.fake_driver sets it) sets the seconds per fold and the roles of the first trials
(``nan``: fails with a NaN loss in fold 1; ``crash_once``: in fold 2 its worker dies once, taking
the trial folder's fold files with it, as a lost node would; ``slow``: sleeps 3x longer;
``stop_sweep``: asks the sweep to stop as it ends, so the stop finds no trial running).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from segsweep.base.errors import one_line_error
from segsweep.base.files import write_json_atomic
from trainer.config import CVConfig
from trainer.data import PreparedData
from trainer.reporter import FAILED, PRUNED, Reporter, StoppedEarly
from trainer.results import CVResult, FoldResult
from trainer.training import TrainingError

#: The settings (as fake.json holds them) where no fake.json is in the sweep folder.
SETTINGS_ENV = "SEGSWEEP_FAKE_CV"


def fake_quality(lr: float) -> float:
    """Dice of a configuration: higher learning rate, better (0.5 at 1e-4 to 0.7 at 1e-2)."""
    return 0.5 + 0.1 * math.log10(lr / 1e-4)


def fake_image_scores(mean: float, n: int) -> list[float]:
    """``n`` per-image scores around ``mean`` (alternately 0.05 above and below) whose mean is ``mean``."""
    scores = [mean + (0.05 if i % 2 == 0 else -0.05) for i in range(n)]
    if n % 2:
        scores[-1] = mean
    return scores


def _role(out_dir: Path, roles: list[str]) -> str:
    """Roles go to trials in the order they first start (stable across retries)."""
    registry = out_dir.parent / ".fake-roles.json"
    with open(out_dir.parent / ".fake-roles.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assigned: dict[str, str] = json.loads(registry.read_text()) if registry.is_file() else {}
        if out_dir.name not in assigned:
            assigned[out_dir.name] = roles[len(assigned)] if len(assigned) < len(roles) else "plain"
            registry.write_text(json.dumps(assigned))
        return assigned[out_dir.name]


def fake_run_cv(
    config: CVConfig,
    data: PreparedData,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    *,
    val_stems: list[str] | None = None,
    data_source: str | None = None,
    verbose: bool = False,
    keep_models: bool = False,
) -> CVResult:
    del val_stems, verbose, keep_models
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_path = out_dir.parent.parent / "fake.json"
    settings: dict[str, Any] = json.loads(
        settings_path.read_text() if settings_path.is_file() else os.environ.get(SETTINGS_ENV, "{}")
    )
    role = _role(out_dir, settings.get("roles", []))
    seconds = float(settings.get("fold_seconds", 0.2)) * (3 if role == "slow" else 1)
    reporter = reporter or Reporter()
    with open(out_dir / "data_seen.jsonl", "a") as handle:  # how the trial received the data
        handle.write(
            json.dumps(
                {"pid": os.getpid(), "writeable": bool(data.images.flags.writeable), "n": len(data), "key": data.key}
            )
            + "\n"
        )
    n_folds = config.folds
    completed: list[FoldResult] = []
    if (out_dir / "cv.json").is_file():
        for path in sorted((out_dir / "folds").glob("fold_*.json")):
            completed.append(FoldResult.from_dict(json.loads(path.read_text())))
    done = {f.fold for f in completed}
    data_info = {"path": data_source, "n_pairs": len(data), "image_size": data.image_size, "cache_key": data.key}

    def snapshot(complete: bool) -> CVResult:
        result = CVResult(
            config=config.to_dict(),
            data=data_info,
            n_folds=n_folds,
            folds=list(completed),
            seconds=sum(f.seconds for f in completed),
            complete=complete,
            version="fake",
        )
        write_json_atomic(out_dir / "cv.json", result.to_dict())
        return result

    try:
        reporter.on_cv_start(config, n_folds, out_dir)
        snapshot(complete=len(done) == n_folds)
        for fold in range(1, n_folds + 1):
            if fold in done:
                continue
            reporter.on_fold_start(fold, len(data) - len(data) // n_folds, len(data) // n_folds)
            for epoch in range(1, config.epochs + 1):  # per-epoch calls, as the live view reads them
                time.sleep(seconds / config.epochs)
                reporter.on_epoch(
                    fold,
                    epoch,
                    {
                        "loss": 1.0 / epoch,
                        "val_loss": 1.0 / epoch,
                        "val_iou": fake_quality(config.lr) * epoch / config.epochs,
                        "lr": config.lr,
                    },
                )
            if role == "nan":
                raise TrainingError(f"loss became NaN in fold {fold}, epoch 1; lower the learning rate")
            if role == "crash_once" and fold == 2 and not (out_dir / "crashed").exists():
                (out_dir / "crashed").touch()
                shutil.rmtree(out_dir / "folds")
                (out_dir / "cv.json").unlink()
                os._exit(1)  # the worker process dies, as on an out-of-memory kill
            # crash_once scores best, so that ASHA lets it reach the fold where it crashes.
            dice = fake_quality(config.lr) + 0.01 * fold + (0.25 if role == "crash_once" else 0.0)
            n_val = len(data) // n_folds
            stems = list(data.stems[(fold - 1) * n_val : fold * n_val])
            per_image = fake_image_scores(dice, len(stems))
            result = FoldResult(
                fold=fold,
                n_train=len(data) - n_val,
                n_val=n_val,
                dice=dice,
                iou=0.8 * dice,
                epochs_run=config.epochs,
                lr_drops=[],
                history=[],
                seconds=seconds,
                val_stems=stems,
                val_dice=per_image,
                val_iou=[0.8 * d for d in per_image],
            )
            write_json_atomic(out_dir / "folds" / f"fold_{fold:02d}.json", result.to_dict())
            completed.append(result)
            snapshot(complete=len(completed) == n_folds)
            reporter.on_fold_end(result, list(completed), None)
        final = snapshot(complete=True)
        reporter.on_cv_end(final)
        if role == "stop_sweep":
            from sweeps.folder import SweepFolder, request_stop

            request_stop(SweepFolder(out_dir.parent.parent), "stopped by the test between trials")
        return final
    except StoppedEarly as stop:  # as run_cv tells its reporters how the run ended
        reporter.on_cv_incomplete(PRUNED, stop.reason)
        raise
    except Exception as exc:
        reporter.on_cv_incomplete(FAILED, one_line_error(exc))
        raise
    finally:
        reporter.close()
