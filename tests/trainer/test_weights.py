"""trainer.weights: the ImageNet table, offline resolution, import, and loading into an encoder.

Every weights file here is made by the tests (a MobileNetV2 encoder with random weights); no test
leaves the machine: "official" URLs are pointed at 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import inspect
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import segsweep.base.env  # noqa: F401
from segsweep.base.errors import WeightsError
from trainer import weights
from trainer.config import ENCODERS

ENCODER = "mobilenetv2"
SIZE = 64
UNREACHABLE = "http://127.0.0.1:9/"  # discard port: nothing listens, the connection is refused at once


@pytest.fixture(autouse=True)
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Keras cache of this test's own (conftest's is shared by the whole session)."""
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(weights, "_verified", set())
    return home


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileNetV2 encoder, built as segmentation-models builds it, with random weights, as .h5."""
    import segmentation_models as sm

    backbone = sm.inject_global_submodules(sm.Backbones.get_backbone)(
        ENCODER, input_shape=(SIZE, SIZE, 3), weights=None, include_top=False
    )
    rng = np.random.default_rng(7)
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.weights])
    path = tmp_path_factory.mktemp("weights") / "mobilenetv2_random_notop.h5"
    backbone.save_weights(str(path))
    return path


@pytest.fixture(scope="module")
def unet() -> Any:
    import segmentation_models as sm

    return sm.Unet(ENCODER, input_shape=(SIZE, SIZE, 3), classes=1, encoder_weights=None)


def _file_weights(path: Path) -> dict[str, list[np.ndarray]]:
    with h5py.File(path, "r") as f:
        out = {}
        for name in f.attrs["layer_names"]:
            group = f[name]
            names = list(group.attrs["weight_names"])
            if names:
                out[name.decode() if isinstance(name, bytes) else name] = [group[n][()] for n in names]
        return out


def _point_table_at(
    monkeypatch: pytest.MonkeyPatch, url: str = UNREACHABLE, file_hash: str | None = None
) -> weights.WeightsFile:
    entry = dataclasses.replace(
        weights.IMAGENET_WEIGHTS[ENCODER],
        url=url + weights.IMAGENET_WEIGHTS[ENCODER].file_name,
        file_hash=file_hash,
    )
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, ENCODER, entry)
    return entry


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# --weights FILE and loading into the encoder


def test_weights_file_lands_in_the_encoder_layers_and_nowhere_else(encoder_file: Path, unet: Any) -> None:
    path = weights.resolve_weights(ENCODER, str(encoder_file))
    assert path == encoder_file.resolve()
    saved = _file_weights(encoder_file)
    decoder_before = {
        layer.name: layer.get_weights() for layer in unet.layers if layer.weights and layer.name not in saved
    }
    assert decoder_before, "the Unet has decoder layers"

    weights.load_encoder_weights(unet, path, ENCODER)

    by_name = {layer.name: layer for layer in unet.layers}
    for name, values in saved.items():
        got = by_name[name].get_weights()
        assert len(got) == len(values)
        for have, want in zip(got, values, strict=True):
            np.testing.assert_array_equal(have, want)
    for name, values in decoder_before.items():
        for have, want in zip(by_name[name].get_weights(), values, strict=True):
            np.testing.assert_array_equal(have, want)


def test_a_file_of_another_network_is_refused(tmp_path: Path, unet: Any) -> None:
    import tf_keras

    other = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3, name="not_an_encoder")])
    path = tmp_path / "other.h5"
    other.save_weights(str(path))
    with pytest.raises(WeightsError, match=r"other\.h5 does not fit encoder 'mobilenetv2'"):
        weights.load_encoder_weights(unet, path, ENCODER)


@pytest.mark.parametrize("content", [None, b"not hdf5 at all", "hdf5-without-layers"])
def test_weights_path_must_be_an_existing_keras_weights_file(tmp_path: Path, content: Any) -> None:
    path = tmp_path / "w.h5"
    if content == "hdf5-without-layers":
        with h5py.File(path, "w") as f:
            f["x"] = np.zeros(3)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"w\.h5"):
        weights.resolve_weights(ENCODER, str(path))
    with pytest.raises(WeightsError, match="folder"):
        weights.resolve_weights(ENCODER, str(tmp_path))


def test_none_means_no_file() -> None:
    assert weights.resolve_weights(ENCODER, "none") is None
    assert weights.resolve_weights(ENCODER, "None") is None


# ---------------------------------------------------------------------------------------------
# --weights imagenet without the file and without internet


def test_missing_imagenet_file_offline_fails_fast_with_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, keras_home: Path
) -> None:
    entry = _point_table_at(monkeypatch, file_hash="0123456789abcdef0123456789abcdef")
    start = time.monotonic()
    with pytest.raises(WeightsError) as raised:
        weights.resolve_weights(ENCODER, "imagenet")
    elapsed = time.monotonic() - start
    message = str(raised.value)
    assert elapsed < 30
    for needed in (
        entry.file_name,
        str(entry.file_hash),
        entry.url,
        "segsweep weights import FILE --encoder mobilenetv2",
        "--weights none",
        "--weights PATH",
    ):
        assert needed in message
    assert "\n" not in message
    assert not any((keras_home / "models").glob("*")), "no partial file is left behind"


def test_a_silent_server_is_given_up_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 1.0)
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        _point_table_at(monkeypatch, url=f"http://127.0.0.1:{silent.getsockname()[1]}/")
        start = time.monotonic()
        with pytest.raises(WeightsError, match="could not be downloaded"):
            weights.resolve_weights(ENCODER, "imagenet")
        assert time.monotonic() - start < 5


def test_a_hanging_name_lookup_is_given_up_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib's timeout does not cover DNS; the wait for an answer is bounded all the same."""
    release = threading.Event()

    def hang(*args: Any, **kwargs: Any) -> Any:
        release.wait(60)
        raise OSError("released")

    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(weights.urllib.request, "urlopen", hang)
    _point_table_at(monkeypatch)
    start = time.monotonic()
    try:
        with pytest.raises(WeightsError, match=r"could not be downloaded \(no answer within 0\.5 s\)"):
            weights.resolve_weights(ENCODER, "imagenet")
        assert time.monotonic() - start < 5
    finally:
        release.set()


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a folder; yields (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_one_download_lands_verified_in_the_cache(
    monkeypatch: pytest.MonkeyPatch, encoder_file: Path, local_server: tuple[str, Path], keras_home: Path
) -> None:
    url, folder = local_server
    entry = _point_table_at(monkeypatch, url=url, file_hash=_md5(encoder_file))
    (folder / entry.file_name).write_bytes(encoder_file.read_bytes())
    path = weights.resolve_weights(ENCODER, "imagenet")
    assert path == keras_home / "models" / entry.file_name
    assert path.read_bytes() == encoder_file.read_bytes()


def test_a_download_with_the_wrong_hash_is_discarded(
    monkeypatch: pytest.MonkeyPatch, encoder_file: Path, local_server: tuple[str, Path], keras_home: Path
) -> None:
    url, folder = local_server
    entry = _point_table_at(monkeypatch, url=url, file_hash="f" * 64)
    (folder / entry.file_name).write_bytes(encoder_file.read_bytes())
    with pytest.raises(WeightsError, match=r"sha256 is [0-9a-f]{64}, expected f{64}"):
        weights.resolve_weights(ENCODER, "imagenet")
    assert not any((keras_home / "models").glob("*"))


# ---------------------------------------------------------------------------------------------
# segsweep weights import, and what resolution does with the cache


def test_import_with_the_wrong_hash_is_refused_and_copies_nothing(
    monkeypatch: pytest.MonkeyPatch, encoder_file: Path, keras_home: Path
) -> None:
    _point_table_at(monkeypatch, file_hash="0" * 32)
    with pytest.raises(WeightsError) as raised:
        weights.import_weights(encoder_file, ENCODER)
    message = str(raised.value)
    assert str(encoder_file) in message and "0" * 32 in message and _md5(encoder_file) in message
    assert not (keras_home / "models").exists() or not any((keras_home / "models").iterdir())


def test_import_with_the_right_hash_is_found_by_imagenet_resolution(
    monkeypatch: pytest.MonkeyPatch, encoder_file: Path, keras_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = _point_table_at(monkeypatch, file_hash=_md5(encoder_file))
    assert weights.run_import_command(encoder_file, ENCODER) == 0
    target = keras_home / "models" / entry.file_name
    assert target.read_bytes() == encoder_file.read_bytes()
    assert str(target) in capsys.readouterr().out
    assert sorted(p.name for p in target.parent.iterdir()) == [entry.file_name], "no temporary files left"
    assert weights.resolve_weights(ENCODER, "imagenet") == target


def test_import_without_a_published_hash_checks_the_file_is_keras_weights(
    monkeypatch: pytest.MonkeyPatch, encoder_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = _point_table_at(monkeypatch, file_hash=None)
    assert weights.run_import_command(encoder_file, ENCODER) == 0
    assert "no published hash" in capsys.readouterr().out
    junk = tmp_path / entry.file_name
    junk.write_bytes(b"<html>404</html>")
    with pytest.raises(WeightsError, match="not a Keras weights file"):
        weights.import_weights(junk, ENCODER)
    other = tmp_path / "other" / entry.file_name
    other.parent.mkdir()
    with h5py.File(encoder_file, "r") as source, h5py.File(other, "w") as copy:
        names = list(source.attrs["layer_names"])[:10]
        for name in names:
            source.copy(source[name], copy, name=name)
        copy.attrs["layer_names"] = names
    with pytest.raises(WeightsError, match=r"holds \d+ weighted layers, but encoder 'mobilenetv2' has 104"):
        weights.import_weights(other, ENCODER)


@pytest.mark.parametrize("encoder", ["mobilenet", "mobilenetv2"])
def test_layer_counts_of_files_without_hash_match_the_encoders(encoder: str) -> None:
    import segmentation_models as sm

    backbone = sm.inject_global_submodules(sm.Backbones.get_backbone)(
        encoder, input_shape=(SIZE, SIZE, 3), weights=None, include_top=False
    )
    weighted = sum(1 for layer in backbone.layers if layer.weights)
    assert weights.IMAGENET_WEIGHTS[encoder].weighted_layers == weighted


@pytest.mark.parametrize("published_hash", [True, False])
def test_a_corrupt_cached_file_is_reported_and_left_in_place(
    monkeypatch: pytest.MonkeyPatch, encoder_file: Path, keras_home: Path, published_hash: bool
) -> None:
    entry = _point_table_at(monkeypatch, file_hash=_md5(encoder_file) if published_hash else None)
    cached = keras_home / "models" / entry.file_name
    cached.parent.mkdir(parents=True)
    damaged = encoder_file.read_bytes()[:4096]
    cached.write_bytes(damaged)
    with pytest.raises(WeightsError) as raised:
        weights.resolve_weights(ENCODER, "imagenet")
    message = str(raised.value)
    assert str(cached) in message and "segsweep weights import FILE --encoder mobilenetv2" in message
    assert cached.read_bytes() == damaged


def test_unknown_encoder_is_named() -> None:
    with pytest.raises(WeightsError, match=r"'resnet9000'.*efficientnetb1"):
        weights.resolve_weights("resnet9000", "imagenet")


# ---------------------------------------------------------------------------------------------
# The table is the one segmentation-models would use


def test_table_matches_the_installed_packages() -> None:
    import classification_models.weights as cm
    import efficientnet.model as eff
    import keras_applications.densenet as ka_densenet
    import keras_applications.mobilenet as ka_mobilenet
    import keras_applications.mobilenet_v2 as ka_mobilenet_v2
    import keras_applications.vgg16 as ka_vgg16
    import keras_applications.vgg19 as ka_vgg19
    import segmentation_models as sm
    import segmentation_models.backbones.inception_resnet_v2 as sm_irv2
    import segmentation_models.backbones.inception_v3 as sm_iv3

    table = weights.IMAGENET_WEIGHTS
    assert list(table) == list(ENCODERS)
    for encoder, entry in table.items():
        assert entry.encoder == encoder and entry.url.endswith("/" + entry.file_name)
        builder = sm.Backbones.models[encoder][0]
        assert builder.__module__.split(".")[0] == entry.source, encoder

    notop = {w["model"]: w for w in cm.WEIGHTS_COLLECTION if w["dataset"] == "imagenet" and not w["include_top"]}
    for encoder, entry in table.items():
        if entry.source == "classification_models":
            w = notop[encoder]
            assert (entry.file_name, entry.url, entry.file_hash) == (w["name"], w["url"], w["md5"])
            assert entry.hash_algorithm == "md5"
        if entry.source == "efficientnet":
            key = "efficientnet-" + encoder[-2:]
            assert entry.url == eff.BASE_WEIGHTS_PATH + entry.file_name
            assert entry.file_hash == eff.WEIGHTS_HASHES[key][1] and entry.hash_algorithm == "sha256"

    published = {
        "vgg16": (ka_vgg16, ka_vgg16.WEIGHTS_PATH_NO_TOP),
        "vgg19": (ka_vgg19, ka_vgg19.WEIGHTS_PATH_NO_TOP),
        "densenet121": (ka_densenet, ka_densenet.DENSENET121_WEIGHT_PATH_NO_TOP),
        "densenet169": (ka_densenet, ka_densenet.DENSENET169_WEIGHT_PATH_NO_TOP),
        "densenet201": (ka_densenet, ka_densenet.DENSENET201_WEIGHT_PATH_NO_TOP),
        "inceptionv3": (sm_iv3, sm_iv3.WEIGHTS_PATH_NO_TOP),
        "inceptionresnetv2": (sm_irv2, sm_irv2.BASE_WEIGHT_URL + table["inceptionresnetv2"].file_name),
        "mobilenet": (ka_mobilenet, ka_mobilenet.BASE_WEIGHT_PATH + table["mobilenet"].file_name),
        "mobilenetv2": (ka_mobilenet_v2, ka_mobilenet_v2.BASE_WEIGHT_PATH + table["mobilenetv2"].file_name),
    }
    # The names these three build in code, for segmentation-models' any-size input (224 x 224 files).
    assert table["inceptionresnetv2"].file_name == (
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ) and "'tf_dim_ordering_tf_kernels_notop.h5')" in inspect.getsource(sm_irv2)
    assert table["mobilenet"].file_name == "mobilenet_{}_{}_tf_no_top.h5".format("1_0", 224)
    assert table["mobilenetv2"].file_name == (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_" + str(1.0) + "_" + str(224) + "_no_top" + ".h5"
    )
    for encoder, (module, url) in published.items():
        entry = table[encoder]
        source = inspect.getsource(module)
        assert entry.url == url, encoder
        if entry.file_hash is None:
            assert "file_hash" not in source, f"{encoder}: the package publishes a hash now"
        else:
            assert f"file_hash='{entry.file_hash}'" in source, encoder
