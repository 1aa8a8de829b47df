"""--mixed-precision and --threads (resolved, recorded, reaching sweep trials) and --verbose (TF start-up lines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segsweep.base.errors import ConfigError
from sweeps.runner import run_sweep
from tests.support import TINY_ENCODER
from tests.support.ray import tiny_sweep_spec
from trainer import models

REPO = Path(__file__).resolve().parents[2]
#: Lines of TensorFlow's native start-up that users must not see unless they ask (--verbose).
NOISE_MARKERS = ("cuInit", "oneDNN")


@pytest.fixture
def fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test configures TensorFlow's settings anew; later tests get float32 models again."""
    monkeypatch.setattr(models, "_runtime", None)
    monkeypatch.setattr(models, "_resolved", None)
    for name in (models.MIXED_PRECISION_ENV, models.THREADS_ENV):
        monkeypatch.delenv(name, raising=False)
    yield
    import tf_keras

    tf_keras.mixed_precision.set_global_policy("float32")


def test_auto_is_float16_only_when_every_visible_gpu_has_tensor_cores() -> None:
    assert models.resolve_mixed_precision("auto", []) == ("float32", "auto: no GPU visible")
    assert models.resolve_mixed_precision("auto", [(8, 0), (7, 0)])[0] == "mixed_float16"
    assert models.resolve_mixed_precision("auto", [(8, 0), (6, 1)]) == (
        "float32", "auto: GPU compute capability 8.0, 6.1, below 7.0 on some GPU")  # fmt: skip
    assert models.resolve_mixed_precision("auto", [None])[0] == "float32"
    assert models.resolve_mixed_precision("on", [])[0] == "mixed_float16"
    assert models.resolve_mixed_precision("off", [(9, 0)]) == ("float32", "off as asked")


def test_auto_is_bfloat16_on_a_cpu_that_has_it_and_a_gpu_decides_where_one_is_visible() -> None:
    assert models.resolve_mixed_precision("auto", [], cpu_bf16=True) == (
        "mixed_bfloat16", "auto: no GPU visible, the CPU has native bfloat16")  # fmt: skip
    assert models.resolve_mixed_precision("auto", [(8, 0)], cpu_bf16=True)[0] == "mixed_float16"
    assert models.resolve_mixed_precision("auto", [(6, 1)], cpu_bf16=True)[0] == "float32"
    assert models.resolve_mixed_precision("bf16", [], cpu_bf16=True) == ("mixed_bfloat16", "bf16 as asked")
    assert "no native bfloat16" in models.resolve_mixed_precision("bf16", [])[1]
    assert models.resolve_mixed_precision("off", [], cpu_bf16=True)[0] == "float32"


def test_native_bfloat16_is_read_from_the_cpu_flags() -> None:
    assert models.cpu_has_bf16("processor : 0\nflags : fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert models.cpu_has_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert not models.cpu_has_bf16("flags : fpu avx2 avx512f avx512_vnni\n")
    assert not models.cpu_has_bf16("")  # no flags line (not Linux): auto stays float32


def test_recorded_precisions_read_back_and_repeat() -> None:
    old_float16 = {"threads": 1, "mixed_precision_enabled": True}  # written before bfloat16 existed
    bf16 = {"threads": None, "mixed_precision_enabled": True, "mixed_precision_policy": "mixed_bfloat16"}
    assert models.recorded_policy(old_float16) == "mixed_float16" and models.precision_label(old_float16) == (
        "on (float16)")  # fmt: skip
    assert models.recorded_runtime_options(bf16, "best.json") == (0, "bf16")
    assert models.recorded_runtime_options(old_float16, "best.json") == (1, "on")
    assert models.precision_label({"mixed_precision_enabled": False}) == "off"


def test_bad_values_are_one_line_errors_naming_the_fix() -> None:
    assert models.check_mixed_precision("ON") == "on" and models.check_mixed_precision("1") == "on"
    assert models.check_mixed_precision("bfloat16") == "bf16"
    with pytest.raises(ConfigError, match="choose one of auto, on, bf16, off"):
        models.check_mixed_precision("fp16")
    assert models.check_threads(0) is None and models.check_threads("4") == 4
    with pytest.raises(ConfigError, match="SEGSWEEP_THREADS"):
        models.check_threads("many")
    with pytest.raises(ConfigError, match="0"):
        models.check_threads(-1)


def test_sweep_options_are_checked_before_ray(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from sweeps.cli import main

    args = ["sweep", "run", "--data", str(tmp_path), "--space", "quick", "--trials", "1", "--name", "x",
            "--storage", str(tmp_path / "s"), "--threads", "-2"]  # fmt: skip
    assert main(args) == 2
    assert "threads must be 0" in capsys.readouterr().err


def test_cpu_auto_resolves_off_and_on_builds_a_float32_output_model(fresh_runtime: None) -> None:
    import tensorflow as tf

    from trainer.config import CVConfig

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: auto depends on its compute capability")
    settings = models.configure_tensorflow()
    bf16 = models.cpu_has_bf16() and models.AUTO_BF16_ON_CPU
    assert settings.mixed_precision == "auto" and settings.mixed_precision_enabled is bf16
    assert settings.mixed_precision_reason == (
        "auto: no GPU visible, the CPU has native bfloat16" if bf16 else "auto: no GPU visible"
    )
    assert models.configure_tensorflow() is settings  # fit() calls it again: the settings stand

    on = models.configure_tensorflow(mixed_precision="on")
    assert on.mixed_precision_enabled and on.to_dict()["mixed_precision"] == "on"
    config = CVConfig(encoder=TINY_ENCODER, weights="none", image_size=32)
    model = models.build_model(config)
    assert model.layers[-1].name == "output_float32" and model.output.dtype == tf.float32
    assert any(layer.compute_dtype == "float16" for layer in model.layers)
    # Prediction (bundles) builds float32 whatever the setting.
    assert all(layer.compute_dtype == "float32" for layer in models.build_model(config, mixed_precision=False).layers)


def _user_env() -> dict[str, str]:
    """The environment of a user's shell: none of the variables segsweep sets for itself."""
    env = dict(os.environ)
    for name in (
        "TF_CPP_MIN_LOG_LEVEL",
        "_SEGSWEEP_TF_LOG_LEVEL_SET",
        "SEGSWEEP_VERBOSE",
        "TF_USE_LEGACY_KERAS",
        "SM_FRAMEWORK",
        models.MIXED_PRECISION_ENV,
        models.THREADS_ENV,
    ):
        env.pop(name, None)
    return env


def _segsweep_cv(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [str(Path(sys.executable).with_name("segsweep")), "cv", "--data", str(data), "--out", str(out), "--encoder",
            TINY_ENCODER, "--weights", "none", "--epochs", "1", "--folds", "2", "--limit", "4", "--batch-size", "2",
            "--image-size", "64", "--tracker", "none", *extra]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=REPO, env=_user_env(), check=False)


@pytest.mark.slow
def test_cv_records_the_options_and_hides_tensorflow_startup_lines(kvasir_seg_dir: Path, tmp_path: Path) -> None:
    # "off", not "on": float16 on a CPU takes minutes even here (its loss-scaled train step traces
    # a finiteness check per variable); "on" reaching the model and the trials is tested above and below.
    quiet = _segsweep_cv(kvasir_seg_dir, tmp_path / "a", "--mixed-precision", "off", "--threads", "1")
    assert quiet.returncode == 0, quiet.stderr
    noisy = [line for line in quiet.stderr.splitlines() if any(m in line for m in NOISE_MARKERS)]
    assert noisy == []
    runtime = json.loads((tmp_path / "a" / "cv.json").read_text())["runtime"]
    assert runtime["mixed_precision"] == "off" and runtime["mixed_precision_enabled"] is False
    assert runtime["threads"] == 1 and runtime["gpus"] == []
    assert runtime["inter_op_threads"] == 1 and set(runtime["versions"]) >= {"tensorflow", "segmentation-models"}
    assert "runtime: mixed precision off (off as asked), TensorFlow threads 1" in quiet.stdout

    # The README's rerun of a winner: its best.json carries the runtime, which `cv --config` applies
    # (a sweep's trials ran with --threads 1; this process would default to one thread per core).
    cv = json.loads((tmp_path / "a" / "cv.json").read_text())
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"config": cv["config"], "runtime": cv["runtime"]}))
    rerun = _segsweep_cv(kvasir_seg_dir, tmp_path / "r", "--config", str(best))
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads((tmp_path / "r" / "cv.json").read_text())
    assert again["runtime"]["threads"] == 1 and "warning" not in rerun.stderr
    assert [f["dice"] for f in again["folds"]] == [f["dice"] for f in cv["folds"]]


@pytest.mark.slow
@pytest.mark.long  # a second whole `segsweep cv` process; the quiet half above runs in CI
def test_verbose_cv_shows_tensorflow_startup_lines(kvasir_seg_dir: Path, tmp_path: Path) -> None:
    verbose = _segsweep_cv(kvasir_seg_dir, tmp_path / "b", "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert json.loads((tmp_path / "b" / "cv.json").read_text())["runtime"]["mixed_precision_reason"] == (
        "auto: no GPU visible, the CPU has native bfloat16"
        if models.cpu_has_bf16() and models.AUTO_BF16_ON_CPU
        else "auto: no GPU visible"
    )
    if not any(m in verbose.stderr for m in NOISE_MARKERS):
        pytest.skip("TensorFlow prints no oneDNN or cuInit line on this machine, even with --verbose")
    assert "oneDNN" in verbose.stderr or "cuInit" in verbose.stderr


# --- the options reach a sweep's trials (on a real local Ray, with the stand-in cross-validation) ---------


def runtime_recording_cv(config: Any, data: Any, out_dir: str | Path, reporter: Any = None, **kwargs: Any) -> Any:
    """The stand-in cross-validation, writing the TensorFlow settings the trial runs with first."""
    import tensorflow as tf

    from tests.support import fake_cv as fake
    from trainer.models import runtime_settings

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    recorded = {**runtime_settings().to_dict(), "intra_op": tf.config.threading.get_intra_op_parallelism_threads()}
    (Path(out_dir) / "runtime.json").write_text(json.dumps(recorded))
    return fake.fake_run_cv(config, data, out_dir, reporter, **kwargs)


@pytest.mark.slow
def test_sweep_run_options_reach_the_trials(tmp_path: Path, local_ray: None) -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec = tiny_sweep_spec(tmp_path, "mp", {"fold_seconds": 0.1}, trials=1, concurrency=1, scheduler="none",
                  mixed_precision="on", threads=1)  # fmt: skip
    outcome = run_sweep(spec, cv_runner=runtime_recording_cv)
    assert outcome.finished
    recorded = json.loads(next((tmp_path / "out" / "mp" / "trials").glob("*/runtime.json")).read_text())
    assert recorded["mixed_precision"] == "on" and recorded["mixed_precision_enabled"] is True
    assert recorded["threads"] == 1 == recorded["intra_op"]
    sweep_json = json.loads((tmp_path / "out" / "mp" / "sweep.json").read_text())
    assert sweep_json["mixed_precision"] == "on" and sweep_json["threads"] == 1


def test_reset_optimizer_puts_the_loss_scale_back(fresh_runtime: None) -> None:
    """A fold after another one in the same process starts from a fresh process's loss scale (issue 21, case 4)."""
    import tf_keras

    from trainer.config import CVConfig

    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    inputs = tf_keras.Input((4,))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(1, dtype="float32")(tf_keras.layers.Dense(3)(inputs)))
    models.compile_model(model, CVConfig())
    optimizer = model.optimizer
    assert isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    initial = float(optimizer.loss_scale.numpy())
    optimizer._loss_scale.current_loss_scale.assign(4.0)  # where a previous fold's training left it
    optimizer.dynamic_counter.assign(7)
    models.reset_optimizer(model, 1e-3)
    assert float(optimizer.loss_scale.numpy()) == initial and int(optimizer.dynamic_counter.numpy()) == 0


def test_random_layers_draw_from_the_seed_and_the_epoch_alone(fresh_runtime: None) -> None:
    import numpy as np
    import tf_keras

    tf_keras.backend.experimental.enable_tf_random_generator()  # as build_model does, for a tiny model
    inputs = tf_keras.Input((64,))
    model = tf_keras.Model(inputs, tf_keras.layers.Dropout(0.5)(inputs))
    ones = np.ones((1, 64), np.float32)

    def draw(seed: int, epoch: int) -> np.ndarray:
        assert models.reseed_random_layers(model, seed, epoch) == 1
        return np.asarray(model(ones, training=True))

    first = draw(0, 3)
    model(ones, training=True)  # what a previous fold or epoch drew
    assert np.array_equal(draw(0, 3), first)
    assert not np.array_equal(draw(0, 4), first) and not np.array_equal(draw(1, 3), first)


def _best_json(tmp_path: Path, runtime: dict[str, Any]) -> Path:
    best = tmp_path / "best.json"
    config = {"encoder": TINY_ENCODER, "weights": "none", "image_size": 64, "folds": 2, "epochs": 1, "batch_size": 2}
    best.write_text(json.dumps({"config": config, "data": str(tmp_path), "runtime": runtime}))
    return best


def test_cv_config_applies_the_recorded_runtime_and_options_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sweeps.cli import main

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("trainer.cv.run_cv_command", lambda *args, **kwargs: calls.append(kwargs) or 0)
    recorded = {"threads": 1, "mixed_precision": "auto", "mixed_precision_enabled": False}
    best = _best_json(tmp_path, recorded)
    assert main(["cv", "--config", str(best), "--out", str(tmp_path / "o")]) == 0
    assert calls[-1]["threads"] == 1 and calls[-1]["mixed_precision"] == "off"
    assert calls[-1]["recorded_runtime"] == recorded
    assert main(["cv", "--config", str(best), "--out", str(tmp_path / "o"), "--threads", "2",
                 "--mixed-precision", "auto"]) == 0  # fmt: skip
    assert calls[-1]["threads"] == 2 and calls[-1]["mixed_precision"] == "auto"

    assert main(["cv", "--config", str(_best_json(tmp_path, {"threads": "many"})), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "best.json: `runtime` is not as segsweep records it" in err[0]


def test_a_rerun_that_differs_from_the_recorded_runtime_says_so_in_one_line(
    fresh_runtime: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.config import CVConfig
    from trainer.cv import run_cv_command

    class DataRead(Exception):
        """Stands in for the data preparation and training that follow the warning."""

    def stop(*args: Any, **kwargs: Any) -> None:
        raise DataRead

    monkeypatch.setattr("trainer.cv.prepare_dataset", stop)
    same = models.configure_tensorflow().to_dict()
    assert models.runtime_differences(same, models.runtime_settings()) == []
    assert same["onednn_opts"] == "1"  # segsweep.base.env's default
    other_kernels = {**same, "onednn_opts": "0"}  # Eigen's convolutions: other numbers
    assert models.runtime_differences(other_kernels, models.runtime_settings()) == [
        "TF_ENABLE_ONEDNN_OPTS 1 (recorded 0)"
    ]
    older = {k: v for k, v in same.items() if k != "onednn_opts"}  # written before it was recorded
    assert models.runtime_differences(older, models.runtime_settings()) == []
    recorded = {**same, "threads": 97, "versions": {**same["versions"], "tensorflow": "2.0.0"}}
    with pytest.raises(DataRead):
        run_cv_command(  # untrained: ImageNet weights are checked (and missing here) before the data
            CVConfig(weights="none"), tmp_path, tmp_path / "o", recorded_runtime=recorded, recorded_source="best.json"
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segsweep: warning: ")
    assert "TensorFlow threads" in err[0] and "(recorded 97)" in err[0] and "(recorded 2.0.0)" in err[0]
    assert "best.json" in err[0] and "Dice may differ" in err[0]
