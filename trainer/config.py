"""One cross-validation run's configuration: what `segsweep cv` takes as options or as a file."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segsweep.base.errors import ConfigError
from segsweep.base.suggest import did_you_mean
from trainer.losses import LOSSES

#: The 32 encoders of segmentation-models 1.0.1 (``sm.get_available_backbone_names()``; a test keeps
#: this in step), listed here so that options are checked without importing TensorFlow.
ENCODERS: tuple[str, ...] = (
    "vgg16", "vgg19",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "seresnet18", "seresnet34", "seresnet50", "seresnet101", "seresnet152",
    "resnext50", "resnext101", "seresnext50", "seresnext101", "senet154",
    "densenet121", "densenet169", "densenet201",
    "inceptionv3", "inceptionresnetv2",
    "mobilenet", "mobilenetv2",
    "efficientnetb0", "efficientnetb1", "efficientnetb2", "efficientnetb3",
    "efficientnetb4", "efficientnetb5", "efficientnetb6", "efficientnetb7",
)  # fmt: skip
ARCHITECTURES: tuple[str, ...] = ("unet", "fpn", "linknet")

# Bounds beyond which a value is a slip (an extra digit) or beyond what a library or a machine takes:
# refused by CVConfig.validate() with the bound in the line, before any data is read; a search space's
# ranges meet the same bounds when it loads (search_spaces._yaml checks its values through validate()).
#: NumPy's global seed and scikit-learn's KFold ``random_state`` are unsigned 32-bit integers.
SEED_MAX = 2**32 - 1
#: 500 times the paper's 20: at the smallest size (32 px, one image per step) 10,000 epochs of
#: Kvasir-SEG's 1000 images are ten million steps; more is a typo (an extra digit), not a schedule.
EPOCHS_MAX = 10_000
#: Twice the largest side of the public polyp and instrument sets (Kvasir-SEG: 1920 px): a U-Net's
#: full-resolution activations at 4096 px already take ~1 GB per image and per 16 channels.
IMAGE_SIZE_MAX = 4096
#: A batch is one array in memory: 65,536 images are 0.8 GB of float32 input at 32 px, and a U-Net's
#: activations are many times that, beyond any one accelerator.
BATCH_SIZE_MAX = 65_536


def check_seed(seed: int, option: str = "seed") -> None:
    """Raise ConfigError unless ``seed`` is a seed NumPy and scikit-learn take (0..SEED_MAX)."""
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(
            f"{option} {seed} is out of range; use a whole number from 0 to {SEED_MAX} "
            "(NumPy's and scikit-learn's seeds are unsigned 32-bit)"
        )


@dataclass
class CVConfig:
    """Everything that decides what one cross-validation computes.

    ``weights`` is ``"imagenet"``, ``"none"`` or the path of a weights file. ``limit`` takes the
    first N pairs in stem order; ``dev_split`` names a split file whose stems form the development
    set (default: every pair); ``val_split`` replaces K-fold by one given train/validation split.
    """

    encoder: str = "efficientnetb1"
    arch: str = "unet"
    weights: str = "imagenet"
    batch_size: int = 30
    epochs: int = 20
    lr: float = 1e-3
    loss: str = "iou"
    folds: int = 10
    image_size: int = 256
    seed: int = 0
    limit: int | None = None
    dev_split: str | None = None
    val_split: str | None = None
    augment: bool = True
    lr_patience: int = 3
    lr_factor: float = 0.1
    bn_reestimate: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ConfigError naming the first value that cannot be used and what to use instead."""
        if self.encoder not in ENCODERS:
            raise ConfigError(
                f"unknown encoder {self.encoder!r}; {did_you_mean(self.encoder, ENCODERS)}"
                f"choose one of: {', '.join(ENCODERS)}"
            )
        if self.arch not in ARCHITECTURES:
            raise ConfigError(
                f"unknown architecture {self.arch!r}; {did_you_mean(self.arch, ARCHITECTURES)}"
                f"choose one of: {', '.join(ARCHITECTURES)}"
            )
        if self.loss not in LOSSES:
            raise ConfigError(
                f"unknown loss {self.loss!r}; {did_you_mean(self.loss, LOSSES)}choose one of: {', '.join(LOSSES)}"
            )
        if self.image_size > IMAGE_SIZE_MAX:
            raise ConfigError(
                f"image size {self.image_size} is more than {IMAGE_SIZE_MAX} px, the largest segsweep trains; "
                f"use {IMAGE_SIZE_MAX} or less (e.g. 256 or 512)"
            )
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(
                f"image size {self.image_size} is not a multiple of 32 (the encoders downsample 32x); "
                f"use e.g. {max(32, round(self.image_size / 32) * 32)}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.batch_size > BATCH_SIZE_MAX:
            raise ConfigError(
                f"batch size {self.batch_size} is more than {BATCH_SIZE_MAX}, the largest one batch can hold in "
                "memory; use a smaller batch size (e.g. 8 to 32)"
            )
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.epochs > EPOCHS_MAX:
            raise ConfigError(f"epochs {self.epochs} is more than {EPOCHS_MAX}, the most segsweep trains; use fewer")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a positive finite number, got {self.lr}")
        if self.val_split is None and self.folds < 2:
            raise ConfigError(f"folds must be at least 2, got {self.folds}")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"--limit must be at least 2, got {self.limit}")
        check_seed(self.seed)
        if not 0 < self.lr_factor < 1:
            raise ConfigError(f"lr_factor must lie in (0, 1), got {self.lr_factor}")
        if self.lr_patience < 1:
            raise ConfigError(f"lr_patience must be at least 1, got {self.lr_patience}")
        from segsweep.base.secrets import secret_key_paths

        secret_keys = secret_key_paths(self.extra, "extra.")  # at every depth: {neptune: {api_token: ..}}
        if secret_keys:
            # Configurations are written to cv.json, best.json, reports and trackers: no secrets in them.
            raise ConfigError(
                f"configuration key(s) {', '.join(secret_keys)} look like secrets; pass tokens through the "
                "environment (e.g. NEPTUNE_API_TOKEN), never in a configuration"
            )

    @property
    def pretrained(self) -> bool:
        return loads_encoder_weights(self.weights)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "configuration") -> CVConfig:
        """Build from a mapping, rejecting unknown keys (typos must not silently do nothing)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise unknown_keys_error(source, unknown, known)
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            kwargs[name] = coerce_value(name, value, known[name].type, source)
        return cls(**kwargs)


def name_unknown(unknown: Sequence[str], valid: Iterable[str]) -> str:
    """``encodr (did you mean 'encoder'?), foo``: the keys a file may not hold, each with the closest valid one."""
    valid = list(valid)
    return ", ".join(f"{key} ({hint.strip()})" if (hint := did_you_mean(key, valid)) else key for key in unknown)


def unknown_keys_error(source: str, unknown: Sequence[str], valid: Iterable[str]) -> ConfigError:
    """The one-line refusal of keys a file or record may not hold (typos must not silently do nothing):
    ``source``, each unknown key with the closest valid one, and the valid keys."""
    valid = sorted(valid)
    return ConfigError(f"{source}: unknown key(s) {name_unknown(unknown, valid)}; valid keys: {', '.join(valid)}")


def loads_encoder_weights(weights: object) -> bool:
    """Whether a ``weights`` value starts the encoder from weights (ImageNet or a file).

    The one rule for training (trainer.weights.resolve_weights) and reports: ``none`` in any case,
    with spaces around it, or empty loads nothing, so ``--weights None`` trains from random
    initialisation and is reported as untrained.
    """
    return str(weights or "").strip().lower() not in ("none", "")


_CASTS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def coerce_value(name: str, value: Any, annotation: Any, source: str) -> Any:
    """``value`` as the type a dataclass field is annotated with (int, float, str, bool, or one of
    them or None), or a one-line ConfigError naming ``source`` and ``name``; other types pass as given."""
    if value is None or name == "extra":
        return value
    text = str(annotation)
    for type_name, cast in _CASTS.items():
        if text.startswith(type_name):
            if cast is bool and not isinstance(value, bool):
                raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
            # int(2.5) is 2 and int(True) is 1: a value that is not what it says would train silently.
            if cast in (int, float) and isinstance(value, bool):
                raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
            if cast is int and isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{source}: {name} must be a whole number, got {value!r}; write e.g. {round(value)}")
            try:
                return cast(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: {name} must be a {type_name}, got {value!r}") from None
    return value


#: Keys a configuration file may hold besides CVConfig's fields: ``runtime`` is the TensorFlow settings
#: a recorded run used (cv.json, best.json), which ``cv --config`` applies (trainer.cli).
FILE_ONLY_KEYS = ("data", "out", "runtime")


def yaml_error_line(source: str | Path, exc: Exception) -> str:
    """One line for a YAML syntax error: file, line and column, what is wrong, and the fix."""
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(exc.problem or exc.context or "syntax error").split())
        return f"{source}{where}: not valid YAML ({what}); fix the syntax there"
    return f"{source}: not valid YAML ({' '.join(str(exc).split())}); fix the syntax"


def load_config_file(path: str | Path) -> tuple[CVConfig, dict[str, Any]]:
    """Read a YAML or JSON configuration; return the config and the file-only keys (data, out)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}, line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg}); fix the syntax there"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_line(path, exc)) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    # best.json from `segsweep report` nests the configuration under "config".
    if "config" in values and isinstance(values["config"], dict):
        # Only `config:` and the file-only keys are read from such a file: a field beside `config:`
        # (best.json with `epochs: 40` added at the top) would be dropped without a word.
        beside = sorted(k for k in values if k in {f.name for f in dataclasses.fields(CVConfig)})
        if beside:
            raise ConfigError(
                f"{path}: {', '.join(beside)} stand(s) beside `config:` and would be ignored (a file with a "
                "`config:` mapping, like best.json, is read from that mapping); move them under `config:` "
                "or pass them as options (e.g. --epochs 40)"
            )
        values = {**values["config"], **{k: values[k] for k in FILE_ONLY_KEYS if k in values}}
    extras = {k: values.pop(k) for k in FILE_ONLY_KEYS if k in values}
    return CVConfig.from_dict(values, source=str(path)), extras
