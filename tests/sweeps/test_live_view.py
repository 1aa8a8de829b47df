"""The live view (driver and `sweep status --watch`), a notebook's progress, and what Tune and Ray print."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path

import pytest

from sweeps._live_view import ProgressView, epoch_progress, summary_line
from sweeps.folder import (
    BatchProgress,
    SweepFolder,
    append_event,
    hold_driver_lock,
    read_progress,
    update_trial_record,
    write_batch_progress,
)
from tests.support.fake_sweep import FakeTrial, make_sweep

_PARAMS = {"encoder": "resnet18", "weights": "none", "batch_size": 4, "lr": 1e-3}


def _sweep(tmp_path: Path, trials: list[FakeTrial], concurrency: int = 1) -> SweepFolder:
    make_sweep(tmp_path, "live", trials, with_study=False)
    folder = SweepFolder.at(tmp_path, "live")
    spec = json.loads(folder.spec_file.read_text())
    folder.spec_file.write_text(json.dumps({**spec, "concurrency": concurrency}))
    return folder


def _epochs(trial_dir: Path, seconds: list[float], fold: int = 1) -> None:
    append_event(trial_dir, "attempt")
    append_event(trial_dir, "fold_start", fold=fold)
    for epoch, took in enumerate(seconds, start=1):
        append_event(trial_dir, "epoch", fold=fold, epoch=epoch, epochs=4, val_iou=0.5, seconds=took)


def test_the_summary_counts_ended_trials_by_state_in_segsweep_s_words(tmp_path: Path) -> None:
    trials = [FakeTrial(_PARAMS, [0.6, 0.7])] + [FakeTrial(_PARAMS, [0.3], state="PRUNED") for _ in range(3)]
    progress = read_progress(_sweep(tmp_path, trials))
    line = summary_line(progress)
    assert "4/4 finished (1 complete, 3 pruned), 0 running, 0 pending" in line, line
    assert "TERMINATED" not in line and "ETA after the first epoch" not in line, line


def test_the_eta_counts_every_epoch_measured_so_far_and_does_not_reset_when_a_trial_starts(tmp_path: Path) -> None:
    trials = [FakeTrial(_PARAMS, [0.6, 0.7]), FakeTrial(_PARAMS, [], state="RUNNING")]
    folder = _sweep(tmp_path, trials)
    ended, running = folder.trial_dirs()
    _epochs(ended, [10.0] * 8)  # the first trial ended: 2 folds x 4 epochs of 10 s
    update_trial_record(running, attempts=[{"started": "2025-01-01T00:00:00"}])
    append_event(running, "attempt")  # the second has just started: no epoch of its own yet
    progress = read_progress(folder)
    assert progress.epoch_seconds == pytest.approx(10.0)
    # 2 folds x 4 epochs left for the running trial, one slot, 10 s each.
    assert progress.eta_seconds == pytest.approx(80.0)
    assert "ETA ~1m20s" in summary_line(progress)


def test_a_running_epoch_shows_its_batches_and_images_per_second(tmp_path: Path) -> None:
    folder = _sweep(tmp_path, [FakeTrial(_PARAMS, [], state="RUNNING")])
    (trial_dir,) = folder.trial_dirs()
    update_trial_record(trial_dir, attempts=[{"started": "2025-01-01T00:00:00"}])
    _epochs(trial_dir, [5.0])  # fold 1, epoch 1 done: epoch 2 is training
    write_batch_progress(trial_dir, BatchProgress(fold=1, epoch=2, batch=6, batches=12, images_per_second=41.5))
    (trial,) = read_progress(folder).running
    assert trial.label == "#0"
    assert epoch_progress(trial) == "epoch 2/4 [######------] 6/12 batches, 41.5 img/s"
    html = read_progress(folder)._repr_html_()
    assert '<progress value="6" max="12"' in html and "41.5 img/s" in html and "#0" in html
    # A progress file of an epoch that has since ended is not shown as the current one.
    append_event(trial_dir, "epoch", fold=1, epoch=2, epochs=4, val_iou=0.6, seconds=5.0)
    (trial,) = read_progress(folder).running
    assert trial.batch is None and epoch_progress(trial) == "epoch 3/4"


def test_the_terminal_table_names_trials_by_number_and_a_parked_one_stopping(tmp_path: Path) -> None:
    folder = _sweep(tmp_path, [FakeTrial(_PARAMS, [], state="RUNNING")])
    (trial_dir,) = folder.trial_dirs()
    update_trial_record(trial_dir, attempts=[{"started": "2025-01-01T00:00:00"}], parked=True)
    _epochs(trial_dir, [5.0])
    out = io.StringIO()
    view = ProgressView(out, live=True)
    view._show_live(read_progress(folder))
    view.close()
    assert "STOPPING" in out.getvalue() and "#0" in out.getvalue(), out.getvalue()
    assert "RUNNING" not in out.getvalue()


def test_status_shows_a_running_trial_of_a_stopped_sweep_as_stopped(tmp_path: Path) -> None:
    from sweeps.folder import format_leaderboard, load_sweep

    folder = _sweep(tmp_path, [FakeTrial(_PARAMS, [0.5], state="RUNNING")])
    with hold_driver_lock(folder):
        assert "RUNNING" in format_leaderboard(load_sweep(tmp_path, "live"))
    text = format_leaderboard(load_sweep(tmp_path, "live"))
    assert "STOPPED" in text and "RUNNING" not in text and "1 stopped" in text, text


def test_tune_prints_nothing_of_its_own_during_a_run() -> None:
    """Tune's new output engine prints a table at verbose=0; the legacy one (selected around fit) does not."""
    from ray.tune.experimental.output import get_air_verbosity

    from sweeps.runner import TUNE_VERBOSITY, tune_output_silenced

    assert TUNE_VERBOSITY == 0
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    with tune_output_silenced():
        assert get_air_verbosity(TUNE_VERBOSITY) is None  # the legacy engine, silent at verbose 0
    assert os.environ.get("RAY_AIR_NEW_OUTPUT") == before


def test_ray_s_no_route_and_token_notices_are_hidden_and_other_lines_kept(capfd: pytest.CaptureFixture[str]) -> None:
    from sweeps.runner import ray_start_notices_hidden

    no_route = (
        "[2026-12-01 23:22:12,409 W 9252 9252] network_util.cc:330: Failed to determine local IP via external "
        "connectivity to: 8.8.8.8:53, [2001:4860:4860::8888]:53, falling back to hostname resolution\n"
    )
    token = logging.getLogger("ray._private.authentication.authentication_token_setup")
    token.addHandler(handler := logging.StreamHandler())
    try:
        with ray_start_notices_hidden():
            os.write(2, no_route.encode())
            os.write(2, b"a real error line\n")
            token.warning("Token authentication is enabled for this Ray cluster.")
    finally:
        token.removeHandler(handler)
    err = capfd.readouterr().err
    assert "8.8.8.8" not in err and "Token authentication" not in err, err
    assert "a real error line" in err
    assert re.search(r"network_util", err) is None


def test_a_trial_s_batch_progress_reaches_the_live_view_through_progress_json(tmp_path: Path) -> None:
    from sweeps._trainable import TuneFoldReporter

    folder = _sweep(tmp_path, [FakeTrial(_PARAMS, [], state="RUNNING")])
    (trial_dir,) = folder.trial_dirs()
    update_trial_record(trial_dir, attempts=[{"started": "2025-01-01T00:00:00"}])
    _epochs(trial_dir, [])
    TuneFoldReporter(trial_dir).on_batch(1, 1, 3, 10, float("nan"))  # no speed yet: not a NaN in JSON
    (trial,) = read_progress(folder).running
    assert trial.batch == BatchProgress(fold=1, epoch=1, batch=3, batches=10, images_per_second=None)
    assert epoch_progress(trial) == "epoch 1/4 [####--------] 3/10 batches"
