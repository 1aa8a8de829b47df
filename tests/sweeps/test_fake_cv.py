"""The stand-in cross-validation keeps run_cv's contract: its signature, fold files and resume."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from tests.support.fake_cv import fake_run_cv
from trainer.config import CVConfig
from trainer.cv import run_cv
from trainer.data import PreparedData
from trainer.reporter import Reporter
from trainer.results import FoldResult


def test_fake_has_run_cvs_signature() -> None:
    """Trials call whichever runner they are given the same way: the two must not drift apart."""
    assert inspect.signature(fake_run_cv) == inspect.signature(run_cv)


def test_fake_resumes_like_run_cv(tmp_path: Path) -> None:
    import numpy as np

    data = PreparedData(
        np.zeros((6, 32, 32, 3), np.uint8),
        np.zeros((6, 32, 32, 1), np.uint8),
        tuple(f"s{i}" for i in range(6)),
        32,
        "k",
    )
    config = CVConfig(encoder="mobilenetv2", weights="none", folds=3, image_size=32, lr=1e-3, batch_size=2)
    out = tmp_path / "trials" / "t"
    (tmp_path / "fake.json").write_text(json.dumps({"fold_seconds": 0}))
    first = fake_run_cv(config, data, out)
    (out / "folds" / "fold_03.json").unlink()
    calls: list[int] = []

    class Count(Reporter):
        def on_fold_end(self, result: FoldResult, completed: list[FoldResult], preview: Any) -> None:
            calls.append(result.fold)

    second = fake_run_cv(config, data, out, Count())
    assert calls == [3] and second.mean == first.mean
