"""segsweep export: SavedModel and ONNX exports reproduce `segsweep predict`'s masks without segmentation-models."""

from __future__ import annotations

import json
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
    assert main(["export", str(bundle), "--format", "savedmodel", "--out", str(export)]) == 0
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
