"""Encoder weights: where each encoder's ImageNet file comes from, finding it offline, loading it.

segmentation-models 1.0.1 fetches an encoder's ImageNet "notop" weights itself, through Keras'
``get_file``: on a machine without internet that fails after a long wait with a deep traceback,
and a cached file whose hash does not match is silently downloaded again (and deleted when that
fails). segsweep therefore builds its models with ``encoder_weights=None`` and handles the file
here:

- :func:`resolve_weights` turns ``--weights`` (``imagenet``, ``none`` or a path) into a checked file:
  the ImageNet file is looked up in the Keras cache (``$KERAS_HOME/models``, else
  ``~/.keras/models``), its hash verified (a bad file is reported, never deleted), and when it is
  absent one short download is tried before failing with a message that says how to provide it.
- :func:`load_encoder_weights` puts a file's weights into the encoder part of a built model.
- :func:`import_weights` (``segsweep weights import FILE --encoder NAME``) checks a file fetched
  elsewhere against the published hash and copies it into the Keras cache.

:data:`IMAGENET_WEIGHTS` is the table segmentation-models would use, gathered from the packages it
delegates to (tests/trainer/test_weights.py checks it against the installed packages):
classification_models (image-classifiers 1.0.0; md5), efficientnet 1.0.0 (sha256),
keras_applications 1.0.8 (VGG, DenseNet: md5; MobileNet, MobileNetV2: no published hash) and
segmentation-models' own Inception copies (md5).
"""

from __future__ import annotations

import os
import shutil
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segsweep.base.errors import WeightsError
from segsweep.base.files import atomic_path, file_digest
from trainer.config import ENCODERS, loads_encoder_weights

if TYPE_CHECKING:
    import h5py
    import tf_keras

# Seconds to wait for the server to answer (and, after that, for each piece of the file) when the
# ImageNet file is missing. Offline, this bounds the whole attempt, name resolution included.
DOWNLOAD_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WeightsFile:
    """One encoder's ImageNet "notop" weights as its publisher released them."""

    encoder: str
    file_name: str
    url: str
    file_hash: str | None  # None: the publisher gave no hash (keras_applications' MobileNets)
    source: str  # package whose table segmentation-models takes the file from
    # For files without a hash: how many weighted layers the encoder has, the check they get instead.
    weighted_layers: int | None = None

    @property
    def hash_algorithm(self) -> str | None:
        """Keras' rule: a 64-digit hash is sha256, any other is md5."""
        if self.file_hash is None:
            return None
        return "sha256" if len(self.file_hash) == 64 else "md5"

    def describe(self) -> str:
        checksum = f"{self.hash_algorithm} {self.file_hash}" if self.file_hash else "no published hash"
        return f"{self.file_name} ({checksum}; official copy: {self.url})"


_CM = "https://github.com/qubvel/classification_models/releases/download/0.0.1/"
_EFF = "https://github.com/Callidior/keras-applications/releases/download/efficientnet/"
_FCHOLLET = "https://github.com/fchollet/deep-learning-models/releases/download/"
_DENSENET = "https://github.com/keras-team/keras-applications/releases/download/densenet/"
_MOBILENET_V2 = "https://github.com/JonathanCMitchell/mobilenet_v2_keras/releases/download/v1.1/"
_EFF_NAME = "_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5"


def _entry(
    encoder: str, file_name: str, base_url: str, file_hash: str | None, source: str, layers: int | None = None
) -> WeightsFile:
    return WeightsFile(encoder, file_name, base_url + file_name, file_hash, source, layers)


# The MobileNets' file depends on the input size in keras_applications; segmentation-models builds
# its encoders for any input size, for which keras_applications takes the 224x224 file.
IMAGENET_WEIGHTS: dict[str, WeightsFile] = {
    w.encoder: w
    for w in [
        _entry("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", _FCHOLLET + "v0.1/",
               "6d6bbae143d832006294945121d1f1fc", "keras_applications"),
        _entry("vgg19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", _FCHOLLET + "v0.1/",
               "253f8cb515780f3b799900260a226db6", "keras_applications"),
        _entry("resnet18", "resnet18_imagenet_1000_no_top.h5", _CM,
               "318e3ac0cd98d51e917526c9f62f0b50", "classification_models"),
        _entry("resnet34", "resnet34_imagenet_1000_no_top.h5", _CM,
               "8caaa0ad39d927cb8ba5385bf945d582", "classification_models"),
        _entry("resnet50", "resnet50_imagenet_1000_no_top.h5", _CM,
               "db3b217156506944570ac220086f09b6", "classification_models"),
        _entry("resnet101", "resnet101_imagenet_1000_no_top.h5", _CM,
               "1016e7663980d5597a4e224d915c342d", "classification_models"),
        _entry("resnet152", "resnet152_imagenet_1000_no_top.h5", _CM,
               "5867b94098df4640918941115db93734", "classification_models"),
        _entry("seresnet18", "seresnet18_imagenet_1000_no_top.h5", _CM,
               "a46e5cd4114ac946ecdc58741e8d92ea", "classification_models"),
        _entry("seresnet34", "seresnet34_imagenet_1000_no_top.h5", _CM,
               "3348fd049f1f9ad307c070ff2b6ec4cb", "classification_models"),
        _entry("seresnet50", "seresnet50_imagenet_1000_no_top.h5", _CM,
               "043777781b0d5ca756474d60bf115ef1", "classification_models"),
        _entry("seresnet101", "seresnet101_imagenet_1000_no_top.h5", _CM,
               "1c373b0c196918713da86951d1239007", "classification_models"),
        _entry("seresnet152", "seresnet152_imagenet_1000_no_top.h5", _CM,
               "f58d4c1a511c7445ab9a2c2b83ee4e7b", "classification_models"),
        _entry("resnext50", "resnext50_imagenet_1000_no_top.h5", _CM,
               "7ade5c8aac9194af79b1724229bdaa50", "classification_models"),
        _entry("resnext101", "resnext101_imagenet_1000_no_top.h5", _CM,
               "91fe0126320e49f6ee607a0719828c7e", "classification_models"),
        _entry("seresnext50", "seresnext50_imagenet_1000_no_top.h5", _CM,
               "b0f23d2e1cd406d67335fb92d85cc279", "classification_models"),
        _entry("seresnext101", "seresnext101_imagenet_1000_no_top.h5", _CM,
               "e48708cbe40071cc3356016c37f6c9c7", "classification_models"),
        _entry("senet154", "senet154_imagenet_1000_no_top.h5", _CM,
               "d854ff2cd7e6a87b05a8124cd283e0f2", "classification_models"),
        _entry("densenet121", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", _DENSENET,
               "30ee3e1110167f948a6b9946edeeb738", "keras_applications"),
        _entry("densenet169", "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5", _DENSENET,
               "b8c4d4c20dd625c148057b9ff1c1176b", "keras_applications"),
        _entry("densenet201", "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5", _DENSENET,
               "c13680b51ded0fb44dff2d8f86ac8bb1", "keras_applications"),
        _entry("inceptionv3", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", _FCHOLLET + "v0.5/",
               "bcbd6486424b2319ff4ef7d526e38f63", "segmentation_models"),
        _entry("inceptionresnetv2", "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
               _FCHOLLET + "v0.7/", "d19885ff4a710c122648d3b5c3b684e4", "segmentation_models"),
        _entry("mobilenet", "mobilenet_1_0_224_tf_no_top.h5", _FCHOLLET + "v0.6/", None,
               "keras_applications", layers=54),
        _entry("mobilenetv2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
               _MOBILENET_V2, None, "keras_applications", layers=104),
        _entry("efficientnetb0", "efficientnet-b0" + _EFF_NAME, _EFF,
               "c1421ad80a9fc67c2cc4000f666aa50789ce39eedb4e06d531b0c593890ccff3", "efficientnet"),
        _entry("efficientnetb1", "efficientnet-b1" + _EFF_NAME, _EFF,
               "75de265d03ac52fa74f2f510455ba64f9c7c5fd96dc923cd4bfefa3d680c4b68", "efficientnet"),
        _entry("efficientnetb2", "efficientnet-b2" + _EFF_NAME, _EFF,
               "433b60584fafba1ea3de07443b74cfd32ce004a012020b07ef69e22ba8669333", "efficientnet"),
        _entry("efficientnetb3", "efficientnet-b3" + _EFF_NAME, _EFF,
               "c5d42eb6cfae8567b418ad3845cfd63aa48b87f1bd5df8658a49375a9f3135c7", "efficientnet"),
        _entry("efficientnetb4", "efficientnet-b4" + _EFF_NAME, _EFF,
               "7942c1407ff1feb34113995864970cd4d9d91ea64877e8d9c38b6c1e0767c411", "efficientnet"),
        _entry("efficientnetb5", "efficientnet-b5" + _EFF_NAME, _EFF,
               "9d197bc2bfe29165c10a2af8c2ebc67507f5d70456f09e584c71b822941b1952", "efficientnet"),
        _entry("efficientnetb6", "efficientnet-b6" + _EFF_NAME, _EFF,
               "1d0923bb038f2f8060faaf0a0449db4b96549a881747b7c7678724ac79f427ed", "efficientnet"),
        _entry("efficientnetb7", "efficientnet-b7" + _EFF_NAME, _EFF,
               "60b56ff3a8daccc8d96edfd40b204c113e51748da657afd58034d54d3cec2bac", "efficientnet"),
    ]
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Public face


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded model weights: ``$KERAS_HOME/models``, else ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".keras") / "models"


def imagenet_weights_file(encoder: str) -> WeightsFile:
    """The table entry of ``encoder``; a WeightsError names the known encoders."""
    try:
        return IMAGENET_WEIGHTS[encoder]
    except KeyError:
        raise WeightsError(
            f"no ImageNet weights are known for encoder {encoder!r}; choose one of: {', '.join(ENCODERS)}"
        ) from None


def resolve_weights(encoder: str, weights: str) -> Path | None:
    """The checked weights file for ``--weights`` (``imagenet``, ``none`` or a path), or None for none.

    ``imagenet`` takes the encoder's file from the Keras cache, verifying its hash; when it is not
    there, one download is tried (bounded by :data:`DOWNLOAD_TIMEOUT_S`) before a WeightsError that
    names the file and says how to provide it.
    """
    choice = weights.strip()
    if not loads_encoder_weights(choice):
        return None
    if choice.lower() == "imagenet":
        return _resolve_imagenet(imagenet_weights_file(encoder))
    path = Path(choice).expanduser()
    if not path.exists():
        raise WeightsError(
            f"weights file {path} does not exist; pass --weights imagenet, --weights none, "
            f"or the path of an existing .h5 weights file for encoder {encoder!r}"
        )
    if not path.is_file():
        raise WeightsError(f"--weights {path} is a folder; pass the path of an .h5 weights file")
    _read_weight_layers(path)
    return path.resolve()


def load_encoder_weights(model: tf_keras.Model, path: Path, encoder: str) -> None:
    """Put the weights of ``path`` (an encoder's Keras .h5 file) into the encoder of ``model``.

    ``model`` is a segmentation-models model built with ``encoder_weights=None``. The file is loaded
    the way segmentation-models loads ImageNet weights into a bare encoder: in layer order, which
    also holds for encoders whose layer names Keras generates and so differ between sessions
    (Inception, SE-ResNeXt). The encoder is the part of the model between its input and the layer
    whose ancestors hold exactly as many weighted layers as the file. A file that fits no such part
    is loaded by layer name instead, provided every one of its layers is found in the model.
    """
    import tf_keras

    layers = _read_weight_layers(path)
    end = _encoder_end(model, len(layers))
    try:
        if end is not None:
            # A view on the same layer objects: loading into it sets the model's own weights.
            encoder_view = tf_keras.Model(model.inputs, end.output)
            encoder_view.load_weights(str(path))
            return
        model_names = {layer.name for layer in model.layers if layer.weights}
        found = sum(name in model_names for name, _ in layers)
        if found < len(layers):
            raise WeightsError(
                f"weights file {path} does not fit encoder {encoder!r}: its {len(layers)} weighted "
                f"layers match the encoder neither in number nor by name ({found} of their "
                f"names occur in the model); is it a weights file for another encoder? Pass a file "
                f"saved from a {encoder!r} encoder, --weights imagenet or --weights none"
            )
        model.load_weights(str(path), by_name=True)
    except ValueError as error:  # Keras' layer count / shape checks
        reason = " ".join(str(error).split())
        raise WeightsError(f"weights file {path} does not fit encoder {encoder!r}: {reason}") from None


def import_weights(file: Path, encoder: str) -> Path:
    """Check ``file`` against ``encoder``'s published hash and copy it into the Keras cache.

    Returns the cached path. A hash mismatch raises WeightsError (expected vs actual) and copies
    nothing.
    """
    entry = imagenet_weights_file(encoder)
    file = Path(file).expanduser()
    if not file.is_file():
        raise WeightsError(f"weights file {file} does not exist; download {entry.describe()} first")
    if entry.file_hash is not None:
        actual = file_hash(file, entry.hash_algorithm or "md5")
        if actual != entry.file_hash:
            raise WeightsError(
                f"{file} is not the ImageNet weights file of encoder {encoder!r}: its "
                f"{entry.hash_algorithm} is {actual}, expected {entry.file_hash} for "
                f"{entry.file_name}; download it again from {entry.url}"
            )
    else:
        _check_unhashed(file, entry)
    target = keras_cache_dir() / entry.file_name
    if target.exists() and target.samefile(file):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial:
        shutil.copyfile(file, partial)
    return target


def run_import_command(file: Path, encoder: str) -> int:
    """``segsweep weights import FILE --encoder NAME``."""
    entry = imagenet_weights_file(encoder)
    target = import_weights(file, encoder)
    if entry.file_hash is not None:
        check = f"{entry.hash_algorithm} {entry.file_hash} verified"
    else:
        check = f"no published hash to verify; sha256 {file_hash(target, 'sha256')}"
    print(f"imported {file} as {target} ({check})")
    print(f"--encoder {encoder} --weights imagenet now uses it without downloading")
    return 0


def file_hash(path: Path, algorithm: str) -> str:
    """Hex digest of ``path`` with ``algorithm`` (``md5`` or ``sha256``)."""
    return file_digest(path, algorithm)


# ---------------------------------------------------------------------------------------------
# ImageNet file: cache, verification, download


# Files found good in this process, by (path, size, mtime): models are built once per fold, and
# hashing a large encoder's file every time would cost seconds.
_verified: set[tuple[str, int, int]] = set()


def _resolve_imagenet(entry: WeightsFile) -> Path:
    cached = keras_cache_dir() / entry.file_name
    if cached.exists():
        _verify_cached(cached, entry)
        return cached
    try:
        _download(entry, cached)
    except _DownloadFailed as failure:
        raise WeightsError(
            f"ImageNet weights of encoder {entry.encoder!r} are not in the Keras cache "
            f"{cached.parent} and could not be downloaded ({failure}); segsweep needs "
            f"{entry.describe()}. Fetch that file where there is internet and run "
            f"`segsweep weights import FILE --encoder {entry.encoder}`, or train without them: "
            f"--weights none (random encoder) or --weights PATH (your own weights file for this encoder)"
        ) from None
    return cached


def _verify_cached(path: Path, entry: WeightsFile) -> None:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    if entry.file_hash is not None:
        actual = file_hash(path, entry.hash_algorithm or "md5")
        if actual != entry.file_hash:
            raise WeightsError(
                f"the cached ImageNet weights file {path} of encoder {entry.encoder!r} is damaged or "
                f"not the official one: its {entry.hash_algorithm} is {actual}, expected "
                f"{entry.file_hash}. It was left in place; replace it with a good copy from "
                f"{entry.url} via `segsweep weights import FILE --encoder {entry.encoder}` "
                f"(or pass --weights none)"
            )
    else:
        try:
            _check_unhashed(path, entry)
        except WeightsError as error:
            raise WeightsError(
                f"{error}; it is the cached ImageNet weights of encoder {entry.encoder!r} and was left "
                f"in place: replace it with a good copy from {entry.url} via "
                f"`segsweep weights import FILE --encoder {entry.encoder}`"
            ) from None
    _verified.add(key)


class _DownloadFailed(Exception):
    """Why the one download attempt did not produce a good file (internal to this module)."""


def _download(entry: WeightsFile, target: Path) -> None:
    """Fetch ``entry.url`` into ``target`` atomically and verify it, or raise _DownloadFailed.

    The request runs in a daemon thread so that the wait for an answer is bounded even where name
    resolution hangs (urllib's timeout covers sockets, not DNS); once the server answers, the
    body is read to the end with the same timeout for each piece.
    """
    answered = threading.Event()
    abandoned = threading.Event()
    outcome: dict[str, Any] = {}

    def fetch() -> None:
        try:
            request = urllib.request.Request(entry.url, headers={"User-Agent": "segsweep"})
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
                answered.set()
                if abandoned.is_set():
                    return
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target) as partial:
                    with open(partial, "wb") as out:
                        shutil.copyfileobj(response, out, 1 << 20)
                    _check_download(partial, entry)
        except _DownloadFailed as error:
            outcome["error"] = error
        except urllib.error.HTTPError as error:
            outcome["error"] = _DownloadFailed(f"the server answered HTTP {error.code} {error.reason}")
        except urllib.error.URLError as error:
            outcome["error"] = _DownloadFailed(f"unreachable: {error.reason}")
        except (OSError, ValueError) as error:  # timeouts, resets, refused connections, bad URLs
            outcome["error"] = _DownloadFailed(f"unreachable: {error}")
        finally:
            answered.set()

    worker = threading.Thread(target=fetch, name=f"segsweep-weights-{entry.encoder}", daemon=True)
    worker.start()
    if not answered.wait(DOWNLOAD_TIMEOUT_S + 1.0):
        abandoned.set()
        raise _DownloadFailed(f"no answer within {DOWNLOAD_TIMEOUT_S:g} s")
    worker.join()
    if "error" in outcome:
        raise outcome["error"]


def _check_download(path: Path, entry: WeightsFile) -> None:
    if entry.file_hash is not None:
        actual = file_hash(path, entry.hash_algorithm or "md5")
        if actual != entry.file_hash:
            raise _DownloadFailed(
                f"the downloaded file's {entry.hash_algorithm} is {actual}, expected {entry.file_hash}"
            )
    else:
        try:
            _check_unhashed(path, entry)
        except WeightsError as error:
            raise _DownloadFailed(f"the downloaded file is not the expected weights: {error}") from None


def _check_unhashed(path: Path, entry: WeightsFile) -> None:
    """Without a published hash, a file must at least be Keras weights with the encoder's layer count."""
    found = len(_read_weight_layers(path))
    if entry.weighted_layers is not None and found != entry.weighted_layers:
        raise WeightsError(
            f"{path} holds {found} weighted layers, but encoder {entry.encoder!r} has "
            f"{entry.weighted_layers}: it is not {entry.file_name}"
        )


# ---------------------------------------------------------------------------------------------
# Keras .h5 weights files and the encoder part of a model


def _read_weight_layers(path: Path) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(layer name, weight shapes) of each weighted layer in ``path``, in file order.

    Reads the legacy Keras HDF5 layout that ``save_weights``/``save`` write and the published
    ImageNet files use; anything else is a WeightsError naming the file.
    """
    import h5py

    if not h5py.is_hdf5(path):
        raise WeightsError(
            f"{path} is not a Keras weights file (.h5, HDF5); pass a file written by Keras' "
            f"save_weights or one of the published ImageNet files"
        )
    try:
        with h5py.File(path, "r") as root:
            group: h5py.Group = root
            if "layer_names" not in root.attrs and "model_weights" in root:
                group = root["model_weights"]  # a whole model saved with model.save()
            names = _string_attribute(group, "layer_names")
            if names is None:
                raise WeightsError(
                    f"{path} is an HDF5 file but not Keras weights (it has no layer_names); pass a file "
                    f"written by Keras' save_weights or one of the published ImageNet files"
                )
            layers = []
            for name in names:
                weight_names = _string_attribute(group[name], "weight_names") or []
                if weight_names:
                    layers.append((name, [tuple(group[name][w].shape) for w in weight_names]))
    except OSError as error:
        raise WeightsError(f"{path} cannot be read as a Keras weights file: {error}") from None
    if not layers:
        raise WeightsError(f"{path} holds no layer weights; pass a Keras weights file of the encoder")
    return layers


def _string_attribute(group: h5py.Group, name: str) -> list[str] | None:
    """A list-of-names attribute; Keras splits long ones into ``name0``, ``name1``, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    elif f"{name}0" in group.attrs:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _encoder_end(model: tf_keras.Model, n_file_layers: int) -> Any:
    """The first layer whose ancestors (itself included) hold exactly ``n_file_layers`` weighted layers.

    For an encoder's file that is where the encoder ends (its last weighted layer, or the merge of
    its last branches, as in Inception): its ancestors are the whole encoder, and the decoder
    layers, which also descend from it, come later in the model's topological layer order.
    Weighted ancestors are tracked as bit sets over the model's weighted layers.
    """
    bit: dict[int, int] = {}
    for layer in model.layers:
        if layer.weights:
            bit[id(layer)] = 1 << len(bit)
    # tf_keras offers no public accessor for the graph; a node belongs to this model when its key
    # is among the model's nodes (a layer reused elsewhere has nodes of other graphs too).
    model_nodes: set[str] = getattr(model, "_network_nodes", set())
    ancestors: dict[int, int] = {}
    for layer in model.layers:
        reach = bit.get(id(layer), 0)
        for index, node in enumerate(layer._inbound_nodes):
            if model_nodes and f"{layer.name}_ib-{index}" not in model_nodes:
                continue
            for parent, _, _, _ in node.iterate_inbound():
                reach |= ancestors.get(id(parent), 0)
        ancestors[id(layer)] = reach
        if reach.bit_count() == n_file_layers:
            return layer
    return None
