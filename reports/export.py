"""``segsweep export``: a model bundle as a TensorFlow SavedModel or ONNX file that serves on its own.

The exported graph takes what a camera or a PNG decoder gives: uint8 RGB images of the trained size
``(N, S, S, 3)``. Inside it runs the encoder's own preprocessing (segmentation-models'
``get_preprocessing``, traced into the graph, as trainer.models applies it in training), the model,
and the bundle's threshold, and returns::

    probabilities   float32 (N, S, S)  sigmoid foreground probability per pixel
    mask            uint8   (N, S, S)  1 where probability > threshold (0.5), else 0

Loading the export needs TensorFlow (SavedModel) or an ONNX runtime, never segmentation-models or
segsweep. Resizing stays outside the graph, as in ``segsweep predict``: resize each image to S x S with
area interpolation (``cv2.resize(img, (S, S), interpolation=cv2.INTER_AREA)``), and resize the
probabilities back to the image's size (bilinear) before thresholding them for a full-size mask.

Every export is checked before it is kept: the written file is loaded again and run on probe images.
The SavedModel runs TensorFlow's own kernels: its masks must equal the bundle's Keras model's. onnxruntime
sums in another order, and a trained network amplifies float32 rounding (measured on an efficientnetb0 U-Net
at 64 px: every node agrees within 1e-6 of its own inputs, yet the outputs drift apart by 7e-4, Keras' own
float32 output being 3.5e-3 from the exact one), so pixels whose probability is that close to the threshold
may flip either way, in Keras as in ONNX. The ONNX model is checked against the exact values (the same
weights in float64): it must be no farther from them than twice the Keras model's own float32 error (or
1e-4). A mismatch is an error, not a warning.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segsweep.base import version
from segsweep.base.env import created_folder_mode
from segsweep.base.errors import SegsweepError
from segsweep.base.files import (
    disk_full_as_error,
    ensure_new_folder,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
    writing_lock,
)
from trainer.bundle import CARD_FILE, ModelBundle, load_bundle, weights_bytes

if TYPE_CHECKING:
    import tensorflow as tf
    import tf_keras

EXPORT_FORMATS = ("savedmodel", "onnx")
#: Written beside the model: what it takes and returns, where it came from (read by people and tools).
EXPORT_FILE = "export.json"
ONNX_FILE = "model.onnx"
SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "mask")
#: ONNX opset tf2onnx targets (supported by onnxruntime 1.17 and later).
ONNX_OPSET = 17
#: How much farther from the exact (float64) probabilities the ONNX model may be than the Keras model's
#: own float32 output is, on the probe images; and the distance always allowed (a well-conditioned model's
#: float32 error is ~1e-7: both runtimes' is then far below any mask change).
ONNX_ERROR_RATIO = 2.0
ONNX_ERROR_FLOOR = 1e-4
#: Largest difference between the SavedModel's probabilities and the Keras model's on the probe images
#: (the same float32 graph; differences come only from the order of floating-point sums).
PROBABILITY_TOLERANCE = 1e-4
#: Probe images each export is checked on (random uint8 noise and flat images).
_PROBES = 4


class ExportError(SegsweepError):
    """An export that cannot be made or does not reproduce the bundle's masks."""


def export_bundle(bundle_dir: str | Path, out: str | Path, fmt: str) -> Path:
    """Export the bundle at ``bundle_dir`` as ``fmt`` into the new folder ``out``; return ``out``."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    bundle = load_bundle(bundle_dir)
    out = Path(out)
    ensure_new_folder(out, "export")
    if fmt == "onnx":
        _require_tf2onnx()

    module, model = _serving_module(bundle)
    # Written next to the destination and renamed at the end: an interrupted export leaves nothing under
    # its name, and the lock makes the next writer of ``out`` remove the staging folder a killed one left.
    with writing_lock(out) as target:
        ensure_new_folder(out, "export")  # again, holding the lock: another export may have finished since
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            # A full disk is one line with the export's size (about its weights and a graph); the staging goes.
            with disk_full_as_error(target.parent, weights_bytes(model) + (4 << 20)):
                if fmt == "savedmodel":
                    check = _write_savedmodel(module, model, bundle, staging)
                else:
                    check = _write_onnx(module, model, bundle, staging)
                write_json_atomic(staging / EXPORT_FILE, _description(bundle, fmt, check))
                write_text_atomic(staging / CARD_FILE, _card(bundle, fmt))
            staging.chmod(created_folder_mode())  # mkdtemp makes it owner-only: follow the umask like its files
            if target.exists():
                target.rmdir()  # checked empty above
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return out


def run_export_command(model: Path, out: Path, fmt: str) -> int:
    exported = export_bundle(model, out, fmt)
    check = json.loads((exported / EXPORT_FILE).read_text())["check"]
    print(f"wrote {fmt} export {exported} ({check['summary']})", file=sys.stderr)
    return 0


# --- the serving graph ------------------------------------------------------------------------------


def _serving_module(bundle: ModelBundle) -> tuple[tf.Module, tf_keras.Model]:
    """A tf.Module holding the model's variables and ``serve(images uint8) -> {probabilities, mask}``,
    and the bundle's Keras model it calls (for the checks)."""
    import tensorflow as tf
    import tf_keras

    tf_keras.backend.clear_session()
    model = bundle.load_model()  # float32 whatever the training ran in
    size = bundle.image_size
    threshold = bundle.threshold
    table, sources = preprocessing_table(bundle.config.encoder)

    module = tf.Module()
    # The variables are tracked by the module itself, not through the Keras model: saving a Keras
    # model would also serialise its layers for Keras (custom segmentation-models objects), which
    # loading without segmentation-models does not need.
    module.weights = list(model.weights)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT_NAME)])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        # The encoder's preprocessing as a lookup of each uint8 value: exactly predict's float32 numbers.
        index = tf.cast(images, tf.int32)
        x = tf.stack([tf.gather(table[:, j], index[..., k]) for j, k in enumerate(sources)], axis=-1)
        probabilities = tf.cast(model(x, training=False), tf.float32)[..., 0]
        mask = tf.cast(probabilities > threshold, tf.uint8)
        return {"probabilities": tf.identity(probabilities, name="probabilities"), "mask": mask}

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT_NAME)])
    def checked_serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        # A loaded SavedModel signature does not check its input's shape: a wrong size failed deep in
        # the decoder (TensorFlow's "ConcatOp : Dimension 1 in both shapes must be equal") and a batch
        # without its N axis aborted the whole process in a convolution. Checked first, in one line.
        given = tf.shape(images)
        # Padded so that the slice exists whatever the rank given; a rank other than 4 fails the size test.
        fits = tf.logical_and(
            tf.equal(tf.size(given), 4), tf.reduce_all(tf.equal(tf.pad(given, [[0, 4]])[1:4], [size, size, 3]))
        )
        check = tf.debugging.Assert(fits, [wrong_shape_message(size), given], summarize=8)
        with tf.control_dependencies([check]):
            return serve(tf.identity(images))

    # ONNX is converted from `serve`: onnxruntime checks the declared input shape itself, in one line.
    module.serve = serve
    module.checked_serve = checked_serve
    return module, model


def wrong_shape_message(size: int) -> str:
    """The start of the SavedModel's error for an input of the wrong shape (TensorFlow appends the shape given)."""
    return (
        f"images must be uint8 RGB of shape (N, {size}, {size}, 3), the trained size (export.json's input); "
        f"resize them to {size}x{size} first. Shape given:"
    )


def _probe_images(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (_PROBES, size, size, 3), dtype=np.uint8)
    images[1] = 0
    images[2] = 255
    return images


def _keras_outputs(model: tf_keras.Model, bundle: ModelBundle, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's probabilities and masks the way ``segsweep predict`` computes them at the trained size."""
    from trainer.metrics import binarize
    from trainer.training import predict_probabilities

    probabilities = predict_probabilities(model, images, bundle.config)
    return probabilities, binarize(probabilities, bundle.threshold).astype(np.uint8)


def preprocessing_table(encoder: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """The encoder's preprocessing of uint8 RGB as a table: (256, 3) float32 values and source channels.

    Every segmentation-models preprocessing maps each output channel j from one input channel
    ``sources[j]`` value by value (scaling, mean and std per channel, RGB to BGR for caffe-style
    encoders), so on uint8 input it is a lookup: ``out[..., j] = table[in[..., sources[j]], j]``. The
    table is made by the very function training and ``segsweep predict`` use, and checked to reproduce
    it exactly on random images; an encoder whose preprocessing were not such a lookup is refused.
    (keras-applications' own graph version of these functions caches one ImageNet mean for all modes in
    a global, so it gives caffe means to torch-style encoders traced after a caffe one.)
    """
    from trainer.models import prepare_inputs

    values = np.arange(256, dtype=np.uint8)
    outputs = []
    for k in range(3):
        probe = np.zeros((1, 256, 1, 3), np.uint8)
        probe[0, :, 0, k] = values
        outputs.append(prepare_inputs(probe, encoder)[0, :, 0, :])  # (256, 3)
    sources: list[int] = []
    for j in range(3):
        varying = [k for k in range(3) if np.ptp(outputs[k][:, j]) > 0]
        if len(varying) != 1:
            raise ExportError(f"the preprocessing of encoder {encoder} is not a per-channel function of uint8 "
                              "values; this encoder cannot be exported yet (report it)")  # fmt: skip
        sources.append(varying[0])
    table = np.stack([outputs[sources[j]][:, j] for j in range(3)], axis=1).astype(np.float32)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    looked_up = np.stack([table[images[..., k], j] for j, k in enumerate(sources)], axis=-1)
    if not np.array_equal(looked_up, prepare_inputs(images, encoder)):
        raise ExportError(f"the preprocessing of encoder {encoder} is not a per-channel lookup of uint8 values; "
                          "this encoder cannot be exported yet (report it)")  # fmt: skip
    return table, tuple(sources)


def _write_savedmodel(module: tf.Module, model: tf_keras.Model, bundle: ModelBundle, target: Path) -> dict[str, Any]:
    import tensorflow as tf

    tf.saved_model.save(module, str(target), signatures={SIGNATURE: module.checked_serve.get_concrete_function()})
    images = _probe_images(bundle.image_size)
    probabilities, expected = _keras_outputs(model, bundle, images)
    outputs = tf.saved_model.load(str(target)).signatures[SIGNATURE](**{INPUT_NAME: tf.constant(images)})
    got = outputs["mask"].numpy()
    gap = float(np.abs(outputs["probabilities"].numpy() - probabilities).max())
    differing = int((got != expected).sum())
    if differing or gap > PROBABILITY_TOLERANCE:
        raise ExportError(
            f"the SavedModel's masks differ from the bundle's in {differing} of {expected.size} pixels "
            f"(probabilities up to {gap:.2g} apart) on probe images; the export was not kept (report it)"
        )
    return {"probe_images": len(images), "differing_pixels": 0, "max_probability_gap": gap,
            "summary": f"masks equal to the bundle's on {len(images)} probe images, probabilities within "
                       f"{gap:.1g}"}  # fmt: skip


def _require_tf2onnx() -> None:
    try:
        import tf2onnx  # noqa: F401
    except ImportError:
        raise ExportError(
            "--format onnx needs tf2onnx and onnx: pip install -c constraints.txt -e '.[export]'"
        ) from None


def _write_onnx(module: tf.Module, model: tf_keras.Model, bundle: ModelBundle, target: Path) -> dict[str, Any]:
    import tensorflow as tf
    import tf2onnx

    size = bundle.image_size
    spec = (tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT_NAME),)
    try:
        # Converted in memory and written apart: a failed write is not reported as a failed conversion.
        proto, _ = tf2onnx.convert.from_function(module.serve, input_signature=spec, opset=ONNX_OPSET)
    except Exception as exc:  # tf2onnx raises bare Exceptions and ValueErrors from deep inside
        raise ExportError(f"tf2onnx {tf2onnx.__version__} could not convert the model: {exc}") from None
    name_batch_axis(proto)
    write_bytes_atomic(target / ONNX_FILE, proto.SerializeToString())
    images = _probe_images(size)
    probabilities, expected = _keras_outputs(model, bundle, images)
    try:
        import onnxruntime
    except ImportError:
        return {"probe_images": 0, "summary": "not checked: onnxruntime is not installed"}
    # onnxruntime warns about an attribute tf2onnx writes for resizes (harmless, not the user's concern).
    onnxruntime.set_default_logger_severity(3)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        str(target / ONNX_FILE), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images}), strict=True))
    check = onnx_check(
        exact_probabilities(model, bundle, images),
        probabilities,
        got[_onnx_output(names, "probabilities")],
        mask_iou(got[_onnx_output(names, "mask")], expected),
    )
    check["summary"] += f" (onnxruntime {onnxruntime.__version__})"
    return check


#: The name of the ONNX model's first (batch) axis, instead of the unk__NNN tf2onnx gives it.
BATCH_AXIS = "batch"


def name_batch_axis(proto: Any) -> None:
    """Call the batch axis of the ONNX model's inputs and outputs ``batch``, wherever it appears.

    tf2onnx names each unknown dimension of the signature ``unk__NNN`` (a new number for each input and
    output). The names are renamed throughout the graph (its value_info too), so that every tensor's
    first axis shows as the one batch axis it is.
    """
    graph = proto.graph
    renamed = {
        value.type.tensor_type.shape.dim[0].dim_param
        for value in [*graph.input, *graph.output]
        if value.type.tensor_type.shape.dim and value.type.tensor_type.shape.dim[0].dim_param
    }
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renamed:
                dim.dim_param = BATCH_AXIS


def exact_probabilities(model: tf_keras.Model, bundle: ModelBundle, images: np.ndarray) -> np.ndarray:
    """The model's probabilities on ``images`` computed in float64 with its weights: the exact values each
    float32 runtime (Keras', onnxruntime's) rounds away from in its own order of sums."""
    import tf_keras

    from trainer.models import build_model, prepare_inputs

    try:
        exact = build_model(replace(bundle.config, weights="none"), mixed_precision=False, dtype="float64")
        exact.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
        inputs = prepare_inputs(images, bundle.config.encoder).astype(np.float64)
        return np.asarray(exact(inputs, training=False))[..., 0]
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


def onnx_check(exact: np.ndarray, keras: np.ndarray, onnx: np.ndarray, iou: float) -> dict[str, Any]:
    """export.json's check of an ONNX model, or ExportError: its probabilities ``onnx`` must be no farther
    from the ``exact`` ones than ONNX_ERROR_RATIO times the ``keras`` model's (or ONNX_ERROR_FLOOR).

    So a mask pixel may differ from the bundle's only where both runtimes are within their rounding of the
    threshold; a conversion error (a shifted resize, wrong preprocessing) is orders of magnitude larger.
    ``iou`` (the masks' IoU with the bundle's) is recorded, not judged: near-threshold pixels decide it.
    """
    keras_error = float(np.abs(keras.astype(np.float64) - exact).max())
    onnx_error = float(np.abs(onnx.astype(np.float64) - exact).max())
    gap = float(np.abs(onnx - keras).max())
    allowed = max(ONNX_ERROR_RATIO * keras_error, ONNX_ERROR_FLOOR)
    if onnx_error > allowed:
        raise ExportError(
            f"the ONNX model's probabilities are up to {onnx_error:.2g} from the exact (float64) ones on probe "
            f"images, where the bundle's Keras model is within {keras_error:.2g} (at most {allowed:.2g} allowed; "
            f"mask IoU {iou:.5f} with the bundle's); the export was not kept (report it)"
        )
    return {"probe_images": len(exact), "iou": iou, "max_probability_gap": gap, "onnx_error": onnx_error,
            "keras_error": keras_error,
            "summary": f"probabilities within {onnx_error:.1g} of the exact ones (the bundle's Keras model: "
                       f"{keras_error:.1g}), mask IoU {iou:.5f} with the bundle's on {len(exact)} probe "
                       "images"}  # fmt: skip


def _onnx_output(names: list[str], wanted: str) -> str:
    """tf2onnx names outputs after the signature's keys (``mask``), sometimes with a suffix."""
    for name in names:
        if name == wanted or name.startswith(f"{wanted}:") or name.startswith(f"{wanted}_"):
            return name
    raise ExportError(f"the ONNX model has no {wanted!r} output (outputs: {', '.join(names)})")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary mask stacks as a whole (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


# --- what travels with the export -------------------------------------------------------------------


def _description(bundle: ModelBundle, fmt: str, check: dict[str, Any]) -> dict[str, Any]:
    size = bundle.image_size
    return {
        "format": fmt,
        "file": ONNX_FILE if fmt == "onnx" else ".",
        "segsweep_version": version(),
        "signature": SIGNATURE if fmt == "savedmodel" else None,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [None, size, size, 3],
                  "meaning": f"RGB images resized to {size}x{size} (area interpolation)"},
        "outputs": {
            "probabilities": {"dtype": "float32", "shape": [None, size, size],
                              "meaning": "sigmoid foreground probability per pixel"},
            "mask": {"dtype": "uint8", "shape": [None, size, size],
                     "meaning": f"1 where probability > {bundle.threshold}, else 0"},
        },
        "preprocessing": f"inside the graph: {bundle.meta.get('preprocessing', {}).get('function')}",
        "threshold": bundle.threshold,
        "check": check,
        "bundle": {"path": str(bundle.path.resolve()), "config": replace(bundle.config).to_dict(),
                   "source": bundle.source},
    }  # fmt: skip


def serving_instructions(fmt: str, size: int) -> list[str]:
    """The card's "Serving" section: how to load the export and feed it (one home for this text)."""
    resize = (
        f"Resize each RGB image to {size}x{size} first (`cv2.resize(rgb, ({size}, {size}), "
        "interpolation=cv2.INTER_AREA)`, as in training; OpenCV decodes BGR: convert with "
        "`cv2.cvtColor(img, cv2.COLOR_BGR2RGB)`). For a mask at the image's own size, resize `probabilities` "
        "back (bilinear) and threshold at 0.5, as `segsweep predict` does."
    )
    if fmt == "savedmodel":
        code = [
            "```python",
            "import tensorflow as tf",
            "serve = tf.saved_model.load('THIS_FOLDER').signatures['serving_default']",
            f"out = serve(images=tf.constant(batch))  # batch: uint8 (N, {size}, {size}, 3) RGB",
            "mask, probabilities = out['mask'].numpy(), out['probabilities'].numpy()  # (N, S, S)",
            "```",
        ]
    else:
        code = [
            "```python",
            "import onnxruntime as ort",
            f"session = ort.InferenceSession('THIS_FOLDER/{ONNX_FILE}')",
            f"probabilities, mask = session.run(['probabilities', 'mask'], {{'{INPUT_NAME}': batch}})"
            f"  # batch: uint8 (N, {size}, {size}, 3) RGB",
            "```",
        ]
    return [
        "## Serving",
        "",
        f"Exported by `segsweep export --format {fmt}` (segsweep {version()}). Input `{INPUT_NAME}`: uint8 RGB, "
        f"shape (N, {size}, {size}, 3); the encoder's preprocessing and the 0.5 threshold are inside the graph. "
        f"Outputs: `probabilities` float32 (N, {size}, {size}) and `mask` uint8 (N, {size}, {size}), 1 = "
        "foreground. No segmentation-models or segsweep needed to load it.",
        "",
        resize,
        "",
        *code,
        "",
    ]


def _card(bundle: ModelBundle, fmt: str) -> str:
    """The bundle's model card with a serving section for this export."""
    card_path = bundle.path / CARD_FILE
    card = card_path.read_text() if card_path.is_file() else f"# Model card\n\nExported from {bundle.path}.\n"
    return card.rstrip("\n") + "\n\n" + "\n".join(serving_instructions(fmt, bundle.image_size))
