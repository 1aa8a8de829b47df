"""Issue 9 beyond one-line errors: empty masks recorded, cache damage repaired, strict JSON, private outputs."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segsweep.base.errors import ConfigError
from segsweep.base.files import write_json_atomic
from tests.support import TINY_ENCODER
from trainer import data as data_module
from trainer.config import CVConfig
from trainer.data import prepare_dataset
from trainer.results import CVResult, FoldResult


@pytest.fixture
def seg_copy(kvasir_seg_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(kvasir_seg_dir, tmp_path / "seg"))


def _empty(root: Path, n: int) -> None:
    for i in range(n):
        cv2.imwrite(str(root / "masks" / f"case{i:03d}.jpg"), np.zeros((64, 64), np.uint8))


# -- item 2: mostly empty masks ------------------------------------------------------------------------------


def test_mostly_empty_masks_warn_on_every_run_and_reach_cv_json(
    seg_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import cv as cv_module

    _empty(seg_copy, 7)
    for _ in range(2):  # built, then from the cache: warned both times
        data = prepare_dataset(seg_copy, 32, cache_dir=tmp_path / "cache")
        assert "WARNING: 7 of the 12 masks used from" in capsys.readouterr().err
    assert data.quality()["mostly_empty"] and data.n_empty_masks == 7

    from trainer.checkpoint import EpochCheckpoint
    from trainer.training import TrainedModel

    def fake_fold(config: CVConfig, data: Any, number: int, train: Any, val: Any, reporter: Any, out: Path) -> Any:
        untrained = TrainedModel(None, [], [], EpochCheckpoint(out / f"fold_{number}.npz", {}))
        return FoldResult(number, len(train), len(val), 1.0, 1.0, 1, [], [], 0.1), None, untrained

    monkeypatch.setattr(cv_module, "_run_fold", fake_fold)
    monkeypatch.setattr(cv_module.Reporter, "on_fold_end", lambda *args: None)
    config = CVConfig(encoder=TINY_ENCODER, weights="none", image_size=32, folds=2, epochs=1, batch_size=2)
    cv_module.run_cv(config, data, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "cv.json").read_text())
    assert record["data"]["quality"]["n_empty_masks"] == 7 and record["data"]["quality"]["mostly_empty"]


def test_report_shows_the_data_quality_warning(tmp_path: Path) -> None:
    from reports.report import data_quality

    class Trial:
        path = tmp_path

    quality = {"n_empty_masks": 9, "empty_mask_share": 0.75, "mostly_empty": True}
    cv = CVResult(config={}, data={"quality": quality}, n_folds=2, folds=[], seconds=0.0, complete=False)
    (tmp_path / "cv.json").write_text(json.dumps(cv.to_dict()))
    note = data_quality(Trial())  # type: ignore[arg-type]
    assert note is not None and note.startswith("WARNING: 9 masks (75%) are empty")


# -- item 9: the cache ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated images.npy", "invalid meta.json", "rewritten masks.npy"])
def test_damaged_cache_entry_is_rebuilt_with_a_warning_never_served(
    kvasir_seg_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    cache = tmp_path / "cache"
    first = prepare_dataset(kvasir_seg_dir, 32, cache_dir=cache)
    images, masks = np.array(first.images), np.array(first.masks)
    entry = cache / first.key
    del first
    if damage == "truncated images.npy":
        path = entry / "images.npy"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "invalid meta.json":
        (entry / "meta.json").write_text('{"format": 2, "stems": [')
    else:
        raw = bytearray((entry / "masks.npy").read_bytes())
        raw[-100:] = b"\xff" * 100  # same size, other bytes
        (entry / "masks.npy").write_bytes(bytes(raw))
    capsys.readouterr()
    again = prepare_dataset(kvasir_seg_dir, 32, cache_dir=cache)
    assert f"damaged data cache entry {entry}" in capsys.readouterr().err
    np.testing.assert_array_equal(again.images, images)
    np.testing.assert_array_equal(again.masks, masks)
    assert [p.name for p in cache.iterdir()] == [again.key]


def test_orphaned_temporary_folders_are_removed_unless_young_or_locked(kvasir_seg_dir: Path, tmp_path: Path) -> None:
    import fcntl

    cache = tmp_path / "cache"
    cache.mkdir()
    old = time.time() - 2 * data_module.ORPHAN_AGE_SECONDS
    orphan, young, locked = (cache / f".{'a' * 32}.{name}" for name in ("orphan", "young", "locked"))
    foreign = cache / ".not.ours"  # SEGSWEEP_CACHE may point at a folder that holds other things
    for folder in (orphan, young, locked, foreign):
        folder.mkdir()
        (folder / "images.npy").write_bytes(b"half")
    for folder in (orphan, locked, foreign):
        os.utime(folder, (old, old))
    with open(locked / ".building", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prepared = prepare_dataset(kvasir_seg_dir, 32, cache_dir=cache)
        assert not orphan.exists() and young.exists() and locked.exists() and foreign.exists()
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [prepared.key]


# -- item 12: strict JSON ------------------------------------------------------------------------------------


def test_json_is_strict_and_reads_back_as_nan(tmp_path: Path) -> None:
    from trainer.results import CVResult

    result = CVResult(config={}, data={}, n_folds=2, folds=[], seconds=0.0, complete=False)
    assert np.isnan(result.mean["dice"])
    write_json_atomic(tmp_path / "cv.json", result.to_dict())
    write_json_atomic(tmp_path / "inf.json", {"inf": [np.float32("inf"), -np.inf], "ok": [np.float64(0.5), 1]})

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in strict JSON")

    strict = json.loads((tmp_path / "cv.json").read_text(), parse_constant=refuse)
    assert strict["mean"] == {"dice": None, "iou": None}
    written = json.loads((tmp_path / "inf.json").read_text(), parse_constant=refuse)
    assert written == {"inf": [None, None], "ok": [0.5, 1]}
    back = CVResult.load(tmp_path / "cv.json")
    assert np.isnan(back.mean["dice"]) and back.std["dice"] == 0.0


def test_events_lines_are_strict_json(tmp_path: Path) -> None:
    from sweeps.folder import append_event, read_events

    append_event(tmp_path, "fold_end", dice=float("nan"))
    assert "NaN" not in (tmp_path / "events.jsonl").read_text()
    assert read_events(tmp_path)[0]["dice"] is None


# -- item 4: secrets at every depth ------------------------------------------------------------------------------


def test_secret_keys_are_found_at_every_depth() -> None:
    from segsweep.base.secrets import secret_key_paths

    nested = {"a": {"b": [{"c": 1}, {"api_key": "x"}]}, "neptune": {"api_token": "y"}, "note": "token"}
    assert secret_key_paths(nested) == ["a.b.1.api_key", "neptune.api_token"]
    with pytest.raises(ConfigError, match=r"extra\.neptune\.api_token"):
        CVConfig(extra={"neptune": {"api_token": "abcdef123456"}}).validate()


# -- hardening -------------------------------------------------------------------------------------------------


def test_outputs_are_private_by_default_and_follow_segsweep_umask(
    kvasir_seg_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweeps.cli import main

    saved = os.umask(0o022)
    try:
        monkeypatch.delenv("SEGSWEEP_UMASK", raising=False)
        assert main(["count", str(kvasir_seg_dir / "masks"), "--out", str(tmp_path / "a" / "counts.csv")]) == 0
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "a" / "counts.csv").stat().st_mode) == 0o600
        write_json_atomic(tmp_path / "a" / "x.json", {})
        assert stat.S_IMODE((tmp_path / "a" / "x.json").stat().st_mode) == 0o600
        monkeypatch.setenv("SEGSWEEP_UMASK", "022")
        assert main(["count", str(kvasir_seg_dir / "masks"), "--out", str(tmp_path / "b" / "counts.csv")]) == 0
        assert stat.S_IMODE((tmp_path / "b" / "counts.csv").stat().st_mode) == 0o644
    finally:
        os.umask(saved)


def test_model_bundles_follow_the_umask_like_every_other_output(tmp_path: Path) -> None:
    # Bundles were always made 0755/0644, readable by every user of a shared cluster, while the
    # README promised owner-only outputs.
    import tf_keras

    from trainer.bundle import bundle_meta, write_bundle

    model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(1)])
    meta = bundle_meta(CVConfig(encoder=TINY_ENCODER), data={}, source={}, seconds=1.0)
    saved = os.umask(0o077)
    try:
        private = write_bundle(tmp_path / "private", model, meta, train_stems=["case001"])
        os.umask(0o022)
        shared = write_bundle(tmp_path / "shared", model, meta, train_stems=["case001"])
    finally:
        os.umask(saved)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in private.iterdir()} == {0o600}
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in shared.iterdir()} == {0o644}


def test_ray_temp_folder_is_private_and_short_enough_for_sockets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweeps.runner import private_ray_temp_dir

    folder = Path(private_ray_temp_dir()).parent  # Ray makes its own folder 0777: this one keeps others out
    try:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.name.startswith("segsweep-ray-")
    finally:
        folder.rmdir()
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setenv("RAY_TMPDIR", str(deep))
    with pytest.raises(ConfigError, match="too long for its Unix sockets"):
        private_ray_temp_dir()
    assert list(deep.iterdir()) == []


# -- item 11: an interrupted fold's MLflow run --------------------------------------------------------------------


def test_interrupted_fold_run_is_killed_once_and_tagged(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from trainer.tracking import open_trackers

    out = tmp_path / "out"
    tracker = open_trackers("mlflow", root=out, run_name="cv", params={})
    tracker.on_cv_start(CVConfig(folds=2), 2, out)
    tracker.on_fold_start(1, 6, 2)
    tracker.on_epoch(1, 1, {"loss": 1.0, "val_loss": 1.0, "val_iou": 0.1, "lr": 1e-3})
    tracker.close()
    tracker.close()
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (fold,) = [r for r in runs if r.data.tags.get("segsweep.kind") == "fold"]
    assert fold.info.status == "KILLED" and fold.data.tags["segsweep.interrupted"] == "true"


def test_resume_command_repeats_every_given_option() -> None:
    import shlex

    from sweeps.cli import build_parser
    from trainer.cli import resume_command

    argv = ["cv", "--data", "my data", "--out", "o", "--epochs", "3", "--no-augment", "--skip-bad", "--lr", "0.01"]
    args = build_parser().parse_args(argv)
    again = build_parser().parse_args(shlex.split(resume_command(args))[1:])
    assert vars(again) == vars(args)
