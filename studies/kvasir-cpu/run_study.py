"""The Kvasir-SEG CPU study, resumable: defaults vs hand-picked vs the `cpu` sweep, scored on medico2020_val.

    .venv/bin/python studies/kvasir-cpu/run_study.py --data ../shared/data/kvasir-seg --out OUT

Every step writes into OUT (outside the repository) and skips itself when its output is complete, so
running the same command again resumes: a cross-validation at its first unfinished fold, the sweep
with `segsweep sweep resume`, a retrain or prediction that had not finished from the start. A step
whose inputs are missing (an earlier step failed) is skipped and the run exits 1 at the end; each
step's command and output go to OUT/logs/<step>.log. Protocol for every row: Kvasir-SEG's
development split medico2020_train (880 pairs), 128x128, 3 folds (seed 0), untrained encoders; test
set medico2020_val (120 pairs the sweep never saw), scored MedAI-style at the original resolution.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

#: The study's protocol, shared by every cross-validation and the sweep.
PROTOCOL = ["--dev-split", "medico2020_train", "--image-size", "128", "--folds", "3", "--seed", "0"]
#: The issue's mini-protocol "paper defaults": the paper's U-Net, IoU loss, Adam 1e-3, with the
#: CPU-sized encoder (efficientnetb0, untrained), batch 16 and 6 epochs.
DEFAULT = ["--encoder", "efficientnetb0", "--arch", "unet", "--weights", "none", "--batch-size", "16",
           "--lr", "1e-3", "--loss", "iou", "--epochs", "6"]  # fmt: skip
#: What a person would try by hand (the issue's 0.636 ± 0.044 on all 1000 pairs).
HANDPICKED = ["--encoder", "resnet18", "--arch", "unet", "--weights", "none", "--batch-size", "8",
              "--lr", "1e-3", "--loss", "bce_dice", "--epochs", "12"]  # fmt: skip
#: The batch-norm trap (issue 10), on a few hundred pairs: before (moving statistics) and after.
BN_RUN = ["--encoder", "mobilenetv2", "--arch", "unet", "--weights", "none", "--batch-size", "8",
          "--lr", "1e-3", "--loss", "bce_dice", "--epochs", "12", "--limit", "300"]  # fmt: skip
SWEEP = "kvasir-cpu"
SWEEP_TRIALS = 10
#: The second run (issue 20): the reshaped `cpu` space with its starting points and paired pruning,
#: within the first sweep's 850 trial-minutes of training (at most SWEEP2_TRIALS trials).
SWEEP2 = "kvasir-cpu-2"
SWEEP2_TRIALS = 14
#: The seed of the second retrain of the second run's winner and hand pick (their trials' seed is 0).
RETRAIN_SEED2 = 1
#: The step, model, prediction and report names of that second retrain end with this.
SEED2_SUFFIX = f"-seed{RETRAIN_SEED2}"
BUDGET_TRIAL_MINUTES = 850.0
#: The hand pick's three folds took 43.1 trial-minutes in the second run's first attempt, on the kind of
#: machine the first sweep counted its 850 on (results/second-attempt1.json). Another machine's budget is
#: the same compute: 850 times its own hand-pick minutes over these (machine_scale).
REFERENCE_HAND_PICK_MINUTES = 43.1
KEEP_TOP = 3
POSTPROCESS = "min-area,fill-holes"


@dataclass
class Step:
    name: str
    done: Callable[[], bool]
    commands: Callable[[], list[list[str]]]
    needs: list[str] = field(default_factory=list)


def _complete_cv(folder: Path, models: bool = True) -> bool:
    try:
        cv = json.loads((folder / "cv.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not cv.get("complete") or len(cv.get("folds", [])) != cv.get("n_folds"):
        return False
    return not models or all(
        (folder / "models" / f"fold_{f['fold']:02d}" / "weights.h5").is_file() for f in cv["folds"]
    )


def _winner(sweeps: Path) -> Path | None:
    """The winning trial's folder, from the report's best.json."""
    try:
        best = json.loads((sweeps / SWEEP / "report" / "best.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return sweeps / SWEEP / "trials" / str(best["trial_id"])


def build_steps(segsweep: str, python: str, data: Path, out: Path) -> list[Step]:
    sweeps = out / "sweeps"
    val = out / "data" / "medico2020_val"
    models = out / "models"
    predictions = out / "predict"
    here = Path(__file__).resolve().parent

    def cv_step(name: str, args: list[str], folder: Path, keep: bool = True) -> Step:
        command = [segsweep, "cv", "--data", str(data), *PROTOCOL, *args, "--out", str(folder), "--tracker",
                   "none", "--quiet", *(["--keep-models"] if keep else [])]  # fmt: skip
        return Step(name, lambda: _complete_cv(folder, keep), lambda: [command])

    def winner_augmented_commands() -> list[list[str]]:
        # The one lever the winner and the hand-picked configuration differ in that the test set
        # favours (issue 10's missed goal): the winner's configuration with augmentation on.
        best = json.loads((sweeps / SWEEP / "report" / "best.json").read_text())
        config = out / "cv" / "winner-augmented.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps({"config": {**best["config"], "augment": True}}, indent=2))
        return [[segsweep, "cv", "--data", str(data), "--config", str(config), *PROTOCOL, "--out",
                 str(out / "cv" / "winner-augmented"), "--tracker", "none", "--quiet", "--keep-models"]]  # fmt: skip

    def sweep_commands() -> list[list[str]]:
        if (sweeps / SWEEP / "sweep.json").is_file():
            run = [segsweep, "sweep", "resume", SWEEP, "--storage", str(sweeps)]
        else:
            run = [segsweep, "sweep", "run", "--data", str(data), "--dev-split", "medico2020_train",
                   "--space", "cpu", "--trials", str(SWEEP_TRIALS), "--concurrency", "2", "--seed", "0",
                   "--keep-models", str(KEEP_TOP), "--tracker", "none", "--name", SWEEP,
                   "--storage", str(sweeps)]  # fmt: skip
        return [run, [segsweep, "report", SWEEP, "--storage", str(sweeps)]]

    def retrain_step(name: str, source: list[str], target: Path, needs: list[str]) -> Step:
        def commands() -> list[list[str]]:
            if target.exists() and not (target / "weights.h5").is_file():
                shutil.rmtree(target)  # an interrupted retrain's leftovers
            return [[segsweep, "retrain", *source, "--out", str(target), "--quiet"]]

        return Step(name, lambda: (target / "weights.h5").is_file(), commands, needs)

    def predict_step(name: str, model: Callable[[], Path | None], target: Path, needs: list[str]) -> Step:
        def commands() -> list[list[str]]:
            found = model()
            if found is None:
                raise RuntimeError(f"{name}: the model to predict with is not there yet")
            return [[segsweep, "predict", str(found), "--images", str(val / "images"), "--masks",
                     str(val / "masks"), "--out", str(target), "--tta", "--postprocess", POSTPROCESS]]  # fmt: skip

        return Step(name, lambda: (target / "metrics.json").is_file(), commands, needs)

    return [
        Step(
            "val-set",
            lambda: _val_ready(val),
            lambda: [[python, str(here / "run_study.py"), "--link-val", str(data), str(val)]],
        ),
        cv_step("cv-default", DEFAULT, out / "cv" / "default"),
        cv_step("cv-handpicked", HANDPICKED, out / "cv" / "handpicked"),
        Step(
            "sweep",
            lambda: (sweeps / SWEEP / "report" / "best.json").is_file() and _sweep_finished(sweeps / SWEEP),
            sweep_commands,
        ),
        retrain_step("retrain-winner", [SWEEP, "--storage", str(sweeps)], models / "winner", ["sweep"]),
        retrain_step("retrain-default", [str(out / "cv" / "default")], models / "default", ["cv-default"]),
        predict_step(
            "predict-winner", lambda: models / "winner", predictions / "winner", ["retrain-winner", "val-set"]
        ),
        predict_step(
            "predict-winner-folds", lambda: _winner(sweeps), predictions / "winner-folds", ["sweep", "val-set"]
        ),
        predict_step(
            "predict-default", lambda: models / "default", predictions / "default", ["retrain-default", "val-set"]
        ),
        predict_step(
            "predict-default-folds",
            lambda: out / "cv" / "default",
            predictions / "default-folds",
            ["cv-default", "val-set"],
        ),
        Step(
            "report-final",
            lambda: "CV-to-test gap" in _text(sweeps / SWEEP / "report" / "report.md"),
            lambda: [[segsweep, "report", SWEEP, "--storage", str(sweeps)]],
            ["predict-winner"],
        ),
        retrain_step("retrain-handpicked", [str(out / "cv" / "handpicked")], models / "handpicked", ["cv-handpicked"]),
        predict_step(
            "predict-handpicked",
            lambda: models / "handpicked",
            predictions / "handpicked",
            ["retrain-handpicked", "val-set"],
        ),
        predict_step(
            "predict-handpicked-folds",
            lambda: out / "cv" / "handpicked",
            predictions / "handpicked-folds",
            ["cv-handpicked", "val-set"],
        ),
        Step(
            "cv-winner-augmented",
            lambda: _complete_cv(out / "cv" / "winner-augmented"),
            winner_augmented_commands,
            ["sweep"],
        ),
        predict_step(
            "predict-winner-augmented-folds",
            lambda: out / "cv" / "winner-augmented",
            predictions / "winner-augmented-folds",
            ["cv-winner-augmented", "val-set"],
        ),
        cv_step("bn-before", [*BN_RUN, "--no-bn-reestimate"], out / "cv" / "bn-before", keep=False),
        cv_step("bn-after", BN_RUN, out / "cv" / "bn-after", keep=False),
        Step("summary", lambda: False, lambda: [[python, str(here / "summarize.py"), "--out", str(out)]]),
    ]


def build_second_steps(segsweep: str, python: str, data: Path, out: Path) -> list[Step]:
    """The second run: sweep, report, retrain and predict the winner and the hand pick (its start)."""
    sweeps = out / "sweeps"
    val = out / "data" / "medico2020_val"
    here = Path(__file__).resolve().parent
    folder = sweeps / SWEEP2

    def sweep_commands() -> list[list[str]]:
        if (folder / "sweep.json").is_file():
            return [[segsweep, "sweep", "resume", SWEEP2, "--storage", str(sweeps)]]
        return [[segsweep, "sweep", "run", "--data", str(data), "--dev-split", "medico2020_train", "--space",
                 "cpu", "--trials", str(SWEEP2_TRIALS), "--concurrency", "2", "--seed", "0", "--keep-models",
                 str(KEEP_TOP), "--tracker", "none", "--mixed-precision", "off", "--name", SWEEP2,
                 "--storage", str(sweeps)]]  # fmt: skip

    def start_trial(label: str) -> str | None:
        found = _starting_point(folder, label)
        return None if found is None else str(found[1]["trial_id"])

    def retrain(name: str, target: Path, trial: Callable[[], str | None], seed: int | None = None) -> Step:
        def commands() -> list[list[str]]:
            if target.exists() and not (target / "weights.h5").is_file():
                shutil.rmtree(target)  # an interrupted retrain's leftovers
            chosen = trial()
            # float32, as the sweep's folds ran (it started before auto trained in bfloat16 on such CPUs):
            # the test-set verdict then compares the configurations, not two precisions.
            return [[segsweep, "retrain", SWEEP2, "--storage", str(sweeps), "--out", str(target), "--quiet",
                     "--mixed-precision", "off", *(["--trial", chosen] if chosen else []),
                     *(["--seed", str(seed)] if seed is not None else [])]]  # fmt: skip

        return Step(name, lambda: (target / "weights.h5").is_file(), commands, ["sweep2"])

    def predict(name: str, model: Path, needs: str) -> Step:
        target = out / "predict" / name.removeprefix("predict-")
        command = [segsweep, "predict", str(model), "--images", str(val / "images"), "--masks", str(val / "masks"),
                   "--out", str(target), "--tta", "--postprocess", POSTPROCESS]  # fmt: skip
        return Step(name, lambda: (target / "metrics.json").is_file(), lambda: [command], [needs, "val-set"])

    def report_test(name: str, report_dir: Path, suffix: str) -> Step:
        """The report's verdict on the test set: the winner against the hand pick, image by image."""
        winner, hand = out / "predict" / f"winner2{suffix}", out / "predict" / f"handpick2{suffix}"
        where = [] if report_dir == folder / "report" else ["--out", str(report_dir)]  # else the sweep's own
        command = [segsweep, "report", SWEEP2, "--storage", str(sweeps), *where,
                   "--test-prediction", str(winner), "--test-prediction", str(hand)]  # fmt: skip
        return Step(name, lambda: "On the test set" in _text(report_dir / "report.md"), lambda: [command],
                    [f"predict-{winner.name}", f"predict-{hand.name}"])  # fmt: skip

    models = out / "models"
    return [
        Step(
            "val-set",
            lambda: _val_ready(val),
            lambda: [[python, str(here / "run_study.py"), "--link-val", str(data), str(val)]],
        ),
        Step("sweep2", lambda: _sweep_done_or_spent(folder), sweep_commands),
        Step("report2", lambda: False, lambda: [[segsweep, "report", SWEEP2, "--storage", str(sweeps)]], ["sweep2"]),
        retrain("retrain-winner2", models / "winner2", lambda: None),
        predict("predict-winner2", models / "winner2", "retrain-winner2"),
        retrain("retrain-handpick2", models / "handpick2", lambda: start_trial("hand-pick")),
        predict("predict-handpick2", models / "handpick2", "retrain-handpick2"),
        report_test("report-test2", folder / "report", ""),
        # Retrains are noisy (issue 20: 0.024 and 0.034 Dice on another machine): both again from another
        # draw, and the verdict on the test set again from that pair, in a report folder of its own.
        retrain(f"retrain-winner2{SEED2_SUFFIX}", models / f"winner2{SEED2_SUFFIX}", lambda: None, seed=RETRAIN_SEED2),
        predict(f"predict-winner2{SEED2_SUFFIX}", models / f"winner2{SEED2_SUFFIX}", f"retrain-winner2{SEED2_SUFFIX}"),
        retrain(
            f"retrain-handpick2{SEED2_SUFFIX}",
            models / f"handpick2{SEED2_SUFFIX}",
            lambda: start_trial("hand-pick"),
            seed=RETRAIN_SEED2,
        ),
        predict(
            f"predict-handpick2{SEED2_SUFFIX}", models / f"handpick2{SEED2_SUFFIX}", f"retrain-handpick2{SEED2_SUFFIX}"
        ),
        report_test(f"report-test2{SEED2_SUFFIX}", out / "reports" / f"second{SEED2_SUFFIX}", SEED2_SUFFIX),
    ]


def machine_scale(sweep_dir: Path) -> float | None:
    """This machine's trial-minutes per reference trial-minute: its hand pick's over REFERENCE_HAND_PICK_MINUTES.

    None until the hand-pick starting point has completed (the budget cannot be judged before). A sweep
    resumed on yet another machine keeps the first machine's figure: say so where it happens.
    """
    try:
        found = _starting_point(sweep_dir, "hand-pick")
    except (OSError, json.JSONDecodeError):  # a trial.json being rewritten: the watcher asks again in a minute
        return None
    if found is None or found[1].get("state") != "COMPLETE":
        return None
    spent, _ = _events_minutes(found[0] / "events.jsonl")
    return spent / REFERENCE_HAND_PICK_MINUTES


def _starting_point(sweep_dir: Path, label: str) -> tuple[Path, dict[str, Any]] | None:
    """The trial folder and trial.json of the starting point ``label``, or None before it has one.

    An unreadable trial.json raises: the retrain of a starting point must not silently pick another trial.
    """
    for record in sweep_dir.glob("trials/*/trial.json"):
        info = json.loads(record.read_text())
        if info.get("start") == label:
            return record.parent, info
    return None


def trial_minutes(sweep_dir: Path) -> tuple[float, float]:
    """(training minutes spent, minutes still to come in the folds running now) over every trial.

    Spent: the seconds of every epoch the trials' events record (validation and batch-norm
    re-estimation included: an epoch event's seconds run from the previous one), so epochs a stop
    threw away and trained again count twice, as the compute they took. To come: each running
    fold's remaining epochs at its mean epoch time so far.
    """
    spent = coming = 0.0
    for events_file in sweep_dir.glob("trials/*/events.jsonl"):
        trial_spent, trial_coming = _events_minutes(events_file)
        spent, coming = spent + trial_spent, coming + trial_coming
    return spent, coming


def _events_minutes(events_file: Path) -> tuple[float, float]:
    """One trial's (minutes spent, minutes its running fold still needs), from its events.jsonl."""
    spent = 0.0
    fold_epochs: list[float] = []
    epochs_total, running = 0, False
    for line in events_file.read_text().splitlines() if events_file.is_file() else []:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = event.get("event")
        if kind == "fold_start":
            fold_epochs, running = [], True
        elif kind == "epoch":
            seconds = float(event.get("seconds") or 0.0)
            spent += seconds
            fold_epochs.append(seconds)
            epochs_total = int(event.get("epochs") or 0)
        elif kind in ("fold_end", "trial_end", "parked", "interrupted"):
            running = False
    coming = 0.0
    if running and fold_epochs:
        coming = max(0, epochs_total - len(fold_epochs)) * (sum(fold_epochs) / len(fold_epochs))
    return spent / 60, coming / 60


def _budget_file(sweep_dir: Path) -> Path:
    return sweep_dir.parent / f"{sweep_dir.name}.budget.json"


def _sweep_done_or_spent(sweep_dir: Path) -> bool:
    """The sweep ended all its trials, or it was stopped at its trial-minute budget and has ended."""
    if _sweep_finished(sweep_dir):
        return True
    try:
        budget = json.loads(_budget_file(sweep_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(budget.get("stopped")) and not _any_running(sweep_dir)


def _any_running(sweep_dir: Path) -> bool:
    for record in sweep_dir.glob("trials/*/trial.json"):
        try:
            info = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            return True
        if info.get("state") == "RUNNING" and not info.get("parked"):
            return True
    return False


def watch_budget(process: subprocess.Popen[bytes], segsweep: str, sweep_dir: Path, log: IO[str]) -> None:
    """Ask the sweep to stop (running folds finish) once spent + coming reaches the budget.

    The budget is BUDGET_TRIAL_MINUTES of the reference machine, in this machine's minutes (machine_scale).
    """
    while process.poll() is None:
        time.sleep(60)
        scale = machine_scale(sweep_dir)
        if scale is None or _budget_file(sweep_dir).is_file():
            continue
        spent, coming = trial_minutes(sweep_dir)
        if spent + coming < BUDGET_TRIAL_MINUTES * scale:
            continue
        record = {"budget_trial_minutes": BUDGET_TRIAL_MINUTES, "machine_scale": round(scale, 3),
                  "budget_here": round(BUDGET_TRIAL_MINUTES * scale, 1), "spent_at_stop": round(spent, 1),
                  "coming_at_stop": round(coming, 1), "stopped": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        _budget_file(sweep_dir).write_text(json.dumps(record, indent=2) + "\n")
        log.write(f"\n[study] budget reached ({spent:.0f} spent + {coming:.0f} coming): sweep stop\n")
        log.flush()
        subprocess.call([segsweep, "sweep", "stop", sweep_dir.name, "--storage", str(sweep_dir.parent)],
                        stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def _sweep_finished(folder: Path) -> bool:
    try:
        spec = json.loads((folder / "sweep.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    states = []
    for trial in (folder / "trials").glob("*/trial.json"):
        try:
            states.append(json.loads(trial.read_text()).get("state"))
        except (OSError, json.JSONDecodeError):
            states.append(None)
    return len(states) >= int(spec["trials"]) and all(s in ("COMPLETE", "PRUNED", "FAILED") for s in states)


def _step_lock(path: Path) -> IO[str] | None:
    """An exclusive lock on ``path`` held while the returned file is open, or None if another
    process holds it: two runs of this script never work on the same step."""
    handle = open(path, "a")  # noqa: SIM115 - closed by the caller's with block
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _val_ready(val: Path) -> bool:
    return all(len(list((val / part).glob("*"))) == 120 for part in ("images", "masks"))


def link_val(data: Path, val: Path) -> None:
    """OUT/data/medico2020_val/{images,masks}: symbolic links to the split's 120 pairs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from trainer.data import index_dataset, read_split

    index = index_dataset(data)
    stems = read_split(data, "medico2020_val")
    for part, files in (("images", index.images), ("masks", index.masks)):
        (val / part).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            link = val / part / files[stem].name
            if not link.exists():
                link.symlink_to(files[stem].resolve())


#: Where the study's records travel between machines (the outputs live outside the repository, and a
#: new machine starts without them): everything under --out but what it can rebuild or must not hold.
SNAPSHOT_DIR = Path(__file__).resolve().parent / "state"
#: Not in a snapshot: model weights (the repository holds results, not weights), a running fold's epoch
#: checkpoints (a resumed fold starts over without them), the linked test set (``val-set`` relinks it)
#: and locks.
SNAPSHOT_SKIP_DIRS = frozenset({"models", "checkpoints", "data", "mlartifacts", ".neptune"})
#: Images are left out too: the figures the results need are re-drawn from the records (report, second.py).
SNAPSHOT_SKIP_SUFFIXES = frozenset({".h5", ".keras", ".npz", ".onnx", ".lock", ".png", ".jpg"})


def snapshot_members(out: Path) -> list[Path]:
    """The files of OUT a snapshot holds, relative to OUT, in a stable order."""
    kept: list[Path] = []
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if path.is_symlink() or not path.is_file():
            continue
        if SNAPSHOT_SKIP_DIRS.intersection(relative.parts[:-1]) or path.suffix in SNAPSHOT_SKIP_SUFFIXES:
            continue
        kept.append(relative)
    return kept


def write_snapshot(out: Path, archive: Path) -> int:
    """Pack OUT's records into ARCHIVE (tar.xz); the sweep must be paused (no driver writing)."""
    members = snapshot_members(out)
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:xz") as tar:
        for relative in members:
            info = tar.gettarinfo(str(out / relative), arcname=str(relative))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(out / relative, "rb") as handle:
                tar.addfile(info, handle)
    partial.replace(archive)
    return len(members)


def restore_snapshot(archive: Path, out: Path) -> int:
    """Unpack ARCHIVE into OUT, which must not hold a study already (nothing is overwritten).

    Ray Tune's saved state names the sweep folder by its absolute path, so OUT must be the path the
    snapshot was taken from (it is recorded in the archive's ``out.txt``).
    """
    with tarfile.open(archive, "r:xz") as tar:
        names = tar.getnames()
        taken = [n for n in names if (out / n).exists()]
        if taken:
            raise FileExistsError(f"{out / taken[0]} exists; restore into an empty --out")
        tar.extractall(out, filter="data")
    return len(names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="Kvasir-SEG folder (default ../shared/data/kvasir-seg)")
    parser.add_argument(
        "--out",
        default=os.environ.get("SEGSWEEP_STUDY_OUT"),
        help="output root, outside the repository (or SEGSWEEP_STUDY_OUT)",
    )
    parser.add_argument("--only", default=None, help="comma-separated step names to run (default all)")
    parser.add_argument("--list", action="store_true", help="list the steps and whether each is done")
    parser.add_argument("--run", choices=("first", "second"), default="first",
                        help="first: the first study; second: the reshaped cpu sweep with starting points")  # fmt: skip
    parser.add_argument(
        "--snapshot", action="store_true", help=f"pack OUT's records (no weights) into {SNAPSHOT_DIR.name}/RUN.tar.xz"
    )
    parser.add_argument(
        "--restore", action="store_true", help="unpack that snapshot into OUT (an empty folder) on a new machine"
    )
    parser.add_argument("--link-val", nargs=2, metavar=("DATA", "VAL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.link_val:
        link_val(Path(args.link_val[0]), Path(args.link_val[1]))
        return 0
    repo = Path(__file__).resolve().parents[2]
    data = Path(args.data or repo.parent / "shared" / "data" / "kvasir-seg").resolve()
    if not args.out:
        print("run_study.py: pass --out OUT (a folder outside the repository) or set SEGSWEEP_STUDY_OUT",
              file=sys.stderr)  # fmt: skip
        return 2
    out = Path(args.out).resolve()
    if out.is_relative_to(repo):
        print(f"run_study.py: {out} is inside the repository; put study outputs elsewhere", file=sys.stderr)
        return 2
    archive = SNAPSHOT_DIR / f"{args.run}.tar.xz"
    if args.snapshot or args.restore:
        return _snapshot_or_restore(out, archive, restore=args.restore)
    bin_dir = Path(sys.executable).parent
    build = build_second_steps if args.run == "second" else build_steps
    steps = build(str(bin_dir / "segsweep"), sys.executable, data, out)
    if args.list:
        for step in steps:
            print(f"{step.name:<26} {'done' if step.done() else '-'}")
        return 0
    only = set(args.only.split(",")) if args.only else None
    (out / "logs").mkdir(parents=True, exist_ok=True)
    finished = {s.name for s in steps if s.done()}
    failed: list[str] = []
    for step in steps:
        if only is not None and step.name not in only:
            continue
        if step.name in finished:
            print(f"[study] {step.name}: done, skipped", flush=True)
            continue
        missing = [n for n in step.needs if n not in finished]
        if missing:
            print(f"[study] {step.name}: waits for {', '.join(missing)}", flush=True)
            failed.append(step.name)
            continue
        lock = _step_lock(out / "logs" / f"{step.name}.lock")
        if lock is None:  # a second run_study.py (e.g. --only the steps that need no sweep) has it
            print(f"[study] {step.name}: running in another process, skipped", flush=True)
            failed.append(step.name)
            continue
        started = time.time()
        print(f"[study] {step.name}: started {time.strftime('%H:%M:%S')}", flush=True)
        ok = True
        with lock, open(out / "logs" / f"{step.name}.log", "a") as log:
            try:
                commands = step.commands()
            except RuntimeError as exc:
                print(f"[study] {step.name}: {exc}", flush=True)
                commands, ok = [], False
            for command in commands:
                log.write(f"\n$ {' '.join(command)}\n")
                log.flush()
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=repo)
                if step.name == "sweep2":
                    watch_budget(process, str(bin_dir / "segsweep"), out / "sweeps" / SWEEP2, log)
                code = process.wait()
                if code != 0:
                    ok = False
                    break
        if ok and (step.done() or step.name == "summary"):
            finished.add(step.name)
            print(f"[study] {step.name}: done in {time.time() - started:.0f} s", flush=True)
        else:
            failed.append(step.name)
            print(f"[study] {step.name}: FAILED or incomplete, see {out / 'logs' / (step.name + '.log')}",
                  flush=True)  # fmt: skip
    print(f"[study] finished; incomplete: {', '.join(failed) or 'none'}", flush=True)
    return 1 if failed else 0


def _snapshot_or_restore(out: Path, archive: Path, *, restore: bool) -> int:
    if restore:
        if not archive.is_file():
            print(f"run_study.py: {archive} does not exist; there is no snapshot to restore", file=sys.stderr)
            return 2
        try:
            recorded = ""
            with tarfile.open(archive, "r:xz") as tar:
                member = tar.extractfile("out.txt")
                recorded = member.read().decode().strip() if member else ""
            if recorded and Path(recorded) != out:
                print(f"run_study.py: {archive} was taken from --out {recorded}; Ray Tune's saved state names "
                      f"that path, so restore it there", file=sys.stderr)  # fmt: skip
                return 2
            count = restore_snapshot(archive, out)
        except FileExistsError as exc:
            print(f"run_study.py: {exc}", file=sys.stderr)
            return 2
        print(f"[study] restored {count} files from {archive} into {out}")
        return 0
    if not (out / "sweeps").is_dir():
        print(f"run_study.py: {out} holds no study (no sweeps/ folder); pass the --out the study ran with",
              file=sys.stderr)  # fmt: skip
        return 2
    from sweeps.folder import SweepFolder, driver_running

    folder = SweepFolder.at(out / "sweeps", SWEEP2)
    if driver_running(folder):
        print(f"run_study.py: a sweep driver is running ({folder.driver_file}); pause it first with `segsweep "
              f"sweep stop {SWEEP2} --storage {out / 'sweeps'} --now`", file=sys.stderr)  # fmt: skip
        return 2
    (out / "out.txt").write_text(f"{out}\n")
    count = write_snapshot(out, archive)
    print(f"[study] {count} files of {out} packed into {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
