"""Memory: peak memory of one against two concurrent sweep trials on the same prepared data.

A sweep prepares the data once and puts it into Ray's object store; each trial maps that one copy
read-only. So a second concurrent trial should add only its own model, optimizer state, activations
and per-batch buffers, not another copy of the data.

Two sweeps run on one local Ray (127.0.0.1, loopback-only namespace): one trial alone, then two
trials at once (one CPU each). While they run, a sampler adds up the memory of the trial processes
(``ray::ImplicitFunc``, the pids the trial records name) every 0.5 s with psutil: RSS (counts
shared pages once per process), USS (private to the process) and PSS (shared pages split between
the processes that map them: the honest sum), and how much of each process's RSS is the object
store's shared mapping (where the data lives).

Goal: the second trial adds its model and activations only: every trial process reads the data
from the shared object-store mapping (its RSS there is the data size, outside its private memory),
and a trial beside another has no more private memory (USS) than a trial alone (within half the
data size); PSS(2 trials) - PSS(1 trial) is then one trial's private memory.
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

_MIB = 2**20


class ProcessMemorySampler:
    """Samples the memory of Ray trainable actor processes in a background thread.

    Tune also starts actor processes that never run a trial (or idle ones left from a finished
    trial); they are sampled too, and left out afterwards by :meth:`peaks` given the pids that ran
    trials (from the trial records).
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[dict[int, dict[str, int]]] = []
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def sample(self) -> dict[int, dict[str, int]]:
        import psutil

        sample: dict[int, dict[str, int]] = {}
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if not cmdline or "ImplicitFunc" not in cmdline[0]:
                continue
            try:
                full = proc.memory_full_info()
                store = sum(
                    m.rss for m in proc.memory_maps(grouped=True) if "plasma" in m.path or m.path.startswith("/dev/shm")
                )
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self.names[proc.pid] = cmdline[0]
            sample[proc.pid] = {"rss": full.rss, "uss": full.uss, "pss": full.pss, "shared_store_rss": store}
        return sample

    def peaks(self, pids: set[int]) -> tuple[dict[str, int], dict[int, dict[str, int]]]:
        """Peak sums over ``pids`` (at one instant), and each pid's own peaks."""
        kinds = ("rss", "uss", "pss", "shared_store_rss")
        total = dict.fromkeys(kinds, 0)
        each: dict[int, dict[str, int]] = {}
        for sample in self.samples:
            chosen = {pid: values for pid, values in sample.items() if pid in pids}
            for kind in kinds:
                total[kind] = max(total[kind], sum(v[kind] for v in chosen.values()))
            for pid, values in chosen.items():
                peak = each.setdefault(pid, dict.fromkeys(kinds, 0))
                for kind in kinds:
                    peak[kind] = max(peak[kind], values[kind])
        return total, each


def sweep(tmp: Path, data: Path, space: Path, name: str, trials: int, limit: int | None) -> dict[str, Any]:
    from sweeps.folder import read_trial_record
    from sweeps.runner import run_sweep
    from sweeps.spec import SweepSpec

    spec = SweepSpec(
        name=name,
        data=str(data),
        space=str(space),
        trials=trials,
        storage=str(tmp / "sweeps"),
        concurrency=trials,
        cpus_per_trial=1.0,
        scheduler="none",
        seed=0,
        trial_retries=0,
        overrides={"limit": limit},
    )
    started = time.perf_counter()
    with ProcessMemorySampler() as sampler:
        outcome = run_sweep(spec)
    complete = sum(t.state == "COMPLETE" for t in outcome.results.trials)
    if complete != trials:
        raise SystemExit(f"sweep {name}: {complete} of {trials} trials completed; see {spec.sweep_dir}")
    trial_pids = {
        int(attempt["pid"])
        for folder in (spec.sweep_dir / "trials").iterdir()
        if folder.is_dir()
        for attempt in read_trial_record(folder).attempts or []
    }
    peak, each = sampler.peaks(trial_pids)
    others = set(sampler.names) - trial_pids
    _, idle = sampler.peaks(others)
    return {
        "seconds": time.perf_counter() - started,
        "peak": peak,
        "trial_pids": sorted(trial_pids),
        "per_process_peak": [{"pid": pid, "name": sampler.names[pid], **v} for pid, v in each.items()],
        "other_actor_processes": [{"pid": pid, "name": sampler.names[pid], **v} for pid, v in idle.items()],
    }


def main(argv: list[str] | None = None) -> None:
    args = _common.parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    _common.reexec_in_loopback_netns()
    run(args)


def run(args: argparse.Namespace) -> None:
    quick = args.quick
    # Quick: vgg16 at 32 px (few layers: Keras traces each fold's graph fastest).
    encoder, size, batch, limit = ("vgg16", 32, 4, None) if quick else ("mobilenetv2", 128, 8, 320)
    with _common.temporary_dir("memory") as tmp:
        os.environ["SEGSWEEP_CACHE"] = str(tmp / "cache")
        root = _common.real_data(args)
        if root is None:
            root = _common.synthetic_dataset(tmp / "data", 16 if quick else 320, size=128)
        space = tmp / "space.yaml"
        space.write_text(_common.tiny_space("bench-memory", encoder, size, batch))
        from trainer.data import prepare_dataset

        prepared = prepare_dataset(root, size, limit=limit, progress=False)
        data_bytes = int(prepared.images.nbytes + prepared.masks.nbytes)
        n_pairs = len(prepared)
        del prepared
        with _common.local_ray(num_cpus=2, object_store_bytes=max(256 * _MIB, data_bytes + 256 * _MIB)):
            one = sweep(tmp, root, space, "one", 1, limit)
            two = sweep(tmp, root, space, "two", 2, limit)

    mib = {k: {kind: v / _MIB for kind, v in side["peak"].items()} for k, side in (("one", one), ("two", two))}
    rows = []
    for kind in ("rss", "pss", "uss", "shared_store_rss"):
        rows.append([kind, mib["one"][kind], mib["two"][kind], mib["two"][kind] - mib["one"][kind]])
    print(
        f"data: {root} ({n_pairs} pairs at {size} px) = {data_bytes / _MIB:.1f} MiB prepared; "
        f"{encoder} unet, batch {batch}, 2 folds, 1 epoch; peaks over trial processes (MiB)"
    )
    print(_common.table(["memory (sum over trial processes)", "1 trial", "2 trials", "delta"], rows))
    for label, side in (("1 trial", one), ("2 trials", two)):
        if side["other_actor_processes"]:
            rss = sum(p["rss"] for p in side["other_actor_processes"]) / _MIB
            print(
                f"  {label}: {len(side['other_actor_processes'])} other trainable actor process(es) that ran "
                f"no trial of this sweep, peak RSS {rss:.0f} MiB together (not counted above)"
            )
        for peak in side["per_process_peak"]:
            print(
                f"  {label}: {peak['name']} (pid {peak['pid']}) peak rss {peak['rss'] / _MIB:.0f}  "
                f"uss {peak['uss'] / _MIB:.0f}  "
                f"pss {peak['pss'] / _MIB:.0f}  object-store rss {peak['shared_store_rss'] / _MIB:.1f} MiB"
            )
    delta_pss = mib["two"]["pss"] - mib["one"]["pss"]
    one_private = mib["one"]["uss"]
    data_mib = data_bytes / _MIB
    trials = [*one["per_process_peak"], *two["per_process_peak"]]
    shared_in_every_trial = all(p["shared_store_rss"] / _MIB >= 0.9 * data_mib for p in trials)
    private_two = max(p["uss"] for p in two["per_process_peak"]) / _MIB
    # No copy of the data: every trial reads it from the object store's shared mapping (not counted
    # in its private memory), and a trial running beside another has no more private memory than a
    # trial alone, give or take half the data size. (The sums' delta is reported too; its sampling
    # noise, peaks at different moments, is tens of MiB.)
    holds = shared_in_every_trial and private_two <= one_private + 0.5 * data_mib
    print(
        f"second trial adds {delta_pss:.0f} MiB PSS; one trial alone has {one_private:.0f} MiB private (USS), "
        f"a trial beside another at most {private_two:.0f} MiB; the data is {data_mib:.1f} MiB, mapped shared "
        f"from the object store in {'every' if shared_in_every_trial else 'NOT every'} trial process"
    )
    print(
        f"goal: the second trial adds its model and activations only, no copy of the data: "
        f"{'holds' if holds else 'does NOT hold'}"
    )
    ratio = mib["two"]["pss"] / mib["one"]["pss"]
    _common.finish(
        NAME,
        args,
        ratio,
        {
            "data": str(root),
            "n_pairs": n_pairs,
            "encoder": encoder,
            "image_size": size,
            "batch_size": batch,
            "data_mib": data_mib,
            "peak_mib": mib,
            "delta_pss_mib": delta_pss,
            "one_trial_uss_mib": one_private,
            "max_uss_of_a_trial_beside_another_mib": private_two,
            "data_shared_in_every_trial": shared_in_every_trial,
            "one": one,
            "two": two,
            "goal_holds": holds,
        },
    )


if __name__ == "__main__":
    main()
