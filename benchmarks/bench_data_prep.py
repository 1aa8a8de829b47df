"""Data preparation: the first decode-and-resize of Kvasir-SEG against loading segsweep's cache.

``trainer.data.prepare_dataset`` decodes every JPEG pair once, resizes it (256 px here) and keeps
the result in a content-keyed cache; later runs and every sweep trial load that cache instead.
Both calls below are the whole ``prepare_dataset`` call a run pays (including hashing the files
for the cache key), into a temporary cache folder. The cached call returns memory maps; the time to
also read every page of them is reported beside it.

Goal: the cached load at least 20x faster than the first preparation, and under 2 s.
Ratio: first preparation seconds / cached load seconds.
"""

from __future__ import annotations

import argparse
import time

import _common
import numpy as np

NAME = "data_prep"


def main(argv: list[str] | None = None) -> None:
    args = _common.parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    run(args)


def run(args: argparse.Namespace) -> None:
    from trainer.data import cache_key, index_dataset, prepare_dataset, select_stems

    size = 64 if args.quick else 256
    repeats = 3
    with _common.temporary_dir("prep") as tmp:
        root = _common.real_data(args)
        if root is None:
            # Synthetic frames of Kvasir-SEG's typical size (about 600x530) in full mode.
            n, frame = (40, 128) if args.quick else (1000, 576)
            root = _common.synthetic_dataset(tmp / "data", n, size=frame)
        index = index_dataset(root)
        stems = select_stems(index)
        # Hash once up front so both sides start with the source files in the page cache.
        cache_key(index, stems, size)

        started = time.perf_counter()
        data = prepare_dataset(root, size, cache_dir=tmp / "cache", progress=False)
        first = time.perf_counter() - started
        n_pairs = len(data)
        data_bytes = int(data.images.nbytes + data.masks.nbytes)
        del data

        loads, touched = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            data = prepare_dataset(root, size, cache_dir=tmp / "cache", progress=False)
            loads.append(time.perf_counter() - started)
            # Reading every page: what a trial pays by the end of its first epoch at the latest.
            checksum = int(np.asarray(data.images).sum(dtype=np.uint64)) + int(np.asarray(data.masks).sum())
            touched.append(time.perf_counter() - started)
            del data
        started = time.perf_counter()
        cache_key(index, stems, size)
        hashing = time.perf_counter() - started

    cached = float(np.median(loads))
    cached_touched = float(np.median(touched))
    ratio = first / cached
    rows = [
        [f"first prepare_dataset (decode + resize to {size} px + write cache)", first, 1.0],
        ["cached prepare_dataset (hash files + open memory maps)", cached, first / cached],
        ["cached, plus reading every page", cached_touched, first / cached_touched],
        ["  of which: hashing the source files for the cache key", hashing, first / hashing],
    ]
    print(
        f"data: {root} ({n_pairs} pairs, prepared {data_bytes / 2**20:.0f} MiB at {size} px); "
        f"cached: median of {repeats}"
    )
    print(_common.table(["step", "seconds", "x faster"], rows))
    holds = ratio >= 20 and cached < 2
    print(
        f"goal: cached >= 20x faster and < 2 s: {'holds' if holds else 'does NOT hold'} ({ratio:.1f}x, {cached:.2f} s)"
    )
    _common.finish(
        NAME,
        args,
        ratio,
        {
            "data": str(root),
            "n_pairs": n_pairs,
            "image_size": size,
            "prepared_bytes": data_bytes,
            "seconds": {
                "first": first,
                "cached": cached,
                "cached_all_loads": loads,
                "cached_read_all_pages": cached_touched,
                "hash_source_files": hashing,
            },
            "checksum": checksum,
            "goal": ">= 20 and cached < 2 s",
            "goal_holds": holds,
        },
    )


if __name__ == "__main__":
    main()
