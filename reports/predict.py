"""``segsweep predict``: masks, overlays, counts and (with true masks) MedAI scores from a model bundle.

Each image is resized to the model's input size as in training (area interpolation), predicted,
and its probabilities are resized back to the image's original size (bilinear) before the 0.5
threshold, so masks and scores are at the original resolution, as MedAI scored them. Masks are
written as lossless PNG with values 0 and 255 (the paper saved JPEG, whose compression noise puts
other grey levels into a binary mask).

Flip test-time augmentation (``--tta``) averages the probabilities of the image as is, flipped
left-right, flipped up-down and flipped both ways (each flipped back); it is reported as its own row
and written to ``masks_tta/``.

A fold-model set (``segsweep cv --keep-models``, a sweep trial kept with ``--keep-models K``) is a
fold ensemble: each fold model's probabilities (with TTA: each model's flip average) are averaged
before the threshold, as nnU-Net does. ``--postprocess min-area,fill-holes`` adds a metrics row per
option (and one with all of them) computed on the thresholded masks at the original resolution
(reports.count.postprocess_mask); the masks with every option applied go to ``masks_postprocessed/``.

A prediction never writes into the data it reads: an ``--out`` that is, holds or lies inside
``--images``, ``--masks`` or a data set folder (one holding ``images/`` and ``masks/``) is refused.
It is written into a staging folder beside ``--out`` and renamed at the end, so ``--out`` only ever
holds one whole prediction; ``prediction.json`` says which (model, images) and stays ``running``
until the last file is written, so ``segsweep count`` refuses a killed prediction's masks. A
non-empty ``--out`` is refused unless it is this model's earlier prediction of the same images,
which is replaced whole (a rerun, e.g. with ``--tta``), never mixed with.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reports.count import (
    COUNT_COLUMNS,
    DEFAULT_MIN_AREA,
    POSTPROCESS_OPTIONS,
    CountedObject,
    check_min_area,
    count_objects,
    object_rows,
    postprocess_mask,
)
from segsweep.base.errors import ConfigError, DataError, SegsweepError
from segsweep.base.files import (
    disk_full_as_error,
    staged_folder,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
    writing_lock,
)
from sweeps.folder import SweepFolder, now, record_test_scores
from trainer.bundle import ModelBundle, load_bundles
from trainer.data import IMAGE_EXTENSIONS, image_files_by_stem
from trainer.decode import BadFileError, SoftEdges, not_masks_line, orientation_mismatch

#: Images per prediction batch (memory, not results, depends on it).
PREDICT_BATCH_SIZE = 8

#: A prediction's own record (model, images, state): ``running`` until its last file is written.
PREDICTION_FILE = "prediction.json"
COMPLETE_STATE, RUNNING_STATE = "complete", "running"

#: Everything a prediction writes at the top of ``--out``: a folder holding anything else is not replaced.
_OUTPUT_NAMES = frozenset(
    {"masks", "masks_tta", "masks_postprocessed", "overlays", "counts.csv", "metrics.json", "skipped.txt",
     PREDICTION_FILE}
)  # fmt: skip

#: Colours (BGR) of the overlay: predicted region tinted, predicted outline, true outline.
_FILL, _PREDICTED, _TRUE = (0, 220, 255), (0, 220, 255), (80, 220, 80)


@dataclass
class ImageResult:
    stem: str
    height: int
    width: int
    count: int
    objects: list[CountedObject]
    dice: float | None = None
    iou: float | None = None
    dice_tta: float | None = None
    iou_tta: float | None = None
    true_count: int | None = None
    count_tta: int | None = None
    #: Post-processed variants' (Dice, IoU) by row name, e.g. ``plain+min-area``.
    postprocessed: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class Prediction:
    results: list[ImageResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _files_by_stem(folder: Path, what: str) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist or is not a folder")
    found, others, nested, hidden = image_files_by_stem(folder)
    skipped = [
        (str(path), f"not an image file (extension not one of {', '.join(IMAGE_EXTENSIONS)})") for path in others
    ] + [(str(path), f"in a subfolder of {folder}: only the files directly in it are read") for path in nested]
    skipped += [(str(path), "a hidden file (its name starts with a dot): rename it without the dot") for path in hidden]
    return found, skipped


def _size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the file's header, or None when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
        return height, width
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _check_masks(images: dict[str, Path], masks: dict[str, Path], masks_dir: Path) -> None:
    """Raise with the stems that do not pair, masks that are not binary masks, and sizes that differ.

    Every mask is read with the reader training uses (cut short, label map, photo, gradient); the
    masks it binarises despite anti-aliased edges get one warning.
    """
    problems = []
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask:
        problems.append(f"{len(no_mask)} image(s) have no mask in {masks_dir} (e.g. {', '.join(no_mask[:5])})")
    if no_image:
        problems.append(f"{len(no_image)} mask(s) have no image (e.g. {', '.join(no_image[:5])})")
    if not problems:
        from trainer.data import read_mask

        soft_edges = SoftEdges()
        not_masks: list[BadFileError] = []
        for stem in sorted(images):
            image_size, mask_size = _size(images[stem]), _size(masks[stem])
            try:
                read_mask(masks[stem], soft_edges)
            except BadFileError as exc:
                not_masks.append(exc)
                continue
            turned = orientation_mismatch(images[stem], masks[stem])
            if turned:
                problems.append(turned.split("; ")[0])
            elif mask_size is None:
                problems.append(f"mask {masks[stem]} cannot be read")
            elif image_size is not None and image_size != mask_size:
                problems.append(
                    f"{images[stem].name} is {image_size[1]}x{image_size[0]} but its mask {masks[stem]} is "
                    f"{mask_size[1]}x{mask_size[0]}"
                )
        if not_masks:  # what is wrong with the masks themselves comes before how they pair
            raise DataError(f"{not_masks_line(not_masks, len(images), masks_dir)}; or predict without --masks")
        soft_edges.warn()
    if problems:
        raise DataError(
            "masks do not match images: " + "; ".join(problems[:5]) + ". Masks pair with images by file name "
            "without extension (images/a.jpg with masks/a.png) and have the image's size and EXIF orientation "
            "(save images upright without the tag, e.g. `mogrify -auto-orient`); fix the folders or predict "
            "without --masks"
        )


def _ensemble_average(
    models: Sequence[Any], batch: np.ndarray, bundle: ModelBundle, batch_size: int, tta: bool
) -> np.ndarray:
    """Mean over the models of their probabilities (flip-averaged each with ``tta``)."""
    from trainer.training import predict_probabilities

    total = np.zeros(batch.shape[:3], np.float32)
    for model in models:
        if tta:
            total += _flip_average(model, batch, bundle, batch_size)
        else:
            total += predict_probabilities(model, batch, bundle.config, batch_size=batch_size)
    return total / len(models)


def _flip_average(model: Any, batch: np.ndarray, bundle: ModelBundle, batch_size: int) -> np.ndarray:
    from trainer.training import predict_probabilities

    total = np.zeros(batch.shape[:3], np.float32)
    for axes in ((), (2,), (1,), (1, 2)):
        flipped = np.ascontiguousarray(np.flip(batch, axis=axes)) if axes else batch
        probabilities = predict_probabilities(model, flipped, bundle.config, batch_size=batch_size)
        total += np.flip(probabilities, axis=axes) if axes else probabilities
    return total / 4


def _overlay(image_rgb: np.ndarray, predicted: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """BGR overlay: predicted region tinted and outlined; true outline in green when known."""
    import cv2

    canvas = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    tinted = canvas.copy()
    tinted[predicted > 0] = _FILL
    canvas = cv2.addWeighted(canvas, 0.65, tinted, 0.35, 0)
    thickness = max(1, round(max(canvas.shape[:2]) / 300))
    contours, _ = cv2.findContours((predicted > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, _PREDICTED, thickness)
    if truth is not None:
        contours, _ = cv2.findContours((truth > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, _TRUE, thickness)
    return canvas


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    # Encoded in memory and written by Python: cv2.imwrite only returns False (libpng prints its own
    # line), which hides a full disk behind a guess; a write error now says what it is.
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise SegsweepError(f"OpenCV could not encode {path.name} as PNG (report it)")
    write_bytes_atomic(path, encoded.tobytes())


def predict_folder(
    bundles: ModelBundle | Sequence[ModelBundle],
    images_dir: Path,
    out: Path,
    *,
    masks_dir: Path | None = None,
    tta: bool = False,
    batch_size: int = PREDICT_BATCH_SIZE,
    min_area: float = DEFAULT_MIN_AREA,
    postprocess: Sequence[str] = (),
) -> Prediction:
    """Predict every readable image of ``images_dir`` into ``out``; score against ``masks_dir`` if given.

    Several bundles (one configuration, e.g. the folds of a cross-validation) predict as an ensemble.
    """
    import cv2

    from trainer.data import read_image, read_mask
    from trainer.metrics import binarize, medai_scores

    bundles = [bundles] if isinstance(bundles, ModelBundle) else list(bundles)
    bundle = bundles[0]

    images, skipped = _files_by_stem(images_dir, "images")
    masks: dict[str, Path] = {}
    if masks_dir is not None:
        masks, _ = _files_by_stem(masks_dir, "masks")
        _check_masks(images, masks, masks_dir)
    if not images:
        raise DataError(f"{images_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    folders = {"masks": out / "masks", "overlays": out / "overlays"}
    if tta:
        folders["masks_tta"] = out / "masks_tta"
    if postprocess:
        folders["masks_postprocessed"] = out / "masks_postprocessed"
    try:
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SegsweepError(f"cannot create {out}: {exc.strerror}; pass a writable --out") from None

    models = [b.load_model() for b in bundles]
    size = bundle.image_size
    prediction = Prediction(skipped=list(skipped))
    stems = sorted(images)
    for start in range(0, len(stems), batch_size):
        originals: list[tuple[str, np.ndarray]] = []
        for stem in stems[start : start + batch_size]:
            try:
                originals.append((stem, read_image(images[stem])))
            except BadFileError as exc:  # cut short (libjpeg would "recover" it with grey rows) or undecodable
                prediction.skipped.append((str(images[stem]), exc.problem))
        if not originals:
            continue
        batch = np.stack([cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) for _, img in originals])
        plain = _ensemble_average(models, batch, bundle, batch_size, tta=False)
        flipped = _ensemble_average(models, batch, bundle, batch_size, tta=True) if tta else None
        for i, (stem, image) in enumerate(originals):
            height, width = image.shape[:2]

            def at_original(probabilities: np.ndarray, h: int = height, w: int = width) -> np.ndarray:
                return cv2.resize(probabilities, (w, h), interpolation=cv2.INTER_LINEAR)

            probabilities = at_original(plain[i])
            predicted = binarize(probabilities, bundle.threshold).astype(np.uint8)
            _write_png(folders["masks"] / f"{stem}.png", predicted * 255)
            # Read and warned about (anti-aliased edges) by _check_masks already: a throwaway tally.
            truth = read_mask(masks[stem], SoftEdges()) if stem in masks else None
            _write_png(folders["overlays"] / f"{stem}.png", _overlay(image, predicted, truth))
            objects = count_objects(predicted, min_area)
            result = ImageResult(stem, height, width, len(objects), objects)
            if truth is not None:
                scores = medai_scores(truth[None], probabilities[None], bundle.threshold)
                result.dice, result.iou = float(scores["dice"][0]), float(scores["iou"][0])
                result.true_count = len(count_objects(truth, min_area))
            variants = {"plain": predicted}
            if flipped is not None:
                probabilities_tta = at_original(flipped[i])
                predicted_tta = binarize(probabilities_tta, bundle.threshold).astype(np.uint8)
                variants["tta"] = predicted_tta
                _write_png(folders["masks_tta"] / f"{stem}.png", predicted_tta * 255)
                result.count_tta = len(count_objects(predicted_tta, min_area))
                if truth is not None:
                    scores = medai_scores(truth[None], probabilities_tta[None], bundle.threshold)
                    result.dice_tta, result.iou_tta = float(scores["dice"][0]), float(scores["iou"][0])
            if postprocess:
                _write_png(
                    folders["masks_postprocessed"] / f"{stem}.png",
                    postprocess_mask(predicted, postprocess, min_area) * 255,
                )
                if truth is not None:
                    for base, mask in variants.items():
                        for options in postprocess_variants(postprocess):
                            processed = postprocess_mask(mask, options, min_area)
                            scores = medai_scores(truth[None], processed[None].astype(np.float32), 0.5)
                            name = "+".join([base, *options])
                            result.postprocessed[name] = (float(scores["dice"][0]), float(scores["iou"][0]))
            prediction.results.append(result)
    return prediction


def postprocess_variants(options: Sequence[str]) -> list[tuple[str, ...]]:
    """The metrics rows ``--postprocess`` asks for: each option alone, and all of them together."""
    ordered = tuple(o for o in POSTPROCESS_OPTIONS if o in options)
    variants: list[tuple[str, ...]] = [(option,) for option in ordered]
    if len(ordered) > 1:
        variants.append(ordered)
    return variants


def parse_postprocess(text: str | None) -> tuple[str, ...]:
    """``min-area,fill-holes`` -> the options, or one line naming the unknown ones."""
    if not text:
        return ()
    options = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(options) - set(POSTPROCESS_OPTIONS))
    if unknown:
        raise SegsweepError(
            f"--postprocess: unknown option(s) {', '.join(unknown)}; choose from {', '.join(POSTPROCESS_OPTIONS)} "
            "(comma-separated)"
        )
    return options


def _summary_row(variant: str, dice: Sequence[float], iou: Sequence[float]) -> dict[str, Any]:
    def std(values: Sequence[float]) -> float:
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    return {
        "variant": variant,
        "n_images": len(dice),
        "dice_mean": float(np.mean(dice)),
        "dice_std": std(dice),
        "iou_mean": float(np.mean(iou)),
        "iou_std": std(iou),
    }


def summarise_prediction(prediction: Prediction) -> dict[str, Any]:
    """metrics.json's rows (plain, tta), per-image scores and the counter's agreement with the truth."""
    scored = [r for r in prediction.results if r.dice is not None]
    rows = []
    if scored:
        rows.append(_summary_row("plain", [r.dice or 0.0 for r in scored], [r.iou or 0.0 for r in scored]))
        with_tta = [r for r in scored if r.dice_tta is not None]
        if with_tta:
            rows.append(
                _summary_row("tta", [r.dice_tta or 0.0 for r in with_tta], [r.iou_tta or 0.0 for r in with_tta])
            )
        names = list(scored[0].postprocessed)
        for name in names:
            rows.append(
                _summary_row(
                    name, [r.postprocessed[name][0] for r in scored], [r.postprocessed[name][1] for r in scored]
                )
            )
    counted = [r for r in prediction.results if r.true_count is not None]
    agree = sum(r.count == r.true_count for r in counted)
    return {
        "rows": rows,
        "count_agreement": {
            "rule": "predicted mask's count equals the true mask's count (same counter and min-area)",
            "agree": agree,
            "n_images": len(counted),
            "fraction": agree / len(counted) if counted else None,
        },
        "per_image": [
            {
                ("image" if k == "stem" else k): v
                for k, v in vars(r).items()
                if k != "objects" and v is not None and v != {}
            }
            for r in prediction.results
        ],
    }


def write_counts(path: Path, results: Sequence[ImageResult]) -> None:
    """counts.csv (reports.count's columns, one row per object); with true masks, each row also
    carries its image's ``true_count``."""
    import csv
    import io

    with_truth = any(r.true_count is not None for r in results)
    columns = [*COUNT_COLUMNS, *(["true_count"] if with_truth else [])]
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=columns)
    writer.writeheader()
    for r in results:
        for row in object_rows(r.stem, r.height, r.width, r.objects):
            writer.writerow({**row, "true_count": r.true_count} if with_truth else row)
    write_text_atomic(path, handle.getvalue())


@dataclass
class PredictionReport:
    """What :func:`predict` wrote and measured (metrics only where true masks were given)."""

    out: Path
    n_images: int
    seconds: float
    #: metrics.json's content (rows: plain, tta, post-processed; per-image scores; counts), or None.
    metrics: dict[str, Any] | None
    #: Images the model (or a fold of the ensemble) was trained on: their scores are not test scores.
    overlap_with_training: list[str]
    skipped: list[tuple[str, str]]
    #: Whether ``out`` held this model's earlier prediction of the same images, now replaced whole.
    replaced: bool = False
    #: Where the test scores were recorded for the sweep's report, or why they were not (with masks).
    recorded_in: Path | None = None
    not_recorded: str | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list((self.metrics or {}).get("rows", []))


def predict(
    model: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    masks: str | Path | None = None,
    tta: bool = False,
    batch_size: int = PREDICT_BATCH_SIZE,
    min_area: float = DEFAULT_MIN_AREA,
    postprocess: str | None = None,
) -> PredictionReport:
    """Predict a folder of images with a model bundle (or a fold ensemble: a cv or trial folder).

    Writes PNG masks, overlays and counts.csv into ``out``; with ``masks``, metrics.json (MedAI
    scoring at the original resolution) and the scores in the bundle's sweep folder for the report.
    """
    model_dir, images_dir, out = Path(model), Path(images), Path(out)
    masks_dir = Path(masks) if masks is not None else None
    if batch_size < 1:
        raise SegsweepError(f"--batch-size must be at least 1, got {batch_size}")
    check_min_area(min_area)
    options = parse_postprocess(postprocess)
    bundles = load_bundles(model_dir)
    bundle = bundles[0]
    check_out_outside_data(out, images_dir, masks_dir)
    identity = {"model": str(model_dir.resolve()), "images": str(images_dir.resolve())}
    with writing_lock(out) as target:
        replaced = check_replaceable(out, target, identity)
        with staged_folder(target) as staging:
            record = {**identity, "masks": str(masks_dir.resolve()) if masks_dir else None, "tta": tta,
                      "postprocess": list(options), "pid": os.getpid(), "started": now()}  # fmt: skip
            write_json_atomic(staging / PREDICTION_FILE, {**record, "state": RUNNING_STATE})
            started = time.perf_counter()
            with disk_full_as_error(target, lambda: _estimated_output_bytes(staging, images_dir)):
                prediction = predict_folder(
                    bundles, images_dir, staging, masks_dir=masks_dir, tta=tta, batch_size=batch_size,
                    min_area=min_area, postprocess=options,
                )  # fmt: skip
                write_counts(staging / "counts.csv", prediction.results)
            seconds = time.perf_counter() - started
            summary = summarise_prediction(prediction)
            trained_on = set().union(*(b.train_stems() for b in bundles))
            overlap = sorted({r.stem for r in prediction.results} & trained_on)
            metrics = None
            if masks_dir is not None:
                metrics = {
                    "model": identity["model"],
                    "trial": bundle.source.get("trial"),
                    # What the model is, kept with its scores (the bundle may move): the report pairs
                    # two predictions of one test set by the configurations they were trained with.
                    "config": bundle.config.to_dict(),
                    "source": {k: bundle.source.get(k) for k in ("sweep", "sweep_path", "trial", "number")},
                    "ensemble": [str(b.path.resolve()) for b in bundles] if len(bundles) > 1 else None,
                    "postprocess": list(options),
                    "images": identity["images"],
                    "masks": str(masks_dir.resolve()),
                    "out": str(target),
                    "threshold": bundle.threshold,
                    "resolution": "original (probabilities resized to each image's size, then thresholded)",
                    "scoring": "MedAI 2021: per image Dice and IoU, empty truth inverted, mean over images; "
                    "std with ddof=1",
                    "min_area": min_area,
                    **summary,
                    "overlap_with_training": overlap,
                    "skipped": [{"file": f, "reason": why} for f, why in prediction.skipped],
                    "seconds": seconds,
                }
                write_json_atomic(staging / "metrics.json", metrics)
            if prediction.skipped:
                write_text_atomic(
                    staging / "skipped.txt", "".join(f"{name}\t{why}\n" for name, why in prediction.skipped)
                )
            # Last: until this is written the folder is a part of a prediction (count refuses it).
            write_json_atomic(staging / PREDICTION_FILE, {**record, "state": COMPLETE_STATE, "finished": now(),
                                                          "n_images": len(prediction.results)})  # fmt: skip
    report = PredictionReport(out, len(prediction.results), seconds, metrics, overlap, list(prediction.skipped),
                              replaced=replaced)  # fmt: skip
    if metrics is not None:
        if len(bundles) == 1:
            report.recorded_in, report.not_recorded = _record(bundle, metrics)
        else:
            report.not_recorded = "a fold ensemble's scores are not a retrained model's, so no report shows them"
    return report


def check_out_outside_data(out: Path, images_dir: Path, masks_dir: Path | None) -> None:
    """Refuse an ``--out`` that is, holds or lies inside ``--images``, ``--masks`` or a data set folder.

    `predict --out D` with ``D/masks`` as ``--masks`` wrote its PNG masks over the true ones and then
    scored them against themselves (Dice 1.0); JPEG masks got predictions beside them. Paths are
    compared resolved (relative paths, symlinks).
    """
    target = out.resolve()
    fix = "pass an --out outside the data (predictions there overwrite or mix with the true masks)"
    for folder in (target, *target.parents):
        if (folder / "images").is_dir() and (folder / "masks").is_dir():
            relation = "is" if folder == target else "lies inside"
            raise ConfigError(
                f"--out {out} {relation} the data set folder {folder} (it holds images/ and masks/); {fix}"
            )
    for option, given in (("--images", images_dir), ("--masks", masks_dir)):
        if given is None:
            continue
        source = given.resolve()
        if target == source:
            relation = "is"
        elif source in target.parents:
            relation = "lies inside"
        elif target in source.parents:
            relation = "holds"
        else:
            continue
        raise ConfigError(f"--out {out} {relation} the {option} folder {given}; {fix}")


def read_prediction_record(folder: Path) -> dict[str, Any] | None:
    """``folder``'s prediction.json, or None when there is none (or it cannot be read)."""
    try:
        record = json.loads((folder / PREDICTION_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_replaceable(out: Path, target: Path, identity: dict[str, str]) -> bool:
    """Whether ``out`` holds this model's earlier prediction of the same images (to replace whole).

    Absent or empty: False. Anything else (a foreign file, another model's or images' prediction) is
    refused: a second prediction beside the first would be counted and read with it.
    """
    if not target.exists():
        return False
    if not target.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; pass a new folder for the prediction")
    names = sorted(p.name for p in target.iterdir())
    if not names:
        return False
    record = read_prediction_record(target)
    foreign = [name for name in names if name not in _OUTPUT_NAMES]
    if record is None or foreign:
        example = (foreign or names)[0]
        raise ConfigError(
            f"--out {out} is not empty and is not a segsweep prediction (it holds {example}); predict into a "
            "new or empty folder: nothing already there is overwritten"
        )
    if {key: record.get(key) for key in identity} != identity:
        raise ConfigError(
            f"--out {out} holds a prediction of {record.get('model')} on {record.get('images')}; predict into a "
            "new --out (masks beside it would be counted with its own), or remove that folder to replace it"
        )
    return True


def unfinished_prediction(folder: Path) -> str | None:
    """Why ``folder`` (a prediction or its masks folder) is not a whole prediction, or None if it is
    one or is no prediction: a killed ``predict`` leaves its staging folder with a ``running`` record."""
    for candidate in (folder, folder.parent):
        record = read_prediction_record(candidate)
        if record is not None and record.get("state") != COMPLETE_STATE:
            return (
                f"{folder} is part of an unfinished prediction ({candidate / PREDICTION_FILE} says "
                f"{record.get('state')!r}: started {record.get('started')} by pid {record.get('pid')}, killed or "
                "still running); rerun the `segsweep predict` command and count its --out"
            )
    return None


def _estimated_output_bytes(out: Path, images_dir: Path) -> int | None:
    """What a whole prediction into ``out`` takes, from what its images written so far take each."""
    done = len(list((out / "masks").glob("*.png")))
    if not done:
        return None
    used = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    return used * len(image_files_by_stem(images_dir)[0]) // done


def run_predict_command(
    model_dir: Path,
    images_dir: Path,
    masks_dir: Path | None,
    out: Path,
    *,
    tta: bool = False,
    batch_size: int = PREDICT_BATCH_SIZE,
    min_area: float = DEFAULT_MIN_AREA,
    postprocess: str | None = None,
) -> int:
    """`segsweep predict`: :func:`predict`, then what it measured in a few lines."""
    report = predict(
        model_dir,
        images_dir,
        out,
        masks=masks_dir,
        tta=tta,
        batch_size=batch_size,
        min_area=min_area,
        postprocess=postprocess,
    )
    if report.overlap_with_training:
        overlap = report.overlap_with_training
        print(
            f"segsweep: warning: {len(overlap)} of these images were among the model's training images "
            f"(e.g. {', '.join(overlap[:3])}); their scores are not test scores",
            file=sys.stderr,
        )
    replaced = " (replacing its earlier prediction of the same model and images)" if report.replaced else ""
    print(f"predicted {report.n_images} image(s) into {out} in {report.seconds:.1f} s{replaced}")
    for row in report.rows:
        print(
            f"{row['variant']:>5}: Dice {row['dice_mean']:.4f} ± {row['dice_std']:.4f}, "
            f"IoU {row['iou_mean']:.4f} ± {row['iou_std']:.4f} over {row['n_images']} images"
        )
    agreement = (report.metrics or {}).get("count_agreement") or {}
    if agreement.get("n_images"):
        print(f"count: predicted equals true count for {agreement['agree']}/{agreement['n_images']} images")
    if report.recorded_in is not None:
        print(f"recorded the test scores for the sweep's report in {report.recorded_in}")
    elif report.not_recorded:
        print(f"test scores not recorded for a sweep report: {report.not_recorded}")
    if report.skipped:
        print(f"segsweep: skipped {len(report.skipped)} file(s):", file=sys.stderr)
        for name, why in report.skipped:
            print(f"  {name}: {why}", file=sys.stderr)
    return 0


def _record(bundle: ModelBundle, metrics: dict[str, Any]) -> tuple[Path | None, str | None]:
    """Leave the scores in the bundle's sweep folder for the report's Table 2 (when it is here).

    Returns the record's path, or why there is none.
    """
    source = bundle.source
    sweep_path = Path(str(source.get("sweep_path", "")))
    if not source.get("trial"):
        return None, f"the model {bundle.path} names no sweep trial it was retrained from"
    if not SweepFolder(sweep_path).exists():
        return None, f"the model's sweep folder {sweep_path} is not here"
    summary = {k: metrics[k] for k in ("model", "images", "masks", "out", "rows")}
    summary["n_overlap_with_training"] = len(metrics["overlap_with_training"])
    try:
        return record_test_scores(sweep_path, str(source["trial"]), summary), None
    except OSError as exc:
        return None, f"could not write in {sweep_path} ({exc.strerror})"
