"""Sweep overhead: a sweep's trials against the same cross-validation called directly.

A tiny configuration (8 synthetic pairs at 64 px, 2 folds, 1 epoch) makes the training short so
that what the sweep adds shows: Ray Tune scheduling, Optuna asks/tells, trial records, fold
checkpoints, and starting worker processes (TensorFlow import) where workers are not reused.

Measured, in one Ray session started on 127.0.0.1 (its start-up reported apart):

* ``trainer.cv.run_cv`` called directly in this process (TensorFlow imported, nothing traced);
* a one-trial sweep (``sweeps.runner.run_sweep``) of the same configuration: its wall time
  against the direct call;
* a ten-trial sweep, one trial at a time with reused workers. Each trial's ``run_cv`` is wrapped
  (``TimedRunCV``) to record when it started and ended and how long the sweep's reporter hooks
  took inside it; per-trial overhead = the gap between one trial's end and the next one's start
  + the time in the sweep's reporter hooks.

The encoder is vgg16 (few layers, so Keras traces each fold's graph quickly); the overhead does
not depend on it.

The script runs itself inside a loopback-only network namespace (``unshare -n``).
Goal: per-trial overhead under 1 s with workers reused.
Ratio: ten-trial sweep wall time per trial / direct cross-validation seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import _common

NAME = "sweep_overhead"


class TimedRunCV:
    """``trainer.cv.run_cv`` as a trial's cross-validation, recording when it ran (wall clock).

    Passed to the sweep as its ``cv_runner`` (pickled into the workers by value), it writes
    ``bench_timing.json`` into the trial folder: start and end of run_cv, and the seconds spent
    inside the sweep's reporter hooks (Ray reports, fold checkpoints, trial records), which are
    sweep overhead although they run inside the cross-validation.
    """

    def __call__(self, config: Any, data: Any, out_dir: Any, reporter: Any = None, **options: Any) -> Any:
        from trainer.cv import run_cv

        timed: Any = _TimedReporter(reporter)
        start = time.time()
        result = run_cv(config, data, out_dir, timed, **options)
        end = time.time()
        timing = {
            "start": start,
            "end": end,
            "reporter_seconds": timed.seconds,
            "by_hook": timed.by_hook,
            "pid": os.getpid(),
        }
        Path(out_dir, "bench_timing.json").write_text(json.dumps(timing))
        return result


class _TimedReporter:
    """Forwards every Reporter hook to ``inner`` and adds up the time spent in them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.by_hook: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self.seconds += spent
                self.by_hook[name] = self.by_hook.get(name, 0.0) + spent

        return timed


def sweep(tmp: Path, data: Path, space: Path, name: str, trials: int) -> dict[str, Any]:
    """Run a sweep; its wall time, and per trial its cross-validation and the overhead around it."""
    from sweeps.runner import run_sweep
    from sweeps.spec import SweepSpec

    spec = SweepSpec(
        name=name,
        data=str(data),
        space=str(space),
        trials=trials,
        storage=str(tmp / "sweeps"),
        concurrency=1,
        cpus_per_trial=float(os.cpu_count() or 1),
        scheduler="none",
        seed=0,
        trial_retries=0,
    )
    started_wall = time.time()
    started = time.perf_counter()
    outcome = run_sweep(spec, cv_runner=TimedRunCV())
    wall = time.perf_counter() - started
    ended_wall = time.time()
    timings = []
    for path in (spec.sweep_dir / "trials").glob("*/bench_timing.json"):
        timing = json.loads(path.read_text())
        cv = json.loads((path.parent / "cv.json").read_text())
        if not cv.get("complete"):
            raise SystemExit(f"trial {path.parent.name} did not complete; see {path.parent}")
        timings.append(timing)
    if len(timings) != trials:
        raise SystemExit(f"sweep {name}: {len(timings)} of {trials} trials completed; see {spec.sweep_dir}")
    timings.sort(key=lambda t: t["start"])
    # Between two trials on a reused worker: Ray's report handling, Optuna tell and ask, scheduling,
    # the trial's record keeping; plus the reporter hooks inside each cross-validation.
    gaps = [b["start"] - a["end"] for a, b in itertools.pairwise(timings)]
    cv_seconds = [t["end"] - t["start"] - t["reporter_seconds"] for t in timings]
    reporter_seconds = [t["reporter_seconds"] for t in timings]
    per_trial = [g + r for g, r in zip(gaps, reporter_seconds[1:], strict=True)]
    return {
        "wall": wall,
        "runner_wall": outcome.wall_seconds,
        "cv_seconds": cv_seconds,
        "before_first_trial": timings[0]["start"] - started_wall,
        "after_last_trial": ended_wall - timings[-1]["end"],
        "gaps_between_trials": gaps,
        "reporter_seconds": reporter_seconds,
        "reporter_seconds_by_hook": [t["by_hook"] for t in timings],
        "worker_pids": sorted({t["pid"] for t in timings}),
        "overhead_per_reused_trial": (sum(per_trial) / len(per_trial)) if per_trial else None,
        "overhead_per_trial_all_in": (wall - sum(cv_seconds)) / trials,
    }


def main(argv: list[str] | None = None) -> None:
    args = _common.parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    _common.reexec_in_loopback_netns()
    run(args)


def run(args: argparse.Namespace) -> None:
    quick = args.quick
    encoder, size, n_trials = ("vgg16", 32, 2) if quick else ("vgg16", 64, 10)
    with _common.temporary_dir("sweep") as tmp:
        os.environ["SEGSWEEP_CACHE"] = str(tmp / "cache")  # Ray workers inherit it
        data = _common.synthetic_dataset(tmp / "data", 8, size=64)
        space = tmp / "space.yaml"
        space.write_text(_common.tiny_space("bench-tiny", encoder, size, 4))

        from trainer.config import CVConfig
        from trainer.cv import run_cv
        from trainer.data import prepare_dataset

        started = time.perf_counter()
        with _common.local_ray():
            ray_start = time.perf_counter() - started
            prepared = prepare_dataset(data, size, progress=False)
            config = CVConfig(
                encoder=encoder,
                arch="unet",
                weights="none",
                loss="iou",
                batch_size=4,
                epochs=1,
                folds=2,
                image_size=size,
                lr=3e-4,
                seed=0,
            )
            import tensorflow  # noqa: F401  (imported before timing, as in a reused worker)

            started = time.perf_counter()
            run_cv(config, prepared, tmp / "direct")
            direct = time.perf_counter() - started
            one = sweep(tmp, data, space, "one", 1)
            many = sweep(tmp, data, space, "many", n_trials)

    one_overhead = one["wall"] - direct
    reused = many["overhead_per_reused_trial"]
    rows = [
        ["Ray start (once per sweep run; apart)", ray_start, ""],
        ["run_cv called directly", direct, 1.0],
        ["one-trial sweep, wall", one["wall"], one["wall"] / direct],
        ["  its trial's cross-validation", one["cv_seconds"][0], one["cv_seconds"][0] / direct],
        ["  before the trial's run_cv started", one["before_first_trial"], ""],
        ["  after it ended", one["after_last_trial"], ""],
        [f"{n_trials}-trial sweep, wall", many["wall"], many["wall"] / direct],
        [
            "  trials' cross-validation (mean)",
            sum(many["cv_seconds"]) / n_trials,
            sum(many["cv_seconds"]) / n_trials / direct,
        ],
        ["  before the first trial's run_cv started", many["before_first_trial"], ""],
        ["  between trials (mean gap)", sum(many["gaps_between_trials"]) / (n_trials - 1), ""],
        ["  in reporter hooks per trial (mean)", sum(many["reporter_seconds"]) / n_trials, ""],
        ["  overhead per trial, reused worker (gap + hooks)", reused, ""],
        ["  overhead per trial, all in ((wall - cv) / trials)", many["overhead_per_trial_all_in"], ""],
    ]
    print(
        f"config: {encoder} unet, 8 pairs at {size} px, 2 folds, 1 epoch, batch 4; one trial at a time "
        f"on {os.cpu_count()} CPUs; worker processes: {len(many['worker_pids'])} for {n_trials} trials"
    )
    print(_common.table(["", "seconds", "x direct"], rows))
    hooks: dict[str, float] = {}
    for by_hook in many["reporter_seconds_by_hook"]:
        for hook, seconds in by_hook.items():
            hooks[hook] = hooks.get(hook, 0.0) + seconds / n_trials
    print("reporter hooks per trial: " + ", ".join(f"{k} {v:.3f} s" for k, v in sorted(hooks.items())))
    print(
        f"one-trial sweep adds {one_overhead:.1f} s over the direct call "
        f"(worker start with TensorFlow import, Tune and Optuna set-up, records)"
    )
    holds = reused < 1.0
    print(
        f"goal: per-trial overhead < 1 s with workers reused: {'holds' if holds else 'does NOT hold'} ({reused:.2f} s)"
    )
    ratio = many["wall"] / n_trials / direct
    _common.finish(
        NAME,
        args,
        ratio,
        {
            "encoder": encoder,
            "image_size": size,
            "n_pairs": 8,
            "folds": 2,
            "epochs": 1,
            "trials": n_trials,
            "seconds": {
                "ray_start": ray_start,
                "direct_cv": direct,
                "one_trial_sweep": one,
                "many_trial_sweep": many,
                "one_trial_overhead": one_overhead,
            },
            "overhead_per_reused_trial": reused,
            "goal": "< 1 s per trial",
            "goal_holds": holds,
        },
    )


if __name__ == "__main__":
    main()
