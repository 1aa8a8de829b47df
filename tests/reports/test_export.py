"""segsweep export: SavedModel and ONNX exports reproduce `segsweep predict`'s masks without segmentation-models."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sweeps.cli import main
from tests.support import TINY_ENCODER
from tests.support.fake_sweep import FakeTrial, make_sweep

PARAMS = {"encoder": TINY_ENCODER, "weights": "none", "batch_size": 4, "lr": 1e-3}

# Run in a fresh interpreter: reads the test images as a user would (OpenCV, BGR -> RGB), feeds them to
# the export, saves the masks, and proves it never imported segmentation-models or segsweep.
_SERVE_SAVEDMODEL = """
import sys, cv2, numpy as np, tensorflow as tf
paths = sys.argv[3:]
batch = np.stack([cv2.cvtColor(cv2.imread(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths])
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = serve(images=tf.constant(batch))
np.save(sys.argv[2], out["mask"].numpy())
"""
_SERVE_ONNX = """
import sys, cv2, numpy as np, onnxruntime as ort
paths = sys.argv[3:]
batch = np.stack([cv2.cvtColor(cv2.imread(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths])
session = ort.InferenceSession(sys.argv[1] + "/model.onnx", providers=["CPUExecutionProvider"])
(mask,) = session.run(["mask"], {"images": batch})
np.save(sys.argv[2], mask)
"""
_CHECK_IMPORTS = """
banned = [m for m in sys.modules if m.split(".")[0] in
          ("segmentation_models", "classification_models", "efficientnet", "trainer", "sweeps", "reports")]
assert "segmentation_models" not in sys.modules and not banned, banned
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, kvasir_seg_dir: Path) -> Path:
    """A fabricated sweep's winner (the tests' tiny encoder, no pretrained weights, 64 px) retrained for one epoch."""
    root = tmp_path_factory.mktemp("export")
    make_sweep(root / "sweeps", "s", [FakeTrial(PARAMS, [0.7, 0.6], epochs=1)], data=kvasir_seg_dir, limit=None)
    out = root / "model"
    args = ["retrain", "s", "--storage", str(root / "sweeps"), "--out", str(out), "--quiet", "--mixed-precision", "off"]
    assert main(args) == 0
    runtime = json.loads((out / "config.json").read_text())["runtime"]  # how it trained is recorded
    assert runtime["mixed_precision"] == "off" and runtime["mixed_precision_enabled"] is False
    assert "Ran with mixed precision off (off as asked)" in (out / "README.md").read_text()
    return out


@pytest.fixture(scope="module")
def predicted(bundle: Path, kvasir_seg_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`segsweep predict`'s masks of the synthetic images (64x64: the trained size)."""
    out = tmp_path_factory.mktemp("predicted")
    assert main(["predict", str(bundle), "--images", str(kvasir_seg_dir / "images"), "--out", str(out)]) == 0
    return out / "masks"


def _serve_in_fresh_process(script: str, export: Path, images: list[Path], tmp_path: Path) -> np.ndarray:
    result = tmp_path / "masks.npy"
    # No segsweep environment either: the process is what a serving machine with TF or onnxruntime runs.
    subprocess.run(
        [sys.executable, "-c", script + _CHECK_IMPORTS, str(export), str(result), *map(str, images)],
        check=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    return np.load(result)


def _predict_masks(predicted: Path, images: list[Path]) -> np.ndarray:
    masks = [cv2.imread(str(predicted / f"{p.stem}.png"), cv2.IMREAD_GRAYSCALE) for p in images]
    return (np.stack(masks) > 127).astype(np.uint8)


@pytest.mark.slow
def test_savedmodel_reproduces_predict_without_segmentation_models(
    bundle: Path, predicted: Path, kvasir_seg_dir: Path, tmp_path: Path
) -> None:
    export = tmp_path / "savedmodel"
    killed = tmp_path / ".savedmodel.k1lled_0"  # the staging folder of an export that was killed
    killed.mkdir()
    (killed / "saved_model.pb").write_bytes(b"\0" * 1024)
    assert main(["export", str(bundle), "--format", "savedmodel", "--out", str(export)]) == 0
    assert not killed.exists(), "a killed export's staging folder stays forever"
    assert not list(tmp_path.glob(".savedmodel*")), "the lock file is removed on release"
    assert (export / "saved_model.pb").is_file() and (export / "variables").is_dir()
    description = json.loads((export / "export.json").read_text())
    assert description["input"] == {"name": "images", "dtype": "uint8", "shape": [None, 64, 64, 3],
                                    "meaning": "RGB images resized to 64x64 (area interpolation)"}  # fmt: skip
    assert description["threshold"] == 0.5 and description["check"]["differing_pixels"] == 0
    card = (export / "README.md").read_text()
    assert card.startswith((bundle / "README.md").read_text().rstrip("\n")) and "## Serving" in card
    assert "INTER_AREA" in card

    images = sorted((kvasir_seg_dir / "images").glob("*.jpg"))
    served = _serve_in_fresh_process(_SERVE_SAVEDMODEL, export, images, tmp_path)
    expected = _predict_masks(predicted, images)
    assert served.shape == expected.shape == (12, 64, 64) and served.dtype == np.uint8
    assert 0 < expected.sum() < expected.size, "a degenerate model (all one class) would prove nothing"
    assert np.array_equal(served, expected)


@pytest.mark.slow
def test_onnx_export_matches_predict(bundle: Path, predicted: Path, kvasir_seg_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tf2onnx", reason="the `export` extra is not installed")
    pytest.importorskip("onnxruntime", reason="the `export` extra is not installed")
    from reports.export import mask_iou

    export = tmp_path / "onnx"
    assert main(["export", str(bundle), "--format", "onnx", "--out", str(export)]) == 0
    assert sorted(p.name for p in export.iterdir()) == ["README.md", "export.json", "model.onnx"]
    assert json.loads((export / "export.json").read_text())["check"]["iou"] >= 0.999

    images = sorted((kvasir_seg_dir / "images").glob("*.jpg"))
    served = _serve_in_fresh_process(_SERVE_ONNX, export, images, tmp_path)
    expected = _predict_masks(predicted, images)
    assert served.shape == expected.shape
    assert mask_iou(served, expected) >= 0.999
    _assert_the_batch_axis_is_named_batch(export / "model.onnx", size=64)


def _assert_the_batch_axis_is_named_batch(model: Path, size: int) -> None:
    # tf2onnx named it unk__258 on the input, unk__259 and unk__260 on the outputs.
    import onnx

    graph = onnx.load(str(model)).graph
    axes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    assert axes == {"images": ["batch", size, size, 3], "probabilities": ["batch", size, size],
                    "mask": ["batch", size, size]}  # fmt: skip
    assert not [d.dim_param for v in graph.value_info for d in v.type.tensor_type.shape.dim if "unk__" in d.dim_param]


def test_every_encoders_preprocessing_is_an_exact_uint8_lookup() -> None:
    """The graph's table reproduces training's preprocessing bit for bit, for all 32 encoders."""
    from reports.export import preprocessing_table
    from trainer.config import ENCODERS
    from trainer.models import prepare_inputs

    images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    for encoder in ENCODERS:
        table, sources = preprocessing_table(encoder)
        looked_up = np.stack([table[images[..., k], j] for j, k in enumerate(sources)], axis=-1)
        assert np.array_equal(looked_up, prepare_inputs(images, encoder)), encoder
    assert preprocessing_table("vgg16")[1] == (2, 1, 0)  # caffe-style: BGR
    assert preprocessing_table("efficientnetb0")[1] == (0, 1, 2)


def test_export_refuses_what_is_not_a_bundle_or_a_used_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(tmp_path / "nowhere"), "--format", "savedmodel", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"bundle_format": 1, "config": PARAMS}))
    (fake / "weights.h5").write_bytes(b"")
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert main(["export", str(fake), "--format", "savedmodel", "--out", str(used)]) == 2
    err = capsys.readouterr().err
    assert "is not an empty folder" in err and err.count("\n") == 1
    assert (used / "keep.txt").read_text() == "mine"


# -- issue 21, case 14: the ONNX check judges rounding as rounding, on every encoder the built-in spaces search


def _builtin_encoder_sizes() -> list[tuple[str, int]]:
    """(encoder, image size) of every built-in search space: what a sweep's winner can be exported as."""
    from search_spaces import BUILTIN_SPACES, load_space

    pairs = set()
    for name in BUILTIN_SPACES:
        space = load_space(name)
        pairs |= {(encoder, space.fixed["image_size"]) for encoder in space.params["encoder"].choices}
    return sorted(pairs)


#: The reported case (efficientnetb0, 64 px) and a ResNet at 128 run by default; the rest with -m long.
_DEFAULT_ENCODER_SIZES = {("efficientnetb0", 64), ("resnet18", 128)}


def _untrained_bundle(root: Path, encoder: str, size: int) -> Path:
    from trainer.bundle import bundle_meta, write_bundle
    from trainer.config import CVConfig
    from trainer.models import build_model

    config = CVConfig.from_dict({"encoder": encoder, "weights": "none", "image_size": size}, source="test")
    model = build_model(config, mixed_precision=False)
    return write_bundle(root / "bundle", model, bundle_meta(config, data={}, source={}, seconds=0.0))


@pytest.mark.parametrize(
    "encoder,size",
    [pytest.param(e, s, marks=pytest.mark.slow if (e, s) in _DEFAULT_ENCODER_SIZES else pytest.mark.long)
     for e, s in _builtin_encoder_sizes()],
)  # fmt: skip
def test_onnx_export_passes_its_check_on_every_builtin_encoder(encoder: str, size: int, tmp_path: Path) -> None:
    """Untrained weights suffice: the check compares the ONNX model with the bundle's on the same weights."""
    pytest.importorskip("tf2onnx", reason="the `export` extra is not installed")
    pytest.importorskip("onnxruntime", reason="the `export` extra is not installed")
    from reports.export import export_bundle

    bundle = _untrained_bundle(tmp_path, encoder, size)
    saved = os.umask(0o077)  # segsweep's default: the export folder is private like its files
    try:
        export = export_bundle(bundle, tmp_path / "onnx", "onnx")
    finally:
        os.umask(saved)
    check = json.loads((export / "export.json").read_text())["check"]
    assert check["onnx_error"] <= max(2 * check["keras_error"], 1e-4), check
    assert stat.S_IMODE(export.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in export.iterdir()} == {0o600}


def test_onnx_check_tolerates_rounding_at_the_threshold_and_refuses_a_conversion_error() -> None:
    """Measured on a retrained efficientnetb0 U-Net at 64 px: Keras' float32 output is 3.5e-3 from the exact
    (float64) one, onnxruntime's 4.2e-3, 7e-4 apart; where the probabilities hug 0.5 (flat probe images) the
    masks then differ in many pixels though neither runtime is wrong (the old check, IoU >= 0.999 against
    Keras, refused such exports)."""
    from reports.export import ExportError, mask_iou, onnx_check

    rng = np.random.default_rng(0)
    exact = 0.5 + rng.uniform(-2e-3, 2e-3, (4, 64, 64))  # a flat image's interior: all near the threshold
    keras = (exact + rng.uniform(-3.5e-3, 3.5e-3, exact.shape)).astype(np.float32)
    onnx = (exact + rng.uniform(-4.2e-3, 4.2e-3, exact.shape)).astype(np.float32)
    iou = mask_iou(onnx > 0.5, keras > 0.5)
    assert iou < 0.999  # what the old rule refused
    check = onnx_check(exact, keras, onnx, iou)
    assert check["iou"] == iou and check["onnx_error"] <= 4.2e-3 and "exact ones" in check["summary"]
    shifted = np.roll(keras, 1, axis=2)  # e.g. a resize off by one pixel
    shifted[..., :8] = 0.9
    with pytest.raises(ExportError, match=r"from the exact \(float64\) ones .* not kept"):
        onnx_check(exact, keras, shifted, 0.5)


# -- issue 21, case 13: an export onto a full disk (a real tiny tmpfs: TensorFlow's own C++ writer fails)


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
                           capture_output=True)  # fmt: skip
    return probe.returncode == 0


@pytest.mark.slow
def test_export_onto_a_full_disk_says_so_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "probe").mkdir()
    if not _can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("needs root and unshare to mount a tiny tmpfs in a private mount namespace")
    bundle = _untrained_bundle(tmp_path, TINY_ENCODER, 64)
    full = tmp_path / "full"
    full.mkdir()
    room = max(64 << 10, (bundle / "weights.h5").stat().st_size // 2)  # room for half the weights
    command = (
        f"mount -t tmpfs -o size={room} tmpfs {full} && "
        f"{shlex.quote(sys.executable)} -c 'from sweeps.cli import main; raise SystemExit(main())' "
        f"export {bundle} --format savedmodel --out {full / 'x'}; echo rc=$?; ls -A {full}"
    )
    result = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("segsweep:")]
    assert len(lines) == 1, result.stderr
    assert re.match(rf"^segsweep: error: no space left on device on {full} \(needs ~[\d.]+ MB, [\d.]+ MB free\)",
                    lines[0]), lines[0]  # fmt: skip
    after = result.stdout[result.stdout.index("rc=") :].split()
    assert after == ["rc=2"], result.stdout  # exit 2, and nothing on the device: no export, no staging folder


def _readme_savedmodel_snippet() -> str:
    """The README's SavedModel serving snippet (the ```python block that loads runs/model-savedmodel)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "runs/model-savedmodel" in b]
    return snippet


@pytest.mark.slow
def test_savedmodel_refuses_a_wrong_size_in_one_line_and_the_readme_snippet_serves_it(tmp_path: Path) -> None:
    # Fed 96x96 images, a 64 px export failed inside the decoder with TensorFlow's "ConcatOp : Dimension 1
    # in both shapes must be equal"; the README's snippet hard-coded 256 px instead of reading export.json.
    import tensorflow as tf

    from reports.export import export_bundle

    export = export_bundle(_untrained_bundle(tmp_path, TINY_ENCODER, 64), tmp_path / "runs" / "model-savedmodel",
                           "savedmodel")  # fmt: skip
    serve = tf.saved_model.load(str(export)).signatures["serving_default"]
    for shape, shown in [((1, 96, 96, 3), "[1 96 96 3]"), ((2, 64, 64, 1), "[2 64 64 1]"), ((64, 64, 3), "[64 64 3]")]:
        with pytest.raises(tf.errors.InvalidArgumentError) as refused:
            serve(images=tf.constant(np.zeros(shape, np.uint8)))
        lines = [line for line in str(refused.value).splitlines() if "images must be" in line]
        assert len(lines) == 1 and "ConcatOp" not in str(refused.value), str(refused.value)
        assert "of shape (N, 64, 64, 3), the trained size" in lines[0] and lines[0].endswith(f"Shape given:] {shown}")
    assert serve(images=tf.constant(np.zeros((2, 64, 64, 3), np.uint8)))["mask"].shape == (2, 64, 64)

    # The README's snippet as a user runs it, beside runs/: it takes S from export.json.
    cv2.imwrite(str(tmp_path / "polyp.jpg"), np.full((90, 120, 3), 128, np.uint8))
    script = _readme_savedmodel_snippet() + "\nassert mask.shape == (64, 64) and mask.dtype == np.uint8, mask.shape\n"
    subprocess.run(
        [sys.executable, "-c", script + "import sys\n" + _CHECK_IMPORTS], check=True, timeout=600, cwd=tmp_path
    )
