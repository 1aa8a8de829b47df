"""Sweeps on a real local Ray: trials, study, ASHA pruning, failures, resume after kill -9.

Run inside a loopback-only network namespace:
``unshare -n sh -c 'ip link set lo up && .venv/bin/python -m pytest tests/sweeps/test_ray.py'``.
Most tests run trials with the stand-in cross-validation of tests/support/fake_cv.py (seconds per
trial); the ``slow`` ones run the real trainer through the ``segsweep`` command.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.folder import (
    STUDY_REASON_ATTR,
    STUDY_TRIAL_ID_ATTR,
    SweepFolder,
    format_leaderboard,
    load_sweep,
    read_events,
    read_trial_record,
)
from sweeps.runner import resume_sweep, run_sweep
from tests.support import SIGINT_HANDLER_AT_START, TINY_ENCODER
from tests.support import fake_cv as fake
from tests.support.ray import TINY_SPACE, fold_trainings, tiny_sweep_spec, wait_for
from tests.support.synth import make_dataset
from tests.support.tracking import neptune_operations

REPO = Path(__file__).resolve().parents[2]


def _study(sweep_dir: Path, name: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=SweepFolder(sweep_dir).optuna_url)
    return {t.user_attrs[STUDY_TRIAL_ID_ATTR]: t for t in study.get_trials()}


@pytest.mark.slow
def test_sweep_records_every_trial_in_folder_study_and_leaderboard(tmp_path: Path, local_ray: None) -> None:
    spec = tiny_sweep_spec(tmp_path, "s", {"fold_seconds": 0.3}, concurrency=2, scheduler="none")
    outcome = run_sweep(spec, cv_runner=fake.fake_run_cv)

    assert outcome.finished
    sweep = load_sweep(tmp_path / "out", "s")
    assert [t.number for t in sweep.trials] == [0, 1, 2, 3]
    assert {t.state for t in sweep.trials} == {"COMPLETE"}
    study = _study(sweep.path, "s")
    for trial in sweep.trials:
        frozen = study[trial.trial_id]
        assert frozen.state == TrialState.COMPLETE and frozen.number == trial.number
        assert frozen.params == trial.params and set(trial.params) == {"lr", "encoder"}
        assert frozen.intermediate_values.keys() == {1, 2, 3}
        assert frozen.value == pytest.approx(trial.mean["dice"])
        assert trial.config["lr"] == trial.params["lr"] and trial.config["folds"] == 3
        assert fold_trainings(trial.path) == {1: 1, 2: 1, 3: 1}  # type: ignore[arg-type]
        # A fold-level checkpoint under ray/ holds the fold files.
        checkpoints = sorted((sweep.path / "ray" / trial.trial_id).glob("checkpoint_*"))
        assert checkpoints and len(list((checkpoints[-1] / "folds").glob("fold_*.json"))) == 3
    # The data reached every trial as the object store's read-only buffers, and workers were reused.
    seen = [json.loads(line) for t in sweep.trials for line in (t.path / "data_seen.jsonl").read_text().splitlines()]
    assert all(not s["writeable"] and s["n"] == 12 for s in seen)
    assert len({s["pid"] for s in seen}) < len(seen)
    spec_file = json.loads((sweep.path / "sweep.json").read_text())
    assert spec_file["concurrency"] == 2 and spec_file["space_definition"]["name"] == "tiny"
    assert spec_file["tracker"] == "none" and spec_file["runs"][0]["finished"]
    board = format_leaderboard(sweep)
    best = max(sweep.trials, key=lambda t: t.mean["dice"])
    assert f"1     #{best.number}" in board and "COMPLETE" in board and "folds" in board


def test_trials_run_at_the_drivers_priority_not_rays_plus_15(local_ray: None) -> None:
    import ray

    def niceness() -> int:  # nested: pickled by value, workers need not import the tests
        return os.nice(0)

    assert ray.get(ray.remote(niceness).remote()) == os.nice(0)


def _is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket's loopback
    return (mapped or address).is_loopback


def test_a_local_ray_listens_on_loopback_only_and_restores_rays_cluster_switch(local_ray: None) -> None:
    # Ray turned the 127.0.0.1 it was given into the machine's network address and bound its GCS,
    # raylet and workers to every interface. A wildcard bind shows here even inside the tests'
    # loopback-only namespace, where the machine's address is 127.0.0.1 too.
    import psutil
    import ray
    from ray._private import ray_constants

    from sweeps.runner import RAY_CLUSTER_ENV

    def worker_pid() -> int:  # nested: pickled by value
        return os.getpid()

    assert ray.get(ray.remote(worker_pid).remote()) != os.getpid()  # a worker is up and listening
    children = psutil.Process().children(recursive=True)
    # Started with Ray's multi-machine switch off (sweeps.runner._ray_cluster_switch_off), which keeps
    # them on 127.0.0.1 where the machine has a network address too (test_runner.py fakes one). Ray's
    # Python processes retitle themselves over their environment: the C++ ones show it.
    cores = [child for child in children if child.name() in ("gcs_server", "raylet")]  # the others retitle
    assert len(cores) == 2 and {core.environ().get(RAY_CLUSTER_ENV) for core in cores} == {"0"}
    ours = {os.getpid()} | {child.pid for child in children}
    listeners = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert len({c.pid for c in listeners}) >= 3, listeners  # the GCS, the raylet, a worker at least
    assert all(_is_loopback(c.laddr.ip) for c in listeners), [(c.pid, c.laddr) for c in listeners]
    # The switch is off only while Ray starts: a later ray.init(address=...) joins a real cluster.
    assert RAY_CLUSTER_ENV not in os.environ and (sys.platform == "linux") == ray_constants.ENABLE_RAY_CLUSTER


@pytest.mark.slow
def test_asha_prunes_and_failed_trials_carry_their_reason(tmp_path: Path, local_ray: None) -> None:
    spec = tiny_sweep_spec(
        tmp_path,
        "a",
        {"fold_seconds": 0.2, "roles": ["plain", "nan", "crash_once"]},
        trials=7,
        concurrency=1,
        scheduler="asha",
        seed=1,
    )
    outcome = run_sweep(spec, cv_runner=fake.fake_run_cv)

    assert outcome.finished
    sweep = load_sweep(tmp_path / "out", "a")
    study = _study(sweep.path, "a")
    roles = json.loads((sweep.path / "trials" / ".fake-roles.json").read_text())
    by_role = {role: tid for tid, role in roles.items()}
    trials = {t.trial_id: t for t in sweep.trials}

    nan = trials[by_role["nan"]]
    assert nan.state == "FAILED" and "NaN" in (nan.reason or "")
    assert study[nan.trial_id].state == TrialState.FAIL
    assert "NaN" in study[nan.trial_id].user_attrs[STUDY_REASON_ATTR]
    # Retries of a failure no retry can fix stop at once: fold 1 started only on the first attempt.
    assert sum(e["event"] == "fold_start" for e in read_events(nan.path)) == 1

    crashed = trials[by_role["crash_once"]]
    attempts = read_trial_record(crashed.path).attempts or []
    assert len(attempts) == 2 and attempts[1]["restored_folds"] == 1
    # The crash took the fold files with it; the retry got fold 1 back from the checkpoint.
    assert fold_trainings(crashed.path)[1] == 1
    assert all(n == 1 for n in fold_trainings(crashed.path).values())
    assert crashed.state in ("COMPLETE", "PRUNED")

    pruned = [t for t in sweep.trials if t.state == "PRUNED"]
    assert pruned, format_leaderboard(sweep)
    for trial in pruned:
        frozen = study[trial.trial_id]
        assert frozen.state == TrialState.PRUNED
        assert 0 < trial.folds_done < 3
        assert sorted(frozen.intermediate_values) == list(range(1, trial.folds_done + 1))
        assert "stopped by the scheduler" in (trial.reason or "")
    for trial in sweep.trials:
        if trial.state == "COMPLETE":
            assert study[trial.trial_id].state == TrialState.COMPLETE and trial.folds_done == 3
    assert "FAILED" in format_leaderboard(sweep)


_DRIVER = """\
import sys, cloudpickle
import tests.support.fake_cv as fake
cloudpickle.register_pickle_by_value(fake)
from sweeps.runner import resume_sweep, run_sweep
from sweeps.spec import SweepSpec
if sys.argv[1] == "run":
    run_sweep(SweepSpec(name="k", data=sys.argv[3], space=sys.argv[4], storage=sys.argv[2], trials=4,
                        concurrency=2, scheduler="none", tracker="none"), cv_runner=fake.fake_run_cv)
else:
    outcome = resume_sweep(sys.argv[2], "k", cv_runner=fake.fake_run_cv)
    sys.exit(0 if outcome.finished else 1)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)  # Tune waited ten minutes here for a proposal that never came
def test_stop_with_no_trial_running_ends_at_once_and_resume_proposes_the_rest(tmp_path: Path, local_ray: None) -> None:
    spec = tiny_sweep_spec(tmp_path, "b", {"fold_seconds": 0.1, "roles": ["stop_sweep"]}, trials=3, concurrency=1,
                           scheduler="none")  # fmt: skip
    outcome = run_sweep(spec, cv_runner=fake.fake_run_cv)
    assert not outcome.finished and outcome.stopped == "stopped by the test between trials"
    assert [t.state for t in outcome.results.trials] == ["COMPLETE"], format_leaderboard(outcome.results)
    resumed = resume_sweep(tmp_path / "out", "b", cv_runner=fake.fake_run_cv)
    assert resumed.finished, format_leaderboard(resumed.results)
    assert [t.state for t in resumed.results.trials] == ["COMPLETE"] * 3


@pytest.mark.slow
def test_ctrl_c_after_the_last_trial_ended_leaves_the_sweep_finished(
    tmp_path: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A Ctrl-C once Tune's run was over (Ray shutting down, the records being written) printed
    # "segsweep: interrupted" and left sweep.json without the run: `sweep list` said "interrupted".
    import sweeps.runner as runner
    from sweeps.folder import summarise_sweep

    spec = tiny_sweep_spec(tmp_path, "c", {"fold_seconds": 0.1}, trials=2, concurrency=2, scheduler="none")
    statuses = runner._ray_trial_statuses

    def ctrl_c_then_statuses(grid: object) -> dict[str, str]:
        signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C as the driver winds down
        return statuses(grid)

    monkeypatch.setattr(runner, "_ray_trial_statuses", ctrl_c_then_statuses)
    try:
        outcome = run_sweep(spec, cv_runner=fake.fake_run_cv)
    except KeyboardInterrupt:  # not left to end the test session
        pytest.fail("a Ctrl-C after the last trial ended interrupted the driver before it recorded the run")
    assert outcome.finished and outcome.stopped is None, format_leaderboard(outcome.results)
    assert "the run has ended; saving its records first" in capsys.readouterr().out
    folder = SweepFolder.at(tmp_path / "out", "c")
    assert json.loads(folder.spec_file.read_text())["runs"][-1]["finished"]
    assert summarise_sweep(folder).state == "finished"
    assert signal.getsignal(signal.SIGINT) is SIGINT_HANDLER_AT_START  # put back as it was


@pytest.mark.slow
def test_time_budget_ends_the_run_cleanly_and_resume_finishes(
    tmp_path: Path, local_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from sweeps.cli import _finish

    spec = tiny_sweep_spec(tmp_path, "b", {"fold_seconds": 3.0}, trials=3, concurrency=1, scheduler="none",
                           time_budget_s=4.0)  # fmt: skip
    outcome = run_sweep(spec, cv_runner=fake.fake_run_cv)
    assert _finish(outcome) == 1  # the CLI's exit code and last lines
    printed = capsys.readouterr()
    assert "did not finish (time budget of 4s reached)" in printed.err
    # One live view, segsweep's: none of Tune's trial tables, states or TensorBoard hint (run and restore).
    for tune_words in ("Trial status", "TERMINATED", "tensorboard --logdir", "Configuration for experiment"):
        assert tune_words not in printed.out + printed.err, tune_words
    sweep = load_sweep(tmp_path / "out", "b")
    assert sum(t.state == "COMPLETE" for t in sweep.trials) < 3, format_leaderboard(sweep)
    (tmp_path / "out" / "b" / "fake.json").write_text(json.dumps({"fold_seconds": 0.3}))  # quicker resumed folds
    resumed = resume_sweep(tmp_path / "out", "b", cv_runner=fake.fake_run_cv, time_budget_s=3600)
    assert resumed.finished and _finish(resumed) == 0
    printed = capsys.readouterr()
    assert "Trial status" not in printed.out + printed.err and "TERMINATED" not in printed.out + printed.err
    sweep = load_sweep(tmp_path / "out", "b")
    assert {t.state for t in sweep.trials} == {"COMPLETE"} and len(sweep.trials) == 3, format_leaderboard(sweep)
    for trial in sweep.trials:
        assert max(fold_trainings(trial.path).values()) == 1


@pytest.mark.slow
def test_resume_after_sigkill_of_the_driver_trains_no_fold_twice(tmp_path: Path, ray_env: dict[str, str]) -> None:
    data = make_dataset(tmp_path / "data", 12)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    storage = tmp_path / "out"
    (storage / "k").mkdir(parents=True)
    (storage / "k" / "fake.json").write_text(json.dumps({"fold_seconds": 1.5}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", _DRIVER]
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115
    driver = subprocess.Popen(
        [*args, "run", str(storage), str(data), str(tmp_path / "tiny.yaml")],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: any((storage / "k" / "trials").glob("*/folds/fold_01.json")), 300, "the first fold file", driver
        )
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        log.close()
    # The local Ray dies with its driver; wait until no worker of it can still write a fold file.
    time.sleep(8)
    finished_before = {p.parent.parent.name + "/" + p.name for p in (storage / "k" / "trials").glob("*/folds/*.json")}

    (storage / "k" / "fake.json").write_text(json.dumps({"fold_seconds": 0.3}))  # the resumed folds: quicker
    resumed = subprocess.run([*args, "resume", str(storage)], cwd=REPO, env=env, capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout.decode()[-3000:] + resumed.stderr.decode()[-3000:]

    sweep = load_sweep(storage, "k")
    assert len(sweep.trials) >= 4
    complete = [t for t in sweep.trials if t.state == "COMPLETE"]
    assert len(complete) == 4, format_leaderboard(sweep)
    for trial in complete:
        assert fold_trainings(trial.path) == {1: 1, 2: 1, 3: 1}, trial.trial_id  # type: ignore[arg-type]
    assert finished_before  # folds finished before the kill were kept, not retrained (counted above)
    # Any proposal the dead driver had not yet handed to Ray is FAILED, not left RUNNING.
    assert all(t.state in ("COMPLETE", "FAILED") for t in sweep.trials)
    study = optuna.load_study(study_name="k", storage=SweepFolder(storage / "k").optuna_url)
    states = Counter(t.state for t in study.get_trials())
    assert states[TrialState.COMPLETE] == 4 and states[TrialState.RUNNING] == 0


# The CLI sweep with real training is exercised by tests/sweeps/test_tracking_sweep.py (with trackers on).


_TRACKED_SPACE = f"""\
name: tracked
params:
  lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
fixed:
  encoder: {TINY_ENCODER}
  weights: none
  image_size: 64
  folds: 2
  epochs: 1
  batch_size: 2
"""


@pytest.mark.slow
@pytest.mark.cluster
def test_trackers_record_every_fold_and_the_trial_states_of_the_sweep_folder(
    tmp_path: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ASHA on, two folds, real training: the first trial completes (Ray ends it at its last report,
    max_t) and the second is pruned after fold 1 (ASHA's cutoff forced, the only thing not real);
    MLflow and Neptune must hold every finished fold with its scores and preview, and the states of
    trial.json: no run KILLED."""
    import math

    from mlflow import MlflowClient
    from ray.tune.schedulers import async_hyperband

    from sweeps.folder import OBJECTIVE
    from sweeps.spec import SweepSpec
    from trainer.results import read_fold_files
    from trainer.tracking._mlflow import (
        EXPERIMENT_KIND,
        EXPERIMENT_KIND_TAG,
        INTERRUPTED_TAG,
        KIND_TAG,
        PARENT_TAG,
        REASON_TAG,
        ROOT_TAG,
        STATE_TAG,
    )
    from trainer.tracking._neptune import FAILED_FIELD, STATE_FIELD

    # The driver runs in this process: any trial after the first one at a rung is below the cutoff.
    monkeypatch.setattr(async_hyperband._Bracket, "cutoff", lambda self, recorded: math.inf if recorded else None)
    data = make_dataset(tmp_path / "data", 8)
    (tmp_path / "tracked.yaml").write_text(_TRACKED_SPACE)
    spec = SweepSpec(name="t", data=str(data), space=str(tmp_path / "tracked.yaml"), storage=str(tmp_path / "out"),
                     trials=2, concurrency=1, scheduler="asha", tracker="mlflow,neptune")  # fmt: skip
    outcome = run_sweep(spec)

    assert outcome.finished
    sweep = load_sweep(tmp_path / "out", "t")
    trials = {t.state: t for t in sweep.trials}
    assert sorted(trials) == ["COMPLETE", "PRUNED"], format_leaderboard(sweep)
    complete, pruned = trials["COMPLETE"], trials["PRUNED"]
    assert (complete.folds_done, pruned.folds_done) == (2, 1)

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep.path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("t")
    assert experiment is not None and experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert [r.info.run_name for r in runs if r.info.status != "FINISHED"] == []
    assert not [r.info.run_name for r in runs if INTERRUPTED_TAG in r.data.tags]
    (top,) = [r for r in runs if r.data.tags[KIND_TAG] == "sweep"]
    assert top.data.tags[STATE_TAG] == "COMPLETE"
    for trial in (complete, pruned):
        (run,) = [r for r in runs if r.data.tags[KIND_TAG] == "trial" and r.data.tags[ROOT_TAG] == str(trial.path)]
        assert run.data.tags[STATE_TAG] == trial.state and run.data.tags[REASON_TAG] == (trial.reason or "")
        assert run.data.metrics["mean_dice"] == pytest.approx(trial.mean["dice"])
        assert run.data.metrics["folds_done"] == trial.folds_done
        folds = {int(r.data.tags["segsweep.fold"]): r for r in runs if r.data.tags.get(PARENT_TAG) == run.info.run_id}
        finished, _ = read_fold_files(trial.path)
        assert sorted(folds) == [f.fold for f in finished] == list(range(1, trial.folds_done + 1))
        for fold in finished:
            assert folds[fold.fold].data.metrics["dice"] == pytest.approx(fold.dice)
            assert folds[fold.fold].data.metrics["iou"] == pytest.approx(fold.iou)
            artifacts = [a.path for a in client.list_artifacts(folds[fold.fold].info.run_id, "preview")]
            assert artifacts == [f"preview/fold_{fold.fold:02d}.png"]

    # Neptune (offline, in the sweep folder): each trial's run ends in its trial.json state.
    by_run: dict[Path, list[dict]] = {}
    for run_dir, op in neptune_operations(sweep.path / ".neptune"):
        by_run.setdefault(run_dir, []).append(op)
    states = {}
    for ops in by_run.values():
        values = {"/".join(op["path"]): op.get("value") for op in ops if op["type"].startswith("Assign")}
        if values.get("segsweep/kind") == "trial":
            states[values["segsweep/root"]] = (values[STATE_FIELD], values[FAILED_FIELD])
            uploads = sorted("/".join(op["path"]) for op in ops if op["type"] == "UploadFile")
            n = 2 if values[STATE_FIELD] == "COMPLETE" else 1
            assert uploads == [f"folds/{i:02d}/preview" for i in range(1, n + 1)]
    assert states == {str(complete.path): ("COMPLETE", False), str(pruned.path): ("PRUNED", False)}

    study = optuna.load_study(study_name="t", storage=SweepFolder(sweep.path).optuna_url)
    assert study.metric_names == [OBJECTIVE.display_name]
    assert sorted(t.state.name for t in study.get_trials()) == ["COMPLETE", "PRUNED"]
