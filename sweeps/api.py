"""segsweep from Python (a notebook): create or open a sweep, run it, read it as pandas frames.

::

    from sweeps import Sweep

    sweep = Sweep.create("nb", data="../shared/data/kvasir-seg", space="quick", trials=4,
                         limit=32, dev_split="medico2020_train")
    run = sweep.run(background=True)     # or sweep.run() to block until it ends
    run.wait()
    sweep.trials()                       # one row per trial, leaderboard order
    sweep.best_config()                  # the winner's CVConfig

The command line is a thin layer over the same calls; an already running Ray (``ray.init()`` in
the notebook) is used as it is.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segsweep.base.errors import SegsweepError
from segsweep.base.suggest import did_you_mean
from sweeps.folder import (
    SweepFolder,
    SweepProgress,
    SweepResults,
    TrialResult,
    default_storage,
    format_leaderboard,
    is_eligible,
    load_sweep,
    rank_trials,
    read_progress,
    request_stop,
    shown_states,
)
from sweeps.spec import OVERRIDE_KEYS, SweepSpec, parse_duration

if TYPE_CHECKING:
    import pandas as pd

    from sweeps.runner import SweepOutcome
    from trainer.config import CVConfig


def _seconds(value: float | str | None) -> float | None:
    return parse_duration(value) if isinstance(value, str) else value


@dataclass
class SweepRun:
    """A sweep's driver running in the background (its own process): poll, wait, stop, follow."""

    sweep: Sweep
    process: subprocess.Popen[bytes]
    log_path: Path

    def poll(self) -> int | None:
        """The driver's exit code, or None while it runs (0: finished; 1: stopped or no trial complete)."""
        return self.process.poll()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Block until the driver ends (``subprocess.TimeoutExpired`` after ``timeout`` seconds)."""
        return self.process.wait(timeout)

    def stop(self, *, now: bool = False) -> None:
        """Ask the driver to stop cleanly, as ``segsweep sweep stop`` does."""
        self.sweep.stop(now=now)

    def progress(self) -> SweepProgress:
        return self.sweep.progress()

    def log(self, lines: int = 20) -> str:
        """The last lines of the driver's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Sweep:
    """One sweep folder (``STORAGE/NAME``), created here or by the command line."""

    folder: SweepFolder
    spec: SweepSpec | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        name: str,
        *,
        data: str | Path,
        space: str | Path,
        trials: int,
        storage: str | Path | None = None,
        time_budget: float | str | None = None,
        max_failures: int | None = None,
        **options: Any,
    ) -> Sweep:
        """A new sweep (nothing is written until :meth:`run`).

        ``options`` are ``sweep run``'s: ``concurrency``, ``cpus_per_trial``, ``gpus_per_trial``,
        ``scheduler``, ``seed``, ``address``, ``tracker``, and the overrides ``limit``, ``image_size``,
        ``folds``, ``epochs``, ``dev_split``. ``time_budget`` is seconds or ``"2h"``.
        """
        overrides = {key: options.pop(key, None) for key in OVERRIDE_KEYS}
        spec = SweepSpec(
            name=name, data=str(data), space=str(space), trials=trials,
            storage=str(storage if storage is not None else default_storage()),
            overrides=overrides, time_budget_s=_seconds(time_budget), max_failed_trials=max_failures,
        )  # fmt: skip
        settable = [f.name for f in dataclasses.fields(spec) if f.name not in ("space_definition", "runs", "created")]
        for key, value in options.items():
            if key not in settable:  # a field, not any attribute: `validate=...` must not replace the method
                raise SegsweepError(
                    f"Sweep.create: unknown option {key!r}; "
                    f"{did_you_mean(key, [*settable, *OVERRIDE_KEYS, 'time_budget', 'max_failures'])}"
                    "see `segsweep sweep run --help`"
                )
            setattr(spec, key, value)
        spec.validate()
        if spec.folder.exists():
            raise SegsweepError(
                f"a sweep named {name!r} exists in {spec.folder.storage}; open it with Sweep.open({name!r}) "
                "or choose another name"
            )
        return cls(spec.folder, spec)

    @classmethod
    def open(cls, name: str, storage: str | Path | None = None) -> Sweep:
        """An existing sweep (raises NoSuchSweep listing the sweeps there when it is not)."""
        return cls(SweepFolder.at(storage, name).require())

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def path(self) -> Path:
        return self.folder.path

    # --- running ------------------------------------------------------------------------------

    def run(self, *, background: bool = False, **kwargs: Any) -> SweepOutcome | SweepRun:
        """Start the sweep: block until it ends (a SweepOutcome), or return a :class:`SweepRun`."""
        if self.spec is None:
            raise SegsweepError(f"sweep {self.name!r} exists already; call .resume() to continue it")
        if background:
            # The whole specification travels as a --config file (the format sweep.json has).
            config = {k: v for k, v in self.spec.to_dict().items() if v not in (None, {}, [])}
            with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="segsweep-", delete=False) as handle:
                json.dump(config, handle)
            return self._background(["sweep", "run", "--config", handle.name, *self._ray_address()])
        from sweeps.runner import run_sweep

        outcome = run_sweep(self.spec, **kwargs)
        self.spec = None  # it exists now: run it again with resume()
        return outcome

    def resume(
        self,
        *,
        background: bool = False,
        time_budget: float | str | None = None,
        max_failures: int | None = None,
        **kwargs: Any,
    ) -> SweepOutcome | SweepRun:
        """Continue the sweep where it stopped (finished folds are kept); a budget counts from now."""
        if background:
            argv = ["sweep", "resume", self.name, "--storage", str(self.folder.storage)]
            if time_budget is not None:
                argv += ["--time-budget", str(_seconds(time_budget))]
            if max_failures is not None:
                argv += ["--max-failures", str(max_failures)]
            return self._background(argv)
        from sweeps.runner import resume_sweep

        return resume_sweep(
            self.folder.storage,
            self.name,
            time_budget_s=_seconds(time_budget),
            max_failed_trials=max_failures,
            **kwargs,
        )

    def stop(self, *, now: bool = False) -> None:
        """Ask the running driver (this process's or another's) to stop cleanly."""
        request_stop(self.folder, "stopped from Python (Sweep.stop)", now=now)

    def _background(self, argv: list[str]) -> SweepRun:
        self.folder.path.mkdir(parents=True, exist_ok=True)
        log_path = self.folder.driver_log
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "sweeps.cli", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.spec = None
        return SweepRun(self, process, log_path)

    @staticmethod
    def _ray_address() -> list[str]:
        """``--address`` of the Ray this notebook already runs, so the background driver joins it."""
        import ray

        if not ray.is_initialized():
            return []
        return ["--address", ray.get_runtime_context().gcs_address]

    # --- reading -------------------------------------------------------------------------------

    def results(self) -> SweepResults:
        return load_sweep(self.folder.storage, self.name)

    def progress(self) -> SweepProgress:
        return read_progress(self.folder)

    def leaderboard(self) -> str:
        return format_leaderboard(self.results())

    def trials(self) -> pd.DataFrame:
        """One row per trial in leaderboard order: rank, id, number, state, parameters (the values the
        trial ran with), folds done, Dice/IoU mean and std over folds, training seconds, reason, and
        ``start``: the starting point's label where the trial ran one (None for the sampler's).
        ``state`` is STOPPED for a trial its records keep RUNNING once no driver runs the sweep."""
        return trial_frame(self.results())

    def folds(self) -> pd.DataFrame:
        """One row per finished fold of every trial (tidy): trial, fold, Dice, IoU, epochs, LR drops."""
        import pandas as pd

        return pd.DataFrame([
            {"trial_id": t.trial_id, "number": t.number, "fold": f.fold, "dice": f.dice, "iou": f.iou,
             "epochs_run": f.epochs_run, "lr_drops": list(f.lr_drops), "n_train": f.n_train, "n_val": f.n_val,
             "seconds": f.seconds}
            for t in self.results().trials for f in t.folds
        ])  # fmt: skip

    def images(self) -> pd.DataFrame:
        """One row per validation image of every finished fold (tidy): trial, fold, stem, Dice, IoU.

        Each image is scored out of fold (by the fold that did not train on it), so two trials pair
        image by image: ``frame.pivot(index="stem", columns="trial_id", values="dice")``.
        """
        import pandas as pd

        columns = ["trial_id", "number", "start", "fold", "stem", "dice", "iou"]
        return pd.DataFrame([
            {"trial_id": t.trial_id, "number": t.number, "start": t.start, "fold": s.fold, "stem": s.stem,
             "dice": s.dice, "iou": s.iou}
            for t in self.results().trials for s in t.image_scores().values()
        ], columns=columns)  # fmt: skip

    def epochs(self) -> pd.DataFrame:
        """One row per epoch of every finished fold (tidy): loss, val_loss, val IoU, learning rate."""
        import pandas as pd

        return pd.DataFrame([
            {"trial_id": t.trial_id, "number": t.number, "fold": f.fold, "epoch": h.epoch, "loss": h.loss,
             "val_loss": h.val_loss, "val_iou": h.val_iou, "lr": h.lr}
            for t in self.results().trials for f in t.folds for h in f.history
        ])  # fmt: skip

    def winner(self) -> TrialResult:
        """The best trial that completed all its folds (the first of the ranking)."""
        results = self.results()
        eligible = results.completed()
        if not eligible:
            raise SegsweepError(f"sweep {self.name!r} has no trial that completed all its folds yet")
        return eligible[0]

    def best_config(self) -> CVConfig:
        """The winner's configuration, as ``segsweep cv --config best.json`` would run it."""
        from trainer.config import CVConfig

        winner = self.winner()
        return CVConfig.from_dict(dict(winner.config), source=f"trial {winner.trial_id} of sweep {self.name!r}")


def trial_frame(results: SweepResults) -> pd.DataFrame:
    """``Sweep.trials()`` of sweep results already read (``sweep status --json`` reads the folder once)."""
    import pandas as pd

    rows = []
    rank = 0
    states = shown_states(results)  # RUNNING in the records, STOPPED once no driver runs the sweep
    for trial in rank_trials(results.trials):
        eligible = is_eligible(trial)
        rank += eligible
        mean, std = trial.mean, trial.std
        rows.append({
            "rank": rank if eligible else None, "trial_id": trial.trial_id, "number": trial.number,
            "state": states[trial.trial_id], **trial.ran_with,
            "folds_done": trial.folds_done, "n_folds": trial.n_folds,
            "dice_mean": mean["dice"], "dice_std": std["dice"], "iou_mean": mean["iou"], "iou_std": std["iou"],
            "seconds": trial.seconds, "reason": trial.reason, "start": trial.start,
        })  # fmt: skip
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["rank"] = frame["rank"].astype("Int64")
    return frame


def open_sweep(name: str, storage: str | Path | None = None) -> Sweep:
    """Shorthand for :meth:`Sweep.open`."""
    return Sweep.open(name, storage)


__all__ = ["Sweep", "SweepRun", "open_sweep"]
