"""A sweep's life from the outside: list, stop from another process, budgets, --config, --watch.

Trials run the stand-in cross-validation of tests/support/fake_cv.py on a real local Ray, in a driver
process of their own (as `segsweep sweep run` would), so `sweep stop` and `status --watch` act from
another process exactly as a user's second shell does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweeps.cli import main, spec_from_args
from sweeps.folder import SweepFolder, format_leaderboard, hold_driver_lock, load_sweep
from sweeps.spec import SweepSpec
from tests.support import SIGINT_HANDLER_AT_START
from tests.support.fake_sweep import FakeTrial, make_sweep
from tests.support.ray import TINY_SPACE, fold_trainings, wait_for
from tests.support.synth import make_dataset

REPO = Path(__file__).resolve().parents[2]

_DRIVER = """\
import json, sys, cloudpickle
import tests.support.fake_cv as fake
cloudpickle.register_pickle_by_value(fake)
from sweeps.cli import _finish
from sweeps.runner import resume_sweep, run_sweep
from sweeps.spec import SweepSpec
mode, storage, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if mode == "run":
    outcome = run_sweep(SweepSpec(storage=storage, **options), cv_runner=fake.fake_run_cv)
else:
    outcome = resume_sweep(storage, options["name"], cv_runner=fake.fake_run_cv,
                           time_budget_s=options.get("time_budget_s"))
sys.exit(_finish(outcome))
"""


@pytest.fixture
def sweep_setup(tmp_path: Path, ray_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    data = make_dataset(tmp_path / "data", 12)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE.replace("epochs: 1", "epochs: 3"))
    storage = tmp_path / "out"
    yield {
        "data": str(data),
        "space": str(tmp_path / "tiny.yaml"),
        "storage": storage,
        "env": {**os.environ, "PYTHONPATH": str(REPO)},
    }


def _driver(setup: dict[str, Any], mode: str, log: Path, **options: Any) -> subprocess.Popen[bytes]:
    name = options.setdefault("name", "k")
    if mode == "run":
        (setup["storage"] / name).mkdir(parents=True, exist_ok=True)
        (setup["storage"] / name / "fake.json").write_text(json.dumps({"fold_seconds": options.pop("fold_s", 2.0)}))
        options = {
            "data": setup["data"],
            "space": setup["space"],
            "trials": 3,
            "concurrency": 2,
            "scheduler": "none",
            "tracker": "none",
            **options,
        }
    elif "fold_s" in options:  # a resumed run's trials read fake.json afresh: its folds can be quicker
        (setup["storage"] / name / "fake.json").write_text(json.dumps({"fold_seconds": options.pop("fold_s")}))
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _DRIVER, mode, str(setup["storage"]), json.dumps(options)],
            cwd=REPO,
            env=setup["env"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_for_logged(predicate: Any, what: str, driver: subprocess.Popen[bytes], log: Path) -> None:
    try:
        wait_for(predicate, 300, what, driver)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; driver log:\n{log.read_text()[-4000:]}") from None


def _segsweep(*argv: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *argv], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
    )


@pytest.mark.slow
def test_stop_from_another_process_then_resume_trains_no_fold_twice(
    sweep_setup: dict[str, Any], tmp_path: Path
) -> None:
    storage, env = sweep_setup["storage"], sweep_setup["env"]
    folder = SweepFolder.at(storage, "k")
    driver = _driver(sweep_setup, "run", tmp_path / "run.log", fold_s=6.0)
    watch_log = tmp_path / "watch.log"
    try:
        _wait_for_logged(
            lambda: any(folder.trials_dir.glob("*/events.jsonl")), "a first trial", driver, tmp_path / "run.log"
        )
        # --watch from a second shell shows the running trials epoch by epoch.
        with open(watch_log, "w") as out:
            watched = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sweeps.cli",
                    "sweep",
                    "status",
                    "k",
                    "--storage",
                    str(storage),
                    "--watch",
                    "--interval",
                    "0.5",
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        _wait_for_logged(
            lambda: "epoch 1/3" in watch_log.read_text(), "an epoch line from --watch", driver, tmp_path / "run.log"
        )
        asked = time.monotonic()
        stop = _segsweep("sweep", "stop", "k", "--storage", str(storage), env=env)
        assert stop.returncode == 0, stop.stderr
        assert "asked sweep 'k'" in stop.stdout and "at the end of its running folds" in stop.stdout
        code = driver.wait(timeout=300)
        took = time.monotonic() - asked
        watched.wait(timeout=60)
        view = watch_log.read_text()
    finally:
        if driver.poll() is None:
            driver.kill()
    log = (tmp_path / "run.log").read_text()
    assert code == 1, log[-3000:]
    assert "did not finish (stopped by `segsweep sweep stop`)" in log and "sweep resume k" in log
    print(f"sweep stop took effect in {took:.1f} s (the driver exited)")
    assert took < 90, took  # the running folds end (6 s each) and the run ends with them
    assert watched.returncode == 0
    # Any fold: on a busy machine --watch may start when the first trial is past its fold 1.
    assert re.search(r"#\d \(lr=[\d.e-]+, encoder=\w+\): fold \d/3, epoch \d/3, val IoU 0\.\d{4}, ", view), view
    assert "waiting to stop" in view
    assert "ETA ~" in view and "running" in view, view
    spec = json.loads(folder.spec_file.read_text())
    assert spec["runs"][-1]["stopped"] == "stopped by `segsweep sweep stop`"
    assert not folder.stop_file.exists()  # acted on: a resume starts afresh
    stopped = load_sweep(storage, "k")
    assert {t.state for t in stopped.trials} == {"RUNNING"}, format_leaderboard(stopped)  # resumable, not pruned
    assert all(t.folds_done < 3 for t in stopped.trials)
    study = optuna.load_study(study_name="k", storage=folder.optuna_url)
    assert {t.state for t in study.trials} <= {optuna.trial.TrialState.RUNNING}

    listed = _segsweep("sweep", "list", "--storage", str(storage), env=env)
    assert "k" in listed.stdout and "stopped" in listed.stdout, listed.stdout

    resumed = _driver(sweep_setup, "resume", tmp_path / "resume.log", name="k", fold_s=0.5)
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    sweep = load_sweep(storage, "k")
    assert len(sweep.trials) == 3 and {t.state for t in sweep.trials} == {"COMPLETE"}
    for trial in sweep.trials:
        assert fold_trainings(trial.path) == {1: 1, 2: 1, 3: 1}, trial.trial_id  # type: ignore[arg-type]
    study = optuna.load_study(study_name="k", storage=folder.optuna_url)
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    assert "finished" in _segsweep("sweep", "list", "--storage", str(storage), env=env).stdout


@pytest.mark.slow
@pytest.mark.long  # a minute or more; tests/sweeps/test_optuna.py rebuilds a study and goes on in a second
def test_resume_after_optuna_db_was_deleted_rebuilds_the_study_from_the_trial_records(
    sweep_setup: dict[str, Any], tmp_path: Path
) -> None:
    # It went on without a word and left no study, while `status` still named one for optuna-dashboard.
    storage, env = sweep_setup["storage"], sweep_setup["env"]
    folder = SweepFolder.at(storage, "k")
    driver = _driver(sweep_setup, "run", tmp_path / "run.log", fold_s=4.0)
    try:
        _wait_for_logged(
            lambda: any(folder.trials_dir.glob("*/folds/fold_01.json")), "a finished fold", driver, tmp_path / "run.log"
        )
        assert _segsweep("sweep", "stop", "k", "--storage", str(storage), env=env).returncode == 0
        assert driver.wait(timeout=300) == 1, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    before = {t.number: t for t in optuna.load_study(study_name="k", storage=folder.optuna_url).trials}
    assert any(t.intermediate_values for t in before.values())
    folder.optuna_db.unlink()

    resumed = _driver(sweep_setup, "resume", tmp_path / "resume.log", name="k", fold_s=0.3)
    log = tmp_path / "resume.log"
    assert resumed.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert f"{folder.optuna_db} was missing: rebuilt study 'k' from {len(before)} trial record(s)" in log.read_text()
    sweep = load_sweep(storage, "k")
    assert len(sweep.trials) == 3 and {t.state for t in sweep.trials} == {"COMPLETE"}
    for trial in sweep.trials:
        assert fold_trainings(trial.path) == {1: 1, 2: 1, 3: 1}, trial.trial_id  # type: ignore[arg-type]
    study = optuna.load_study(study_name="k", storage=folder.optuna_url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    by_id = {t.trial_id: t for t in sweep.trials}
    for after in study.trials:
        trial = by_id[after.user_attrs["ray_trial_id"]]
        assert after.value == pytest.approx(trial.mean["dice"]) and len(after.intermediate_values) == 3
        if after.number in before:  # what the study held before it was lost, kept
            assert after.params == before[after.number].params
            for step, value in before[after.number].intermediate_values.items():
                assert after.intermediate_values[step] == pytest.approx(value)


def test_resume_after_ray_state_was_deleted_stops_before_ray_naming_the_repair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It marked a trial that had finished fold 1 FAILED and trained its configuration again as a new trial.
    data = make_dataset(tmp_path / "data", 12)
    params = {"encoder": "resnet18", "weights": "none", "batch_size": 4, "lr": 1e-3}
    make_sweep(tmp_path / "sweeps", "s", [FakeTrial(params, [0.5], state="RUNNING")], data=data)
    folder = SweepFolder.at(tmp_path / "sweeps", "s")
    spec = json.loads(folder.spec_file.read_text())
    folder.spec_file.write_text(json.dumps({**spec, "storage": str(folder.storage)}))
    records = {p: p.read_bytes() for p in folder.path.rglob("*") if p.is_file()}

    assert main(["sweep", "resume", "s", "--storage", str(tmp_path / "sweeps")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"segsweep: error: {folder.ray_dir} (Ray Tune's saved state) is missing or incomplete, and 1 trial(s)" in err
    assert f"restore {folder.ray_dir} from a backup, or run the rest as a new sweep with `segsweep sweep run " in err
    assert {p: p.read_bytes() for p in folder.path.rglob("*") if p.is_file() and p.name != "driver.json"} == records
    trial = load_sweep(tmp_path / "sweeps", "s").trials[0]
    assert (trial.state, trial.folds_done) == ("RUNNING", 1)  # nothing marked FAILED, no fold dropped


def test_config_file_merges_with_flags_and_sweep_json_reruns(tmp_path: Path) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "data: /data/kvasir-seg\nspace: quick\ntrials: 6\nname: fromfile\nconcurrency: 2\n"
        "cpus_per_trial: 1.5\nscheduler: none\nepochs: 2\nlimit: 40\ntime_budget: 1h30m\nmax_failures: 3\n"
        "tracker: none\n"
    )
    parser = _run_parser()
    spec = spec_from_args(
        parser.parse_args(
            ["--config", str(config), "--trials", "8", "--epochs", "1", "--storage", str(tmp_path / "runs")]
        )
    )
    assert (spec.name, spec.data, spec.space, spec.trials, spec.concurrency) == (
        "fromfile",
        "/data/kvasir-seg",
        "quick",
        8,
        2,
    )
    assert spec.cpus_per_trial == 1.5 and spec.scheduler == "none" and spec.tracker == "none"
    assert spec.overrides["epochs"] == 1 and spec.overrides["limit"] == 40
    assert spec.time_budget_s == 5400 and spec.max_failed_trials == 3
    # What sweep.json records re-runs the sweep: the same specification under another name.
    spec.space_definition = {"name": "quick", "params": {}}
    spec.write()
    again = spec_from_args(parser.parse_args(["--config", str(spec.folder.spec_file), "--name", "rerun"]))
    expected = {**spec.to_dict(), "name": "rerun"}
    assert again.to_dict() == expected


def test_config_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: /d\nspace: quick\ntrials: [1\n")
    assert main(["sweep", "run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    # The one YAML error line of every file segsweep reads (trainer.config.yaml_error_line).
    assert err.count("\n") == 1 and f"{bad}, line 4, column 1: not valid YAML" in err
    bad.write_text("data: /d\nspace: quick\ntrials: 2\nname: x\nwarmup: 3\n")
    assert main(["sweep", "run", "--config", str(bad)]) == 2
    assert "unknown option(s) warmup" in capsys.readouterr().err
    bad.write_text("data: /d\nspace: quick\n")
    assert main(["sweep", "run", "--config", str(bad)]) == 2
    assert "needs --trials, --name" in capsys.readouterr().err
    assert (
        main(
            [
                "sweep",
                "run",
                "--data",
                "/d",
                "--space",
                "quick",
                "--trials",
                "2",
                "--name",
                "x",
                "--time-budget",
                "soon",
            ]
        )
        == 2
    )
    assert "--time-budget 'soon' is not a duration" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("trials: 2.5", "trials must be a whole number, got 2.5"),
        ("trials: '2x'", "trials must be a int, got '2x'"),
        ("skip_bad: 'no'", "skip_bad must be true or false, got 'no'"),  # a quoted "no" is a truthy string
        ("keep_models: true", "keep_models must be a number, got True"),
        ("cpus_per_trial: fast", "cpus_per_trial must be a float, got 'fast'"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused_not_converted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    config = tmp_path / "sweep.yaml"
    trials = "" if line.startswith("trials") else "trials: 2\n"
    config.write_text(f"data: /d\nspace: quick\nname: x\n{trials}{line}\n")
    assert main(["sweep", "run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{config}: {message}" in err, err


def test_config_numbers_written_as_text_still_read(tmp_path: Path) -> None:
    from sweeps.spec import read_sweep_config

    config = tmp_path / "sweep.yaml"
    config.write_text("data: /d\nspace: quick\nname: x\ntrials: '4'\ncpus_per_trial: 2\nskip_bad: yes\n")
    values = read_sweep_config(config)
    assert values["trials"] == 4 and values["cpus_per_trial"] == 2.0 and values["skip_bad"] is True


def test_resume_on_a_data_set_changed_since_the_sweep_started_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Trials trained after such a resume were ranked against trials that saw other images.
    from trainer.data import prepare_dataset

    data = make_dataset(tmp_path / "data", 12)
    make_sweep(tmp_path / "sweeps", "s", data=data)
    folder = SweepFolder.at(tmp_path / "sweeps", "s")
    record = json.loads(folder.spec_file.read_text())
    before = prepare_dataset(data, 64, limit=12).key
    folder.spec_file.write_text(json.dumps({**record, "storage": str(tmp_path / "sweeps"), "data_key": before}))
    folder.ray_dir.mkdir()
    (folder.ray_dir / "tuner.pkl").touch()  # Ray Tune's saved state, which a sweep that ran has
    (data / "images" / "case000.jpg").write_bytes((data / "images" / "case001.jpg").read_bytes())

    assert main(["sweep", "resume", "s", "--storage", str(tmp_path / "sweeps")]) == 2
    err = capsys.readouterr().err
    assert f"segsweep: error: the data set {data} is not what sweep 's' started on (content digest {before} then" in err
    assert "restore the data set as it was, or start a new sweep" in err and "Traceback" not in err
    assert json.loads(folder.spec_file.read_text())["data_key"] == before  # nothing rewritten


def test_a_sweep_json_used_as_config_does_not_carry_its_data_digest(tmp_path: Path) -> None:
    from sweeps.spec import read_sweep_config

    config = tmp_path / "sweep.json"
    config.write_text(json.dumps({"name": "s", "data": "/d", "space": "quick", "trials": 2, "data_key": "abc"}))
    assert "data_key" not in read_sweep_config(config)


def _run_parser() -> Any:
    import argparse

    from sweeps.cli import add_run_options

    parser = argparse.ArgumentParser()
    add_run_options(parser)
    return parser


def test_list_shows_state_counts_and_best(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_sweep(tmp_path, "done", data=tmp_path / "data")
    done = SweepFolder.at(tmp_path, "done")
    spec = json.loads(done.spec_file.read_text())
    spec["runs"] = [{"finished": True, "stopped": None}]
    done.spec_file.write_text(json.dumps(spec))
    make_sweep(
        tmp_path,
        "live",
        [FakeTrial({"encoder": "resnet18", "weights": "none", "batch_size": 4, "lr": 1e-3}, [0.5], state="RUNNING")],
        data=tmp_path / "data",
    )
    with hold_driver_lock(SweepFolder.at(tmp_path, "live")):
        assert main(["sweep", "list", "--storage", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert main(["sweep", "stop", "done", "--storage", str(tmp_path)]) == 2
        assert "is not running" in capsys.readouterr().err
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["done"].split()[1:4] == ["finished", "5/5", "0.6400"]
    assert lines["live"].split()[1:4] == ["running", "0/1", "-"] and f"pid {os.getpid()}" in lines["live"]


def test_a_stop_after_every_trial_ended_leaves_the_sweep_finished(tmp_path: Path) -> None:
    # Ctrl-C after the last trial finished: the driver took it as a stop ("interrupted (Ctrl-C)") and
    # recorded the sweep unfinished; `sweep list` then said "interrupted ... (resume it)".
    from sweeps.runner import _reconcile

    trial = {"encoder": "resnet18", "weights": "none", "batch_size": 4, "lr": 1e-3}
    make_sweep(tmp_path, "done", [FakeTrial(trial, [0.5, 0.6]), FakeTrial(trial, [0.4], state="PRUNED")],
               data=tmp_path / "data")  # fmt: skip
    spec = SweepSpec(name="done", data=str(tmp_path / "data"), space="quick", trials=2, storage=str(tmp_path))
    ended = {"trial_00000": "TERMINATED", "trial_00001": "TERMINATED"}
    assert _reconcile(spec, ended, stopped=True)
    make_sweep(tmp_path, "cut", [FakeTrial(trial, [0.5, 0.6]), FakeTrial(trial, [0.4], state="RUNNING")],
               data=tmp_path / "data")  # fmt: skip
    # A trial the stop ended unfinished resumes: that sweep has not finished.
    assert not _reconcile(dataclasses.replace(spec, name="cut"), ended, stopped=True)


def test_a_ctrl_c_while_the_driver_records_the_end_waits_for_the_records() -> None:
    from sweeps.runner import _interrupts_wait_for_the_records

    with _interrupts_wait_for_the_records():
        signal.raise_signal(signal.SIGINT)  # the first waits: nothing is raised
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the second stops at once
    assert signal.getsignal(signal.SIGINT) is SIGINT_HANDLER_AT_START


def test_a_second_driver_is_refused(tmp_path: Path) -> None:
    folder = SweepFolder.at(tmp_path, "x")
    with hold_driver_lock(folder), pytest.raises(Exception, match="already running"), hold_driver_lock(folder):
        pass


def test_sweep_spec_reads_the_retries_of_an_old_sweep_json() -> None:
    old = SweepSpec.from_dict(
        {
            "name": "o",
            "data": "/d",
            "space": "quick",
            "trials": 2,
            "storage": "/s",
            "max_failures": 5,
            "space_definition": {"name": "quick"},
        }
    )
    assert old.trial_retries == 5 and old.max_failed_trials is None


def test_sigint_handler_is_not_left_changed() -> None:
    assert signal.getsignal(signal.SIGINT) is SIGINT_HANDLER_AT_START
