"""Memory: peak memory of one against two concurrent sweep trials on the same prepared data.

A sweep prepares the data once and puts it into Ray's object store; each trial maps that one copy
read-only. So a second concurrent trial should add only its own model, optimizer state, activations
and per-batch buffers, not another copy of the data.

Two sweeps run on one local Ray (127.0.0.1, loopback-only namespace): one trial alone, then two
trials at once (one CPU each). While they run, a sampler adds up the memory of the trial processes
(``ray::ImplicitFunc``) every 0.5 s with psutil: RSS (counts the shared data once per process),
USS (private to the process) and PSS (shared pages split between the processes that map them:
the honest sum), plus how much of each process's RSS is the object store's shared mapping.

Goal: the second trial adds less than one copy of the data beyond what the first trial costs
privately; i.e. PSS(2 trials) - PSS(1 trial) is about USS(1 trial), and the data is counted once.
Ratio: peak PSS sum with 2 trials / peak PSS sum with 1 trial (2.0 would mean everything doubled).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

import _common

NAME = "memory"

SPACE = """\
name: bench-memory
description: one fixed configuration (the learning rate is the only thing drawn)
params:
  lr:
    type: float
    low: 1.0e-4
    high: 1.0e-3
    log: true
fixed:
  encoder: mobilenetv2
  arch: unet
  weights: none
  loss: iou
  batch_size: {batch}
  epochs: 1
  folds: 2
  image_size: {size}
"""
_MIB = 2**20


class TrialMemorySampler:
    """Samples the memory of Ray trial processes in a background thread; keeps the peaks."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak: dict[str, int] = {"rss": 0, "uss": 0, "pss": 0, "shared_store_rss": 0}
        self.peak_processes = 0
        self.per_process_peak: dict[int, dict[str, int]] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TrialMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        import psutil

        totals = {key: 0 for key in self.peak}
        count = 0
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if not cmdline or "ImplicitFunc" not in cmdline[0]:
                continue
            try:
                full = proc.memory_full_info()
                store = sum(m.rss for m in proc.memory_maps(grouped=True) if "plasma" in m.path
                            or m.path.startswith("/dev/shm"))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            values = {"rss": full.rss, "uss": full.uss, "pss": full.pss, "shared_store_rss": store}
            peak = self.per_process_peak.setdefault(proc.pid, dict.fromkeys(values, 0))
            self.names[proc.pid] = cmdline[0]
            for key, value in values.items():
                totals[key] += value
                peak[key] = max(peak[key], value)
            count += 1
        for key, value in totals.items():
            self.peak[key] = max(self.peak[key], value)
        self.peak_processes = max(self.peak_processes, count)


def sweep(tmp: Path, data: Path, space: Path, name: str, trials: int) -> dict[str, Any]:
    from sweeps.runner import run_sweep
    from sweeps.spec import SweepSpec

    spec = SweepSpec(name=name, data=str(data), space=str(space), trials=trials, storage=str(tmp / "sweeps"),
                     concurrency=trials, cpus_per_trial=1.0, scheduler="none", seed=0, max_failures=0)
    started = time.perf_counter()
    with TrialMemorySampler() as sampler:
        outcome = run_sweep(spec)
    complete = sum(t.state == "COMPLETE" for t in outcome.results.trials)
    if complete != trials:
        raise SystemExit(f"sweep {name}: {complete} of {trials} trials completed; see {spec.sweep_dir}")
    return {"seconds": time.perf_counter() - started, "peak": sampler.peak,
            "processes": sampler.peak_processes,
            "per_process_peak": [{"pid": pid, "name": sampler.names[pid], **peak}
                                 for pid, peak in sampler.per_process_peak.items()]}


def main(argv: list[str] | None = None) -> None:
    args = _common.parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    _common.reexec_in_loopback_netns()
    run(args)


def run(args: argparse.Namespace) -> None:
    quick = args.quick
    size, batch = (64, 4) if quick else (64, 8)
    with _common.temporary_dir("memory") as tmp:
        os.environ["SEGSWEEP_CACHE"] = str(tmp / "cache")
        root = _common.real_data(args)
        if root is None:
            root = _common.synthetic_dataset(tmp / "data", 16 if quick else 1000, size=64)
        space = tmp / "space.yaml"
        space.write_text(SPACE.format(batch=batch, size=size))
        from trainer.data import prepare_dataset

        prepared = prepare_dataset(root, size, progress=False)
        data_bytes = int(prepared.images.nbytes + prepared.masks.nbytes)
        n_pairs = len(prepared)
        del prepared
        with _common.local_ray(num_cpus=2, object_store_bytes=max(256 * _MIB, data_bytes + 256 * _MIB)):
            one = sweep(tmp, root, space, "one", 1)
            two = sweep(tmp, root, space, "two", 2)

    mib = {k: {kind: v / _MIB for kind, v in side["peak"].items()} for k, side in (("one", one), ("two", two))}
    rows = []
    for kind in ("rss", "pss", "uss", "shared_store_rss"):
        rows.append([kind, mib["one"][kind], mib["two"][kind], mib["two"][kind] - mib["one"][kind]])
    print(f"data: {root} ({n_pairs} pairs at {size} px) = {data_bytes / _MIB:.1f} MiB prepared; "
          f"mobilenetv2 unet, batch {batch}, 2 folds, 1 epoch; peaks over trial processes (MiB)")
    print(_common.table(["memory (sum over trial processes)", "1 trial", "2 trials", "delta"], rows))
    for label, side in (("1 trial", one), ("2 trials", two)):
        for peak in side["per_process_peak"]:
            print(f"  {label}: {peak['name']} (pid {peak['pid']}) peak rss {peak['rss'] / _MIB:.0f}  "
                  f"uss {peak['uss'] / _MIB:.0f}  "
                  f"pss {peak['pss'] / _MIB:.0f}  object-store rss {peak['shared_store_rss'] / _MIB:.1f} MiB")
    delta_pss = mib["two"]["pss"] - mib["one"]["pss"]
    one_private = mib["one"]["uss"]
    data_mib = data_bytes / _MIB
    # The second trial is "model and activations only" when it adds no more than one trial's private
    # memory (plus slack of a quarter of the data for allocator noise), and the shared data is not
    # doubled in the PSS sum.
    holds = delta_pss <= one_private + 0.25 * data_mib
    print(f"second trial adds {delta_pss:.0f} MiB PSS; one trial's private memory (USS) is {one_private:.0f} MiB; "
          f"the data is {data_mib:.1f} MiB")
    print(f"goal: second trial adds its model and activations only (delta PSS <= USS of one trial + "
          f"data/4): {'holds' if holds else 'does NOT hold'}")
    ratio = mib["two"]["pss"] / mib["one"]["pss"]
    _common.finish(NAME, args, ratio, {
        "data": str(root), "n_pairs": n_pairs, "image_size": size, "batch_size": batch,
        "data_mib": data_mib, "peak_mib": mib, "delta_pss_mib": delta_pss, "one_trial_uss_mib": one_private,
        "one": one, "two": two, "goal_holds": holds,
    })


if __name__ == "__main__":
    main()
