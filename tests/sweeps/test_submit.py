"""`segsweep sweep submit` without a cluster: the batch script it writes, and the options it refuses.

The real Slurm and Ray Jobs runs are in tests/sweeps/test_slurm.py and tests/sweeps/test_rayjob.py.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from sweeps.cli import build_parser, main, spec_from_args
from sweeps.folder import SweepFolder, read_submissions
from sweeps.spec import SweepSpec
from sweeps.submit import run_argv


def test_run_argv_parses_back_to_the_same_spec(tmp_path: Path) -> None:
    spec = SweepSpec(
        name="s",
        data=str(tmp_path / "d"),
        space="quick",
        trials=7,
        storage=str(tmp_path),
        concurrency=3,
        cpus_per_trial=2.0,
        gpus_per_trial=0.5,
        scheduler="none",
        seed=4,
        overrides={"limit": 16, "image_size": 64, "folds": 2, "epochs": 1, "dev_split": "train"},
        tracker="none",
    )
    args = build_parser().parse_args(run_argv(spec)[1:])
    assert spec_from_args(args) == spec
    # Every option a job needs reaches it: a cluster's environment (SEGSWEEP_MIXED_PRECISION) decides none.
    spec = replace(spec, keep_models=3, skip_bad=True, warm_start="earlier", time_budget_s=5400.0,
                   max_failed_trials=4, mixed_precision="bf16", threads=2)  # fmt: skip
    argv = run_argv(spec)
    assert spec_from_args(build_parser().parse_args(argv[1:])) == spec
    # Derived from RUN_OPTIONS: every option but the two a job cannot take. A new option fails here until
    # the spec above sets it, and then the round trip checks it.
    from sweeps.spec import RUN_OPTIONS
    from sweeps.submit import NOT_CARRIED

    assert {a for a in argv if a.startswith("--")} == {o.flag for o in RUN_OPTIONS if o.key not in NOT_CARRIED}


def test_a_submitted_sweep_with_start_files_is_refused_in_one_line(tmp_path: Path) -> None:
    from segsweep.base.errors import ConfigError
    from sweeps.submit import checked_spec

    spec = SweepSpec(name="s", data=str(tmp_path), space="quick", trials=2, storage=str(tmp_path),
                     start=[{"label": "mine", "source": "best.json", "values": {"lr": 1e-3}}])  # fmt: skip
    with pytest.raises(ConfigError, match="--start is not carried by `sweep submit`"):
        checked_spec(spec)


def _dry_run(tmp_path: Path, kvasir_seg_dir: Path, *extra: str) -> SweepFolder:
    code = main(
        [
            "sweep",
            "submit",
            "--slurm",
            "--dry-run",
            "--data",
            str(kvasir_seg_dir),
            "--space",
            "quick",
            "--trials",
            "3",
            "--folds",
            "2",
            "--epochs",
            "1",
            "--name",
            "s1",
            "--storage",
            str(tmp_path),
            *extra,
        ]
    )
    assert code == 0
    return SweepFolder(tmp_path / "s1")


def test_dry_run_writes_a_readable_batch_script_and_submits_nothing(tmp_path: Path, kvasir_seg_dir: Path) -> None:
    folder = _dry_run(
        tmp_path,
        kvasir_seg_dir,
        "--nodes",
        "3",
        "--gpus-per-node",
        "4",
        "--time",
        "12:00:00",
        "--partition",
        "gpu",
        "--account",
        "lab",
        "--sbatch-arg=--qos=long",
        "--setup",
        "module load cuda/12",
        "--setup",
        "source /opt/venv/bin/activate",
    )
    script = folder.slurm_script.read_text()
    for line in (
        "#SBATCH --nodes=3",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=12:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --qos=long",
        f"#SBATCH --output={folder.slurm_log_pattern}",
        "#SBATCH --signal=B:TERM@",
        "module load cuda/12\nsource /opt/venv/bin/activate",
        "export RAY_AUTH_MODE=token",
        "export RAY_worker_niceness=${RAY_worker_niceness:-0}",  # trials not at nice 15
        "--num-gpus=4",
        f"segsweep sweep resume s1 --storage {tmp_path}",
        "--trials 3",
        "trap stop_ray EXIT",
    ):
        assert line in script, line
    assert "RAY_AUTH_TOKEN=$(" in script  # made in the job, never written into the file
    assert subprocess.run(["bash", "-n", str(folder.slurm_script)]).returncode == 0
    assert read_submissions(folder) == [] and not folder.exists()  # nothing submitted, no sweep yet


def test_default_setup_activates_this_venv(tmp_path: Path, kvasir_seg_dir: Path) -> None:
    import sys

    script = _dry_run(tmp_path, kvasir_seg_dir).slurm_script.read_text()
    if sys.prefix != sys.base_prefix:
        assert f"source {Path(sys.prefix) / 'bin' / 'activate'}" in script
    assert "#SBATCH --exclusive" in script  # whole nodes without --cpus-per-node


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--slurm", "--space", "quick", "--trials", "2", "--name", "x"], "needs --data"),
        (["--slurm", "--time", "soon"], "is not a Slurm time"),
        (["--slurm", "--nodes", "0"], "--nodes must be at least 1"),
        (["--slurm", "--address", "1.2.3.4:6379"], "--address is for `sweep run`"),
        (["--ray", "not-a-url"], "not the address of a Ray dashboard"),
        ([], "--slurm, or --ray"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    tmp_path: Path, kvasir_seg_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    base = [
        "--data",
        str(kvasir_seg_dir),
        "--space",
        "quick",
        "--trials",
        "2",
        "--name",
        "x",
        "--storage",
        str(tmp_path),
    ]
    if "--space" in argv:
        base = ["--storage", str(tmp_path)]
    code = main(["sweep", "submit", *base, *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_resume_and_stop_of_an_unknown_or_unsubmitted_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "submit", "nope", "--storage", str(tmp_path), "--resume"]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err
    assert main(["sweep", "stop", "nope", "--storage", str(tmp_path)]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err


def test_resubmission_without_slurm_refuses_with_the_fix(
    tmp_path: Path, kvasir_seg_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from search_spaces import load_space

    folder = SweepFolder(tmp_path / "s1")
    SweepSpec(
        name="s1",
        data=str(kvasir_seg_dir),
        space="quick",
        trials=2,
        storage=str(tmp_path),
        space_definition=load_space("quick").to_dict(),
    ).write()
    assert main(["sweep", "submit", "s1", "--storage", str(tmp_path), "--resume"]) == 2
    assert "--slurm or --ray URL" in capsys.readouterr().err
    # --slurm --dry-run writes the script from sweep.json (the driver will resume the sweep)
    assert main(["sweep", "submit", "s1", "--storage", str(tmp_path), "--resume", "--slurm", "--dry-run"]) == 0
    assert "segsweep sweep resume s1" in folder.slurm_script.read_text()
