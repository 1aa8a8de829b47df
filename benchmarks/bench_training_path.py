"""Training path: segsweep's fit loop against a bare tf-keras ``model.fit`` on the same model and data.

Both sides train the same architecture (rebuilt from the same seed), compiled the same way
(``trainer.models.compile_model``), on the same images at the same batch size:

* bare: ``model.fit(x, y)`` on preprocessed float32 numpy arrays held in memory;
* segsweep: ``trainer.training.fit`` (BatchSource generator through tf.data with prefetch, its
  epoch recorder and LR-cut callbacks) on the uint8 prepared data, without augmentation for
  fairness; and once more with the paper's augmentation, as a sweep trains;
* segsweep with an epoch checkpoint saved after every epoch (trainer.checkpoint; the worst case:
  segsweep skips saves that would cost more than trainer.checkpoint.MAX_OVERHEAD of the training
  time), timed from one epoch's end to the next, so each epoch carries the previous one's save.
  The checkpoint's size and its save time alone (median of 3) are printed too: the cost per saved
  epoch on any machine, to set against its epoch time.

The first epoch of each side (graph tracing) is not timed; the median of the later epochs is. In
full mode the sides alternate (bare, segsweep, segsweep+augmentation, bare, segsweep) so that a
load change on a shared machine hits both; each side's rate is the median over its runs.
Threads: TensorFlow's intra/inter-op settings and the process's thread count (psutil) at the end
of each timed epoch. Goal: segsweep at least 0.95x bare images/s. Ratio: segsweep / bare
(no augmentation).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np

NAME = "training_path"


def _threads() -> dict[str, int]:
    import psutil
    import tensorflow as tf

    return {
        "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "process_threads": psutil.Process().num_threads(),
    }


def bare_fit(config: Any, images: np.ndarray, masks: np.ndarray) -> tuple[list[float], dict[str, int]]:
    """Per-epoch seconds of a plain ``model.fit`` on in-memory arrays; peak threads seen."""
    import tf_keras

    from trainer.models import build_model, compile_model, prepare_inputs

    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    compile_model(model, config)
    x = prepare_inputs(np.asarray(images), config.encoder)
    y = np.asarray(masks, np.float32)
    seconds: list[float] = []
    threads: dict[str, int] = {}

    class EpochTimer(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            seconds.append(time.perf_counter() - self.started)
            now = _threads()
            threads.update({k: max(v, threads.get(k, 0)) for k, v in now.items()})

    model.fit(
        x, y, batch_size=config.batch_size, epochs=config.epochs, shuffle=True, callbacks=[EpochTimer()], verbose=0
    )
    return seconds, threads


def segsweep_fit(
    config: Any, images: np.ndarray, masks: np.ndarray, checkpoint_dir: Path | None = None
) -> tuple[list[float], dict[str, int]]:
    """Per-epoch seconds of ``trainer.training.fit`` (its own per-epoch timing; with ``checkpoint_dir``,
    from one epoch's end to the next, which includes the checkpoint saved between); peak threads seen."""
    import tf_keras

    from trainer.checkpoint import EpochCheckpoint, run_identity
    from trainer.models import build_model
    from trainer.training import fit

    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    seconds: list[float] = []
    threads: dict[str, int] = {}
    ends: list[float] = []

    def on_epoch(epoch: int, metrics: Any) -> None:
        now = time.perf_counter()
        seconds.append(float(metrics["seconds"]) if not ends or checkpoint_dir is None else now - ends[-1])
        ends.append(now)
        threads.update({k: max(v, threads.get(k, 0)) for k, v in _threads().items()})

    checkpoint = None
    if checkpoint_dir is not None:
        import trainer.checkpoint

        trainer.checkpoint.MAX_OVERHEAD = float("inf")  # save after every epoch: the worst case
        trainer.checkpoint.MIN_PROTECTED_SECONDS = 0.0
        identity = run_identity(config.to_dict(), "bench", 1, np.arange(len(images)))
        checkpoint = EpochCheckpoint(checkpoint_dir / "fold_01.npz", identity)
    fit(model, config, (images, masks), on_epoch=on_epoch, checkpoint=checkpoint)
    if checkpoint is not None:
        CHECKPOINT_COST.update(_checkpoint_cost(model, checkpoint))
    return seconds, threads


#: Size and save time of the last checkpointed side's checkpoint.
CHECKPOINT_COST: dict[str, float] = {}


def _checkpoint_cost(model: Any, checkpoint: Any) -> dict[str, float]:
    from trainer.checkpoint import EpochState

    state = EpochState(epoch=1, history=[], lr_drops=[], lr=1e-3)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        checkpoint.save(model, state)
        times.append(time.perf_counter() - started)
    return {"bytes": float(checkpoint.path.stat().st_size), "save_seconds": statistics.median(times)}


def main(argv: list[str] | None = None) -> None:
    args = _common.parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    run(args)


def run(args: argparse.Namespace) -> None:
    from trainer.config import CVConfig
    from trainer.data import prepare_dataset

    quick = args.quick
    encoder, size, batch, n, epochs = ("mobilenetv2", 64, 4, 16, 2) if quick else ("efficientnetb0", 128, 8, 64, 3)
    bare_name, plain_name, aug_name = (
        "bare model.fit (numpy in memory)",
        "segsweep fit (no augmentation)",
        "segsweep fit (paper augmentation)",
    )
    ckpt_name = "segsweep fit + epoch checkpoints (no augmentation)"
    # Full mode alternates the sides (A B C D A B D) so that load drifting on a shared machine hits all.
    order = (
        [bare_name, plain_name, ckpt_name]
        if quick
        else [bare_name, plain_name, aug_name, ckpt_name, bare_name, plain_name, ckpt_name]
    )
    with _common.temporary_dir("training") as tmp:
        root = _common.real_data(args)
        if root is None:
            root = _common.synthetic_dataset(tmp / "data", n, size=128)
        data = prepare_dataset(root, size, limit=n, cache_dir=tmp / "cache", progress=False)
        runs: list[tuple[str, list[float], dict[str, int]]] = []
        for name in order:
            config = CVConfig(
                encoder=encoder,
                weights="none",
                image_size=size,
                batch_size=batch,
                epochs=epochs,
                augment=name == aug_name,
                seed=0,
            )
            if name == bare_name:
                seconds, threads = bare_fit(config, data.images, data.masks)
            else:
                seconds, threads = segsweep_fit(
                    config, data.images, data.masks, tmp / "checkpoints" if name == ckpt_name else None
                )
            runs.append((name, seconds, threads))
            print(f"  {name}: epoch seconds {', '.join(f'{s:.1f}' for s in seconds)}", flush=True)

    rows = []
    rates: dict[str, list[float]] = {}
    for name, seconds, threads in runs:
        rate = len(data) / statistics.median(seconds[1:])
        rates.setdefault(name, []).append(rate)
        rows.append(
            [
                name,
                rate,
                statistics.median(seconds[1:]),
                seconds[0],
                threads["tf_intra_op"],
                threads["tf_inter_op"],
                threads["process_threads"],
            ]
        )
    median_rate = {name: statistics.median(values) for name, values in rates.items()}
    bare = median_rate[bare_name]
    print(
        f"data: {root} ({len(data)} pairs at {size} px), {encoder} unet, batch {batch}, {epochs} epochs "
        "(epoch 1 untimed); tf threads 0 = TensorFlow's default (one per core)"
    )
    print(
        _common.table(
            ["training path (in run order)", "images/s", "s/epoch", "epoch 1 s", "tf intra", "tf inter", "threads"],
            rows,
        )
    )
    for name, rate in median_rate.items():
        print(f"  {name}: median {rate:.2f} images/s = {rate / bare:.3f}x bare")
    ratio = median_rate[plain_name] / bare
    print(f"goal: segsweep fit >= 0.95x bare model.fit: {'holds' if ratio >= 0.95 else 'does NOT hold'} ({ratio:.3f}x)")
    with_checkpoints = median_rate[ckpt_name] / median_rate[plain_name]
    epoch_seconds = statistics.median(s for n, secs, _ in runs if n == plain_name for s in secs[1:])
    print(
        f"epoch checkpoint: {CHECKPOINT_COST['bytes'] / 2**20:.0f} MiB, saved in "
        f"{CHECKPOINT_COST['save_seconds']:.2f} s (median of 3); fit saving one after every epoch = "
        f"{with_checkpoints:.3f}x without, at {epoch_seconds:.1f} s per epoch (segsweep skips saves beyond "
        "2% of training time)"
    )
    _common.finish(
        NAME,
        args,
        ratio,
        {
            "data": str(root),
            "n_pairs": len(data),
            "encoder": encoder,
            "image_size": size,
            "batch_size": batch,
            "epochs": epochs,
            "runs": [{"side": name, "epoch_seconds": secs, "threads": threads} for name, secs, threads in runs],
            "median_images_per_second": median_rate,
            "checkpoint": {**CHECKPOINT_COST, "rate_with_over_without": with_checkpoints},
            "segsweep_threads_env": os.environ.get("SEGSWEEP_THREADS"),
            "goal": ">= 0.95",
            "goal_holds": ratio >= 0.95,
        },
    )


if __name__ == "__main__":
    main()
