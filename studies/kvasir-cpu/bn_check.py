"""The batch-norm trap, measured: validation IoU per epoch of an untrained encoder, scored three ways.

One split of a few hundred Kvasir-SEG pairs (default: the first 300 of medico2020_train, 200 train /
100 validation), 128 px, untrained encoder, bce_dice, batch 8, Adam 1e-3, constant learning rate
(no plateau rule, so the schedule cannot hide or cause anything). After every epoch the same weights
are scored (MedAI IoU at 0.5 on the validation images):

- ``moving``: inference mode with the moving statistics Keras kept during training (before the fix);
- ``reestimated``: inference mode after trainer.batchnorm re-estimated the statistics on training
  images (the fix; the moving statistics are put back afterwards so training is not altered);
- ``train_mode``: training-mode BN (each validation batch normalised by its own statistics).

A second run (``--variant momentum``) instead sets every BN layer's momentum from the step count
before training (the other candidate fix): ``min(built, 0.01 ** (1 / steps_per_epoch))``, so the
initial statistics weigh under 1% after one epoch; it reports ``moving`` only.

    python studies/kvasir-cpu/bn_check.py --data ../shared/data/kvasir-seg --encoder mobilenetv2 \
        --out /work/study/kvasir-cpu/bn_check/mobilenetv2.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import segsweep.base.env  # noqa: F401  (sets the Keras environment first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--encoder", default="mobilenetv2")
    parser.add_argument("--variant", choices=["reestimate", "momentum"], default="reestimate")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--n-val", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--split", default="medico2020_train")
    parser.add_argument("--bn-images", type=int, default=128, help="training images per re-estimation (the trainer's)")
    args = parser.parse_args()

    import tf_keras

    from trainer.batchnorm import batchnorm_layers, reestimate_batchnorm, reestimation_rows
    from trainer.config import CVConfig
    from trainer.data import prepare_dataset
    from trainer.metrics import medai_scores
    from trainer.models import model_for_fold, prepare_inputs
    from trainer.training import fit, predict_probabilities

    config = CVConfig(
        encoder=args.encoder, arch="unet", weights="none", loss="bce_dice", batch_size=8, lr=1e-3,
        epochs=args.epochs, image_size=args.image_size, folds=2, seed=0, bn_reestimate=False,
    )  # fmt: skip
    data = prepare_dataset(Path(args.data), config.image_size, split=args.split, limit=args.limit)
    order = np.random.default_rng(0).permutation(len(data))
    val_rows, train_rows = np.sort(order[: args.n_val]), np.sort(order[args.n_val :])
    val_images = np.asarray(data.images[val_rows])
    val_masks = np.asarray(data.masks[val_rows])[..., 0]
    model = model_for_fold(config)
    layers = batchnorm_layers(model)
    steps_per_epoch = int(np.ceil(len(train_rows) / config.batch_size))
    momenta = sorted({round(float(layer.momentum), 4) for layer in layers})
    if args.variant == "momentum":
        target = 0.01 ** (1 / steps_per_epoch)
        for layer in layers:
            layer.momentum = min(float(layer.momentum), target)
        # The training graph was traced with the built momenta: compile again so it sees the new ones.
        from trainer.models import compile_model

        compile_model(model, config)
    rows = reestimation_rows(train_rows, args.bn_images, seed=0)

    def iou() -> float:
        return float(medai_scores(val_masks, predict_probabilities(model, val_images, config))["mean_iou"])

    def train_mode_iou() -> float:
        saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
        probabilities = np.concatenate(
            [
                model(prepare_inputs(val_images[i : i + 8], config.encoder), training=True).numpy()[..., 0]
                for i in range(0, len(val_images), 8)
            ]
        )
        for layer, (mean, variance) in zip(layers, saved, strict=True):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        return float(medai_scores(val_masks, probabilities)["mean_iou"])

    epochs: list[dict[str, float]] = []

    def on_epoch(epoch: int, metrics: object) -> None:
        row: dict[str, float] = {"epoch": epoch, "loss": float(metrics["loss"]), "moving": iou()}  # type: ignore[index]
        if args.variant == "reestimate":
            row["train_mode"] = train_mode_iou()
            saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
            started = time.perf_counter()
            reestimate_batchnorm(
                model,
                (
                    prepare_inputs(np.asarray(data.images[rows[i : i + config.batch_size]]), config.encoder)
                    for i in range(0, len(rows), config.batch_size)
                ),
            )
            row["reestimate_seconds"] = time.perf_counter() - started
            row["reestimated"] = iou()
            for layer, (mean, variance) in zip(layers, saved, strict=True):
                layer.moving_mean.assign(mean)
                layer.moving_variance.assign(variance)
        row["epoch_seconds"] = float(metrics["seconds"])  # type: ignore[index]
        print(json.dumps(row), flush=True)
        epochs.append(row)

    tf_keras.utils.set_random_seed(1)
    fit(model, config, (data.images, data.masks), train_indices=train_rows, on_epoch=on_epoch, compile=False)
    result = {
        "encoder": args.encoder,
        "variant": args.variant,
        "built_momenta": momenta,
        "momentum_used": sorted({round(float(layer.momentum), 4) for layer in layers}),
        "steps_per_epoch": steps_per_epoch,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "bn_images": len(rows),
        "config": config.to_dict(),
        "epochs": epochs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
