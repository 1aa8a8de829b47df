"""Sweep scale: what the sweep driver costs per trial as a sweep grows from 10 to 1,000 trials.

The cross-validation is a stand-in whose folds end at once (``InstantCV``: it writes the fold files
and cv.json as ``trainer.cv.run_cv`` does and makes the same reporter calls), so everything measured
is the sweep's own path: Optuna asks and tells on its SQLite study, Ray Tune's scheduling, results,
fold checkpoints and experiment-state snapshots, the driver's callback, the trial records, and (in
the second row) each trial's MLflow runs in the sweep's SQLite store.

For each size and tracker setting one sweep runs (two trials at a time, one CPU each, scheduler
none), on one Ray head started once on 127.0.0.1 (its start-up is not counted). Measured:

* driver seconds per trial: ``run_sweep``'s wall time / trials;
* peak driver memory: the largest RSS of this process during that sweep (sampled every 0.2 s);
* the sweep folder's size on disk;
* ``segsweep sweep status NAME`` and ``segsweep report NAME`` as a user runs them (fresh
  processes, imports included), and ``sweeps.folder.load_sweep`` + the leaderboard table in
  process (the results frame a Python caller gets).

Goals: per-trial cost at 1,000 trials <= 1.5x the cost at 100; status <= 2 s and report <= 30 s at
1,000 trials. Ratio: per-trial cost at the largest size / at the next one (1000/100 in full mode),
trackers off.

The script runs itself inside a loopback-only network namespace (``unshare -n``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common

NAME = "sweep_scale"
FULL_SIZES = (10, 100, 1000)
QUICK_SIZES = (2, 4)
TRACKERS = ("none", "mlflow")
STATUS_GOAL_S, REPORT_GOAL_S, GROWTH_GOAL = 2.0, 30.0, 1.5


class InstantCV:
    """A cross-validation whose folds end at once, keeping ``run_cv``'s contract with the sweep.

    Fold files and cv.json are written as each fold ends, the reporter sees every call run_cv
    makes (cv start, fold start/end, cv end) and is closed; the Dice depends on the learning rate
    so that the ranking has something to rank. Passed as the sweep's ``cv_runner``.
    """

    def __call__(self, config: Any, data: Any, out_dir: Any, reporter: Any = None, **options: Any) -> Any:
        import math

        from segsweep.base.files import write_json_atomic
        from trainer.reporter import Reporter
        from trainer.results import CVResult, FoldResult

        out_dir = Path(out_dir)
        reporter = reporter or Reporter()
        n_val = max(1, len(data) // config.folds)
        data_info = {
            "path": options.get("data_source"),
            "n_pairs": len(data),
            "image_size": data.image_size,
            "cache_key": data.key,
        }
        folds: list[FoldResult] = []

        def snapshot(complete: bool) -> Any:
            result = CVResult(
                config=config.to_dict(),
                data=data_info,
                n_folds=config.folds,
                folds=list(folds),
                seconds=0.0,
                complete=complete,
                version="instant",
            )
            write_json_atomic(out_dir / "cv.json", result.to_dict())
            return result

        try:
            reporter.on_cv_start(config, config.folds, out_dir)
            done = {int(p.stem.split("_")[1]) for p in (out_dir / "folds").glob("fold_*.json")}
            for fold in range(1, config.folds + 1):
                if fold in done:
                    continue
                reporter.on_fold_start(fold, len(data) - n_val, n_val)
                dice = 0.5 + 0.1 * math.log10(config.lr / 1e-4) + 0.01 * fold
                result = FoldResult(
                    fold=fold,
                    n_train=len(data) - n_val,
                    n_val=n_val,
                    dice=dice,
                    iou=0.8 * dice,
                    epochs_run=1,
                    lr_drops=[],
                    history=[],
                    seconds=0.0,
                )
                write_json_atomic(out_dir / "folds" / f"fold_{fold:02d}.json", result.to_dict())
                folds.append(result)
                snapshot(complete=len(folds) == config.folds)
                reporter.on_fold_end(result, list(folds), None)
            final = snapshot(complete=True)
            reporter.on_cv_end(final)
            return final
        finally:
            reporter.close()


class PeakRSS:
    """The largest resident set size of this process while the block runs (sampled every 0.2 s)."""

    def __enter__(self) -> PeakRSS:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


@contextlib.contextmanager
def ray_head(num_cpus: int) -> Iterator[None]:
    """A Ray head (``ray start --head --block``) on 127.0.0.1 in a private folder, this process its driver.

    Started as a separate node rather than by ``ray.init`` so that the dashboard agent's HTTP port
    file can be written for the raylet in time (Ray 2.60 waits 15 s for it, which a loaded shared
    machine misses; the Slurm batch script does the same). Every process of it is stopped by pid.
    """
    import logging
    import re
    import signal
    import tempfile

    import ray
    from ray._raylet import DASHBOARD_AGENT_LISTEN_PORT_NAME, persist_port

    from sweeps.ui import free_port
    from tests.support.ray import descendants

    temp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    port, listen_port = free_port(), free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--include-dashboard=false",
            "--no-monitor",
            f"--num-cpus={num_cpus}",
            f"--object-store-memory={256 << 20}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={listen_port}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pids: set[int] = set()
    try:
        log = temp / "session_latest" / "logs" / "raylet.out"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and head.poll() is None:
            found = re.search(r"node_id=([0-9a-f]{56})", log.read_text(errors="replace")) if log.is_file() else None
            if found:
                persist_port(
                    str((temp / "session_latest").resolve()),
                    found.group(1),
                    DASHBOARD_AGENT_LISTEN_PORT_NAME,
                    listen_port,
                )
                break
            time.sleep(0.5)
        while True:
            if head.poll() is not None:
                raise SystemExit("the Ray head did not start")
            try:
                ray.init(address=f"127.0.0.1:{port}", logging_level=logging.WARNING, log_to_driver=False)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        pids.update(descendants(head.pid))
        yield
    finally:
        ray.shutdown()
        if head.poll() is None:
            pids.update(descendants(head.pid))
        for pid in sorted(pids, reverse=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            head.wait(timeout=10)
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed_command(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def one_sweep(tmp: Path, data: Path, space: Path, trials: int, tracker: str) -> dict[str, Any]:
    """Run one sweep of ``trials`` instant trials; its costs, and the read-side timings after it."""
    from sweeps.folder import leaderboard_table, load_sweep
    from sweeps.runner import run_sweep
    from sweeps.spec import SweepSpec

    name = f"s{trials}-{tracker}"
    storage = tmp / "sweeps"
    spec = SweepSpec(
        name=name,
        data=str(data),
        space=str(space),
        trials=trials,
        storage=str(storage),
        concurrency=2,
        cpus_per_trial=1.0,
        scheduler="none",
        seed=0,
        tracker=tracker,
        trial_retries=0,
    )
    with PeakRSS() as memory:
        started = time.perf_counter()
        outcome = run_sweep(spec, cv_runner=InstantCV())
        wall = time.perf_counter() - started
    complete = sum(t.state == "COMPLETE" for t in outcome.results.trials)
    if not outcome.finished or complete != trials:
        raise SystemExit(f"sweep {name}: {complete} of {trials} trials completed; see {spec.sweep_dir}")
    env = {**os.environ}
    segsweep = str(Path(sys.executable).parent / "segsweep")
    status_s = timed_command([segsweep, "sweep", "status", name, "--storage", str(storage)], env)
    report_s = timed_command([segsweep, "report", name, "--storage", str(storage), "--format", "md,html,json"], env)
    started = time.perf_counter()
    results = load_sweep(storage, name)
    leaderboard_table(results)
    load_s = time.perf_counter() - started
    size = folder_bytes(spec.sweep_dir)
    row = {
        "trials": trials,
        "tracker": tracker,
        "wall_s": wall,
        "per_trial_s": wall / trials,
        "peak_rss_mib": memory.peak / 2**20,
        "folder_mib": size / 2**20,
        "status_s": status_s,
        "report_s": report_s,
        "load_s": load_s,
    }
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    p = _common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="comma-separated trial counts (default 10,100,1000; quick 2,4)")
    p.add_argument("--trackers", default=None, help="comma-separated: none, mlflow (default both; quick none)")
    args = p.parse_args(argv)
    _common.reexec_in_loopback_netns()
    run(args)


def run(args: argparse.Namespace) -> None:
    import secrets

    # Ray 2.60 authenticates with a token, read once per process: a private one, set before Ray is
    # imported (not ~/.ray/auth_token, which every Ray user of this machine shares).
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (QUICK_SIZES if args.quick else FULL_SIZES)
    trackers = tuple(args.trackers.split(",")) if args.trackers else (("none",) if args.quick else TRACKERS)
    rows: list[dict[str, Any]] = []
    with _common.temporary_dir("scale") as tmp:
        os.environ["SEGSWEEP_CACHE"] = str(tmp / "cache")  # Ray workers inherit it
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # MLflow writes into each sweep folder
        data = _common.synthetic_dataset(tmp / "data", 8, size=32)
        space = tmp / "space.yaml"
        space.write_text(_common.tiny_space("bench-scale", "mobilenetv2", 32, 2))
        with ray_head(num_cpus=2):
            for tracker in trackers:
                for trials in sizes:
                    rows.append(one_sweep(tmp, data, space, trials, tracker))

    def row_of(trials: int, tracker: str) -> dict[str, Any]:
        return next(r for r in rows if r["trials"] == trials and r["tracker"] == tracker)

    print(
        f"instant folds (2 per trial), 2 trials at a time on {os.cpu_count()} CPUs, scheduler none; "
        "status and report as fresh `segsweep` processes"
    )
    print(
        _common.table(
            [
                "trials",
                "tracker",
                "wall s",
                "s/trial",
                "x smaller",
                "peak RSS MiB",
                "folder MiB",
                "status s",
                "report s",
                "load s",
            ],
            [
                [
                    r["trials"],
                    r["tracker"],
                    r["wall_s"],
                    r["per_trial_s"],
                    (
                        r["per_trial_s"] / row_of(sizes[sizes.index(r["trials"]) - 1], r["tracker"])["per_trial_s"]
                        if sizes.index(r["trials"])
                        else ""
                    ),
                    r["peak_rss_mib"],
                    r["folder_mib"],
                    r["status_s"],
                    r["report_s"],
                    r["load_s"],
                ]
                for r in rows
            ],
        )
    )
    largest, previous = sizes[-1], sizes[-2] if len(sizes) > 1 else sizes[-1]
    verdicts = {}
    for tracker in trackers:
        big, small = row_of(largest, tracker), row_of(previous, tracker)
        growth = big["per_trial_s"] / small["per_trial_s"]
        verdicts[tracker] = {
            "growth": growth,
            "growth_holds": growth <= GROWTH_GOAL,
            "status_holds": big["status_s"] <= STATUS_GOAL_S,
            "report_holds": big["report_s"] <= REPORT_GOAL_S,
        }
        print(
            f"goals at {largest} trials, tracker {tracker}: per-trial cost {growth:.2f}x the cost at {previous} "
            f"({'holds' if growth <= GROWTH_GOAL else 'does NOT hold'}, goal <= {GROWTH_GOAL}); "
            f"status {big['status_s']:.2f} s ({'holds' if big['status_s'] <= STATUS_GOAL_S else 'does NOT hold'}, "
            f"goal <= {STATUS_GOAL_S:g}); report {big['report_s']:.1f} s "
            f"({'holds' if big['report_s'] <= REPORT_GOAL_S else 'does NOT hold'}, goal <= {REPORT_GOAL_S:g})"
        )
    ratio_tracker = "none" if "none" in trackers else trackers[0]
    ratio = verdicts[ratio_tracker]["growth"]
    _common.finish(
        NAME,
        args,
        ratio,
        {
            "sizes": list(sizes),
            "trackers": list(trackers),
            "rows": rows,
            "verdicts": verdicts,
            "goals": {"growth": GROWTH_GOAL, "status_s": STATUS_GOAL_S, "report_s": REPORT_GOAL_S},
        },
    )


if __name__ == "__main__":
    main()
