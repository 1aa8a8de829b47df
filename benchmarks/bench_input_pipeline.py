"""Input pipeline: images/s segsweep's batches arrive at, against images/s the model trains at.

Three producers of training batches (augmented, batched, preprocessed float32) are timed alone:

* segsweep: ``trainer.training.BatchSource`` through its ``tf.data`` dataset (generator +
  prefetch), the way ``fit`` consumes it; also the bare generator;
* the paper's approach: a Python generator that, per image and epoch, reads the JPEG image and
  mask with cv2, resizes them, and applies one of ten augmentations with scipy.ndimage/numpy.

The consumer is the model's training step (same encoder, size and batch size) fed from tensors in
memory, so it never waits for data. Goal: segsweep's pipeline delivers at least 4x what the model
consumes, so data never starves training. Ratio: segsweep tf.data images/s / training images/s.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common
import numpy as np

NAME = "input_pipeline"


# --- the paper's approach -----------------------------------------------------------------------


def paper_generator(
    image_paths: list[Path], mask_paths: list[Path], size: int, batch_size: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches the way the paper's Keras generator made them: decode, resize, augment per image.

    Every epoch each JPEG is read and resized again, then gets one of ten outcomes (none, noise,
    blur, rotation, brightness, horizontal/vertical flip, horizontal/vertical shift, zoom) computed
    with scipy.ndimage on float arrays; pixels are scaled to 0..1.
    """
    import cv2
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    n = len(image_paths)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            xs, ys = [], []
            for i in order[start : start + batch_size]:
                raw_image = cv2.imread(str(image_paths[i]))
                raw_mask = cv2.imread(str(mask_paths[i]), cv2.IMREAD_GRAYSCALE)
                assert raw_image is not None and raw_mask is not None, image_paths[i]
                image = cv2.resize(raw_image, (size, size)).astype(np.float32)
                mask = cv2.resize(raw_mask, (size, size))
                mask = (mask > 127).astype(np.float32)[..., None]
                choice = int(rng.integers(10))
                if choice == 1:
                    image = image + rng.normal(0, 0.05 * 255, image.shape)
                elif choice == 2:
                    image = ndimage.gaussian_filter(image, sigma=(1, 1, 0))
                elif choice == 3:
                    angle = float(rng.uniform(-30, 30))
                    image = ndimage.rotate(image, angle, axes=(0, 1), reshape=False, order=1)
                    mask = ndimage.rotate(mask, angle, axes=(0, 1), reshape=False, order=0)
                elif choice == 4:
                    image = image + rng.uniform(-0.2, 0.2) * 255
                elif choice == 5:
                    image, mask = image[:, ::-1], mask[:, ::-1]
                elif choice == 6:
                    image, mask = image[::-1], mask[::-1]
                elif choice in (7, 8):
                    offset = float(rng.uniform(-0.15, 0.15)) * size
                    shift = (0, offset, 0) if choice == 7 else (offset, 0, 0)
                    image = ndimage.shift(image, shift, order=1)
                    mask = ndimage.shift(mask, shift, order=0)
                elif choice == 9:
                    factor = float(rng.uniform(1.1, 1.3))
                    image = ndimage.zoom(image, (factor, factor, 1), order=1)
                    mask = ndimage.zoom(mask, (factor, factor, 1), order=0)
                    top = (image.shape[0] - size) // 2
                    image = image[top : top + size, top : top + size]
                    mask = mask[top : top + size, top : top + size]
                xs.append(np.clip(image, 0, 255) / 255.0)
                ys.append(mask)
            yield np.asarray(xs, np.float32), np.asarray(ys, np.float32)


# --- measurements -------------------------------------------------------------------------------


def rate(batches: Iterator[Any], n_batches: int, batch_size: int, warmup: int = 2) -> float:
    """Images/s over ``n_batches`` batches after ``warmup`` batches (start-up excluded)."""
    for _ in itertools.islice(batches, warmup):
        pass
    started = time.perf_counter()
    for _ in itertools.islice(batches, n_batches):
        pass
    return n_batches * batch_size / (time.perf_counter() - started)


def training_rate(config: Any, images: np.ndarray, masks: np.ndarray, steps: int) -> float:
    """Images/s of the model's training step, fed from tensors in memory (never waits for data)."""
    import tensorflow as tf
    import tf_keras

    from trainer.models import build_model, compile_model, prepare_inputs

    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(0)
    model = build_model(config)
    compile_model(model, config)
    x = prepare_inputs(np.asarray(images[: config.batch_size * 4]), config.encoder)
    y = np.asarray(masks[: config.batch_size * 4], np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(config.batch_size, drop_remainder=True)
    data = data.cache().repeat()

    class EpochTimer(tf_keras.callbacks.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    timer = EpochTimer()
    # Epoch 1 traces the graph and warms up; epochs 2 and 3 are timed.
    model.fit(data, epochs=3, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return steps * config.batch_size / min(timer.seconds[1:])


def main(argv: list[str] | None = None) -> None:
    p = _common.parser(NAME, __doc__.splitlines()[0])
    args = p.parse_args(argv)
    run(args)


def run(args: argparse.Namespace) -> None:
    from trainer.config import CVConfig
    from trainer.data import index_dataset, prepare_dataset, select_stems
    from trainer.training import BatchSource

    quick = args.quick
    encoder, size, batch = ("mobilenetv2", 64, 4) if quick else ("efficientnetb0", 128, 8)
    n_batches = 6 if quick else 40
    train_steps = 3 if quick else 12
    with _common.temporary_dir("pipeline") as tmp:
        root = _common.real_data(args)
        if root is None:
            root = _common.synthetic_dataset(tmp / "data", 24 if quick else 200, size=128 if quick else 512)
        data = prepare_dataset(root, size, limit=None if quick else 200, cache_dir=tmp / "cache", progress=False)
        index = index_dataset(root)
        stems = select_stems(index, limit=None if quick else 200)
        indices = np.arange(len(data))

        source = BatchSource(data.images, data.masks, indices, batch_size=batch, encoder=encoder, augment=True, seed=0)
        generator_rate = rate(source.batches(), n_batches, batch)
        source = BatchSource(data.images, data.masks, indices, batch_size=batch, encoder=encoder, augment=True, seed=0)
        tfdata_rate = rate(iter(source.dataset(size)), n_batches, batch)
        plain = BatchSource(data.images, data.masks, indices, batch_size=batch, encoder=encoder, augment=False, seed=0)
        plain_rate = rate(iter(plain.dataset(size)), n_batches, batch)
        paper = paper_generator([index.images[s] for s in stems], [index.masks[s] for s in stems], size, batch, seed=0)
        paper_rate = rate(paper, n_batches, batch)

        config = CVConfig(encoder=encoder, weights="none", image_size=size, batch_size=batch)
        model_rate = training_rate(config, data.images, data.masks, train_steps)

    rows = [
        ["segsweep BatchSource via tf.data (augment)", tfdata_rate, tfdata_rate / model_rate],
        ["segsweep BatchSource generator alone (augment)", generator_rate, generator_rate / model_rate],
        ["segsweep BatchSource via tf.data (no augment)", plain_rate, plain_rate / model_rate],
        ["paper: cv2 read+resize, scipy augment per image", paper_rate, paper_rate / model_rate],
        [f"model training step ({encoder} unet, {size} px, batch {batch})", model_rate, 1.0],
    ]
    print(f"data: {root} ({len(data)} pairs at {size} px); {n_batches} batches of {batch} per producer")
    print(_common.table(["producer / consumer", "images/s", "x training"], rows))
    print(f"segsweep vs paper pipeline: {tfdata_rate / paper_rate:.2f}x")
    ratio = tfdata_rate / model_rate
    print(f"goal: segsweep pipeline >= 4x training rate: {'holds' if ratio >= 4 else 'does NOT hold'} ({ratio:.2f}x)")
    _common.finish(
        NAME,
        args,
        ratio,
        {
            "encoder": encoder,
            "image_size": size,
            "batch_size": batch,
            "n_batches": n_batches,
            "data": str(root),
            "n_pairs": len(data),
            "images_per_second": {
                "segsweep_tfdata_augment": tfdata_rate,
                "segsweep_generator_augment": generator_rate,
                "segsweep_tfdata_no_augment": plain_rate,
                "paper_generator": paper_rate,
                "model_training": model_rate,
            },
            "segsweep_vs_paper": tfdata_rate / paper_rate,
            "goal": ">= 4",
            "goal_holds": ratio >= 4,
        },
    )


if __name__ == "__main__":
    main()
