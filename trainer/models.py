"""Segmentation models from segmentation-models (Keras), their metric and preprocessing (losses: trainer.losses)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from segsweep.base.errors import ConfigError
from trainer.config import CVConfig
from trainer.losses import make_loss

if TYPE_CHECKING:
    import tf_keras

#: Values of ``--mixed-precision``: ``on`` float16 compute (GPUs with tensor cores), ``bf16`` bfloat16
#: compute (CPUs with AVX512-BF16 or AMX, GPUs from Ampere on), ``off`` float32; ``auto`` picks
#: (:func:`resolve_mixed_precision`). Weights stay float32 and the output layer float32 in both.
MIXED_PRECISION_CHOICES = ("auto", "on", "bf16", "off")
#: The Keras policy a model trains under, by the resolved choice.
PRECISION_POLICIES = {"off": "float32", "on": "mixed_float16", "bf16": "mixed_bfloat16"}
#: CPU flags (Linux /proc/cpuinfo) of native bfloat16 dot products, which oneDNN's convolutions use.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Whether ``auto`` trains in bfloat16 on a CPU that has them. Measured in benchmarks/bench_compute.py
#: (benchmarks/README.md, section 7): the resnet18 U-Net's training steps run faster and its fold Dice
#: moves less than a change of thread count moves it.
AUTO_BF16_ON_CPU = True
#: Encoder families whose training was measured faster in bfloat16 on such a CPU (benchmarks/README.md,
#: section 7: resnet18 1.75x, seresnet18 1.26x, mobilenetv2 1.26x); ``auto`` keeps float32 for the
#: others (efficientnetb0 trained 0.77-0.95x as fast: its swish and depthwise layers gain nothing).
AUTO_BF16_ENCODER_PREFIXES = ("resnet", "seresnet", "mobilenetv2")
#: Lowest CUDA compute capability with tensor cores for float16 (Volta, V100); below it float16 is slower.
MIXED_PRECISION_MIN_CAPABILITY = (7, 0)
#: Environment fallbacks of ``--mixed-precision`` (``1``/``on``, ``bf16``, ``0``/``off``, ``auto``) and ``--threads``.
MIXED_PRECISION_ENV = "SEGSWEEP_MIXED_PRECISION"
THREADS_ENV = "SEGSWEEP_THREADS"


@dataclass(frozen=True)
class RuntimeSettings:
    """How TensorFlow runs in this process: recorded in cv.json (``runtime``), bundles and reports.

    ``mixed_precision`` is what was asked (auto, on, bf16, off); ``mixed_precision_policy`` the Keras
    policy it resolved to, ``mixed_precision_enabled`` whether that is a reduced one and
    ``mixed_precision_reason`` why. ``threads`` caps TensorFlow's intra-op pool (None: one per core,
    ``cpus`` of them), ``inter_op_threads`` its inter-op pool (None: TensorFlow's choice). These and the
    ``versions`` of TensorFlow, tf-keras, segmentation-models and segsweep change a run's numbers: on a
    CPU a fold repeats exactly only with the same thread counts and versions (README, Reproducing).
    """

    mixed_precision: str
    mixed_precision_enabled: bool
    mixed_precision_reason: str
    threads: int | None
    gpus: tuple[str, ...] = ()
    inter_op_threads: int | None = None
    cpus: int | None = None
    versions: tuple[tuple[str, str], ...] = ()
    #: The Keras policy models train under: float32, mixed_float16 or mixed_bfloat16.
    mixed_precision_policy: str = "float32"
    #: TF_ENABLE_ONEDNN_OPTS as TensorFlow read it ("1" unless the user chose; segsweep.base.env): oneDNN's
    #: kernels and Eigen's give slightly different numbers, so a fold repeats exactly only with the same.
    onednn_opts: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gpus": list(self.gpus), "versions": dict(self.versions)}

    def describe(self) -> str:
        """One phrase for console lines and reports."""
        return (
            f"mixed precision {precision_label(self.to_dict())} ({self.mixed_precision_reason}), "
            f"TensorFlow threads {self.threads or 'one per core'}"
        )


def recorded_policy(runtime: Mapping[str, Any]) -> str:
    """The Keras policy a recorded ``runtime`` trained under (records before bfloat16 name none:
    enabled then meant float16)."""
    policy = runtime.get("mixed_precision_policy")
    if isinstance(policy, str) and policy in PRECISION_POLICIES.values():
        return policy
    return "mixed_float16" if runtime.get("mixed_precision_enabled") else "float32"


def precision_label(runtime: Mapping[str, Any]) -> str:
    """How a recorded ``runtime``'s precision reads in reports: off, on (float16) or on (bfloat16)."""
    return {"float32": "off", "mixed_float16": "on (float16)", "mixed_bfloat16": "on (bfloat16)"}[
        recorded_policy(runtime)
    ]


_runtime: RuntimeSettings | None = None
#: What configure_tensorflow resolved, before a run adjusted it (precision_for_run): each run of a
#: process (a reused sweep worker's trials) starts from it again.
_resolved: RuntimeSettings | None = None


def check_mixed_precision(value: str) -> str:
    """``value`` if it is one of auto/on/bf16/off (case-insensitive; float16 and bfloat16 are aliases), else a
    ConfigError saying which to use."""
    choice = str(value).strip().lower()
    aliases = {"1": "on", "true": "on", "float16": "on", "bfloat16": "bf16", "0": "off", "false": "off"}
    choice = aliases.get(choice, choice)
    if choice not in MIXED_PRECISION_CHOICES:
        raise ConfigError(
            f"mixed precision {value!r}: choose one of {', '.join(MIXED_PRECISION_CHOICES)} "
            f"(--mixed-precision or {MIXED_PRECISION_ENV})"
        )
    return choice


def check_threads(value: int | str | None) -> int | None:
    """A thread count (None or 0: TensorFlow's default), else a ConfigError naming the value."""
    if value is None or value == "":
        return None
    try:
        threads = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"threads {value!r} is not a whole number (--threads or {THREADS_ENV})") from None
    if threads < 0:
        raise ConfigError(f"threads must be 0 (TensorFlow's default) or more, got {threads}")
    return threads or None


def resolve_mixed_precision(
    choice: str, gpu_capabilities: Sequence[tuple[int, int] | None], cpu_bf16: bool = False
) -> tuple[str, str]:
    """(Keras policy, reason) for ``choice`` given the visible GPUs' compute capabilities (None:
    unknown) and whether the CPU has native bfloat16 (:func:`cpu_has_bf16`).

    ``auto``: float16 when every visible GPU has tensor cores; without a GPU, bfloat16 on a CPU
    with native bfloat16 (``AUTO_BF16_ON_CPU``, measured); else float32.
    """
    if choice == "on":
        return "mixed_float16", "on as asked" + (
            "" if gpu_capabilities else "; no GPU visible, float16 is slow on CPUs"
        )
    if choice == "bf16":
        slow = not gpu_capabilities and not cpu_bf16
        return "mixed_bfloat16", "bf16 as asked" + ("; this CPU has no native bfloat16, it is slow" if slow else "")
    if choice == "off":
        return "float32", "off as asked"
    if not gpu_capabilities:
        if cpu_bf16 and AUTO_BF16_ON_CPU:
            return "mixed_bfloat16", "auto: no GPU visible, the CPU has native bfloat16"
        return "float32", "auto: no GPU visible"
    shown = ", ".join("unknown" if c is None else f"{c[0]}.{c[1]}" for c in gpu_capabilities)
    if all(c is not None and c >= MIXED_PRECISION_MIN_CAPABILITY for c in gpu_capabilities):
        return "mixed_float16", f"auto: GPU compute capability {shown}"
    low = ".".join(map(str, MIXED_PRECISION_MIN_CAPABILITY))
    return "float32", f"auto: GPU compute capability {shown}, below {low} on some GPU"


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has native bfloat16 dot products (a flag of ``CPU_BF16_FLAGS`` in Linux's
    /proc/cpuinfo; elsewhere False: auto then stays float32)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
                cpuinfo = file.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return any(flag in line.split() for flag in CPU_BF16_FLAGS)
    return False


def configure_tensorflow(threads: int | None = None, mixed_precision: str | None = None) -> RuntimeSettings:
    """Set TensorFlow's CPU thread pools, GPU memory growth and mixed precision, once per process.

    ``threads`` (else ``SEGSWEEP_THREADS``) caps intra-op parallelism, so concurrent trials on one
    machine do not each spawn a thread per core and thrash. GPUs grow memory on demand, so that
    fractional-GPU trials can share a card. ``mixed_precision`` (else ``SEGSWEEP_MIXED_PRECISION``,
    else auto) decides the Keras policy of the models build_model makes from now on. Thread pools
    cannot change once TensorFlow has started: later calls keep the first thread count.
    """
    global _runtime, _resolved
    import tensorflow as tf

    if _runtime is not None and threads is None and mixed_precision is None:
        return _runtime  # fit() calls this on every run; the settings given first stand
    if mixed_precision is None:
        mixed_precision = os.environ.get(MIXED_PRECISION_ENV) or "auto"
    choice = check_mixed_precision(mixed_precision)
    if threads is None:
        threads = check_threads(os.environ.get(THREADS_ENV))
    threads = check_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    if _runtime is None:
        try:
            if threads:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # TensorFlow was initialised already in this process; its settings stand.
    else:
        threads = _runtime.threads
    capabilities = [_capability(gpu) for gpu in gpus]
    policy, reason = resolve_mixed_precision(choice, capabilities, cpu_has_bf16())
    _runtime = RuntimeSettings(
        choice, policy != "float32", reason,
        # What TensorFlow holds (0: its default), not what was asked: pools set earlier in the process stand.
        tf.config.threading.get_intra_op_parallelism_threads() or None,
        tuple(gpu.name for gpu in gpus),
        inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads() or None,
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        versions=tuple(library_versions().items()),
        mixed_precision_policy=policy,
        onednn_opts=os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    )  # fmt: skip
    _resolved = _runtime
    return _runtime


def precision_for_run(config: CVConfig) -> RuntimeSettings:
    """The settings one run (a cross-validation, a retrain) of ``config`` starts with: what
    configure_tensorflow resolved, with ``auto``'s bfloat16 on a CPU kept for the encoders measured
    faster in it (``AUTO_BF16_ENCODER_PREFIXES``), float32 for the others. A run's own adjustments
    (follow_recorded_precision) end with it: the next run of the process starts here again."""
    global _runtime
    base = _resolved if _resolved is not None and _runtime is not None else runtime_settings()
    _runtime = base
    if (
        base.mixed_precision == "auto"
        and base.mixed_precision_policy == "mixed_bfloat16"
        and not base.gpus
        and not config.encoder.startswith(AUTO_BF16_ENCODER_PREFIXES)
    ):
        _runtime = _with_policy(
            base, "float32", f"auto: no GPU visible; bfloat16 is not measured faster for {config.encoder}"
        )
    return _runtime


def follow_recorded_precision(recorded: Mapping[str, Any], why: str = "as the run it resumes ran") -> RuntimeSettings:
    """Under ``auto``, train with the precision ``recorded`` (a resumed run's finished folds) ran with,
    so that a run resumed on another machine or segsweep version stays one precision; an explicit
    choice stands. ``why`` ends the recorded reason. Returns the settings in force."""
    global _runtime
    current = runtime_settings()
    policy = recorded_policy(recorded)
    if current.mixed_precision != "auto" or policy == current.mixed_precision_policy:
        return current
    _runtime = _with_policy(current, policy, f"auto: {precision_label(recorded)}, {why}")
    return _runtime


def _with_policy(settings: RuntimeSettings, policy: str, reason: str) -> RuntimeSettings:
    """``settings`` training under ``policy`` for ``reason`` (``mixed_precision_enabled`` follows it)."""
    return replace(
        settings, mixed_precision_policy=policy, mixed_precision_enabled=policy != "float32",
        mixed_precision_reason=reason,
    )  # fmt: skip


def library_versions() -> dict[str, str]:
    """The installed versions that change a run's numbers (recorded with every run)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    from segsweep.base import version

    found = {"segsweep": version()}
    for name in ("tensorflow", "tf-keras", "segmentation-models"):
        try:
            found[name] = package_version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def recorded_runtime_options(recorded: Mapping[str, Any], source: str) -> tuple[int, str]:
    """(--threads, --mixed-precision) that repeat a recorded run's ``runtime`` (its threads, 0 for one
    per core, and its resolved precision), for ``cv --config`` on a cv.json or best.json."""
    threads = recorded.get("threads")
    enabled = recorded.get("mixed_precision_enabled")
    if not isinstance(enabled, bool) or not (threads is None or (isinstance(threads, int) and threads >= 0)):
        raise ConfigError(
            f"{source}: `runtime` is not as segsweep records it (threads a whole number or null, "
            "mixed_precision_enabled true or false); fix or remove it"
        )
    choice = {policy: name for name, policy in PRECISION_POLICIES.items()}[recorded_policy(recorded)]
    return threads or 0, choice


def runtime_differences(recorded: Mapping[str, Any], current: RuntimeSettings) -> list[str]:
    """What differs between a recorded run's ``runtime`` and this process's settings, one phrase each
    ("TensorFlow threads 2 (recorded 1)"); empty when nothing recorded differs."""

    def intra(threads: Any, cpus: Any) -> Any:
        return threads or cpus  # one per core: as many as the process may use

    pairs: list[tuple[str, Any, Any]] = [
        ("TensorFlow threads", intra(current.threads, current.cpus),
         intra(recorded.get("threads"), recorded.get("cpus"))),
        ("inter-op threads", current.inter_op_threads, recorded.get("inter_op_threads", current.inter_op_threads)),
        ("mixed precision", precision_label(current.to_dict()),
         precision_label(recorded) if "mixed_precision_enabled" in recorded else None),
        ("TF_ENABLE_ONEDNN_OPTS", current.onednn_opts, recorded.get("onednn_opts")),
    ]  # fmt: skip
    versions = recorded.get("versions")
    recorded_versions: Mapping[str, Any] = versions if isinstance(versions, Mapping) else {}
    pairs += [(name, value, recorded_versions.get(name, value)) for name, value in current.versions]
    return [f"{name} {now} (recorded {then})" for name, now, then in pairs if now != then and then is not None]


def _capability(gpu: Any) -> tuple[int, int] | None:
    import tensorflow as tf

    try:
        value = tf.config.experimental.get_device_details(gpu).get("compute_capability")
    except (RuntimeError, ValueError):
        return None
    return (int(value[0]), int(value[1])) if value else None


def runtime_settings() -> RuntimeSettings:
    """The settings in force (configured from the environment on first use)."""
    return _runtime or configure_tensorflow()


def preprocessing(encoder: str) -> Callable[[np.ndarray], np.ndarray]:
    """The encoder's own input preprocessing (RGB float 0..255 in), as its ImageNet weights expect.

    The paper's notebooks fed raw BGR pixels to ImageNet encoders; segsweep feeds RGB through this.
    """
    import segmentation_models as sm

    fn: Callable[[np.ndarray], np.ndarray] = sm.get_preprocessing(encoder)
    return fn


def prepare_inputs(images: np.ndarray, encoder: str) -> np.ndarray:
    """uint8 RGB images (N, S, S, 3) -> float32 model inputs, through the encoder's preprocessing."""
    return np.asarray(preprocessing(encoder)(images.astype(np.float32)), dtype=np.float32)


def build_model(config: CVConfig, *, mixed_precision: bool | None = None, dtype: str | None = None) -> tf_keras.Model:
    """Build the configured architecture with encoder weights per ``config.weights`` (not compiled).

    The model is built with ``encoder_weights=None`` and the weights file is loaded afterwards by
    trainer.weights, which checks the file first and fails with a clear message offline, instead of
    letting Keras download (and delete on a hash mismatch) inside segmentation-models.
    ``mixed_precision`` None follows :func:`runtime_settings`; prediction passes False (float32).
    ``dtype`` ("float64") builds every layer in that type instead (export's exact reference).
    """
    import segmentation_models as sm
    import tf_keras

    builders: dict[str, Any] = {"unet": sm.Unet, "fpn": sm.FPN, "linknet": sm.Linknet}
    # Before any layer exists: dropout then draws from a tf.random.Generator whose state is a variable
    # that reseed_random_layers sets per (seed, epoch). The legacy stateful ops keep their state in
    # the traced training graph, which folds reuse, so fold 2 after fold 1 drew other dropout masks
    # than fold 2 in a fresh process (a resumed sweep scored it differently). Initializers are
    # stateless either way: initial weights do not change.
    tf_keras.backend.experimental.enable_tf_random_generator()
    mixed = mixed_precision_enabled() if mixed_precision is None else mixed_precision
    policy = dtype or (mixed_precision_policy() if mixed else "float32")
    # Set every time: a process (a reused sweep worker) may build models under several settings.
    tf_keras.mixed_precision.set_global_policy(policy)
    weights_path = None
    if config.pretrained:
        from trainer.weights import resolve_weights

        weights_path = resolve_weights(config.encoder, config.weights)
    model = builders[config.arch](
        config.encoder,
        input_shape=(config.image_size, config.image_size, 3),
        classes=1,
        activation="sigmoid",
        encoder_weights=None,
    )
    if weights_path is not None:
        from trainer.weights import load_encoder_weights

        load_encoder_weights(model, weights_path, config.encoder)
    if policy.startswith("mixed_"):
        # The sigmoid ran in float16 or bfloat16; the loss and metric get float32 (Keras' mixed-precision rule:
        # the model's output layer in float32), so the IoU loss does not lose precision near 0 and 1.
        output = tf_keras.layers.Activation("linear", dtype="float32", name="output_float32")(model.output)
        model = tf_keras.Model(model.input, output, name=model.name)
    return model


def compile_model(model: tf_keras.Model, config: CVConfig, lr: float | None = None) -> None:
    """Adam at the configured learning rate, the configured loss, and per-image IoU at 0.5 as ``iou``.

    The Keras metric only steers the learning-rate schedule; folds are scored afterwards by
    trainer.metrics with the MedAI rules.
    """
    import segmentation_models as sm
    import tf_keras

    # Under the mixed_float16 policy Keras wraps Adam in a LossScaleOptimizer itself.
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate=lr if lr is not None else config.lr),
        loss=make_loss(config.loss),
        metrics=[sm.metrics.IOUScore(threshold=0.5, per_image=True, name="iou")],
    )


def mixed_precision_policy() -> str:
    """The Keras policy models of this process train under (float32, mixed_float16, mixed_bfloat16)."""
    return runtime_settings().mixed_precision_policy


def mixed_precision_enabled() -> bool:
    """Whether models train with reduced-precision compute, float32 weights and output
    (``--mixed-precision``: float16, or bfloat16 with ``bf16`` or ``auto`` on a bfloat16 CPU).

    On GPUs with tensor cores (V100, A100, H100...) float16 roughly halves activation memory and
    speeds up convolutions; on CPUs float16 is slower, while bfloat16 is faster where the CPU has it
    natively (benchmarks/README.md, section 7). Off, results match the paper's float32.
    """
    return runtime_settings().mixed_precision_enabled


# One compiled model per process, kept between folds (and between trials of a reused sweep worker)
# while the configuration's graph stays the same: (key, model, initial weights).
_reusable: tuple[tuple[Any, ...], Any, list[np.ndarray]] | None = None


def model_for_fold(config: CVConfig) -> tf_keras.Model:
    """A compiled model of ``config`` in its initial state, ready for ``fit(..., compile=False)``.

    The first call builds and compiles it (initial weights drawn under ``config.seed``, ImageNet or
    file weights loaded); later calls with the same architecture, encoder, weights, size, loss and
    seed restore those initial weights and reset the optimizer instead, so Keras's traced training
    graph is reused rather than traced again for every fold.
    """
    global _reusable, _float32_twin
    import tf_keras

    key = (
        config.arch,
        config.encoder,
        config.weights,
        config.image_size,
        config.loss,
        config.seed,
        mixed_precision_policy(),
    )
    if _reusable is None or _reusable[0] != key:
        _reusable = None
        _float32_twin = None
        tf_keras.backend.clear_session()  # drop the previous configuration's model and graphs
        tf_keras.utils.set_random_seed(config.seed)
        model = build_model(config)
        compile_model(model, config)
        _reusable = (key, model, model.get_weights())
    else:
        model = _reusable[1]
        model.set_weights(_reusable[2])
    reset_optimizer(model, config.lr)
    return model


# A float32 model per process to score reduced-precision models with: (key, model).
_float32_twin: tuple[tuple[Any, ...], Any] | None = None


def float32_model(model: tf_keras.Model, config: CVConfig) -> tf_keras.Model:
    """``model`` when every layer computes in float32; else a float32 model of ``config`` holding
    ``model``'s weights (built once per configuration and process).

    Folds are scored with it: bundles load in float32 (trainer.bundle), so a fold's recorded Dice is
    what its saved model predicts, whatever precision it trained in.
    """
    global _float32_twin
    if all(getattr(layer, "compute_dtype", "float32") in (None, "float32") for layer in model.layers):
        return model
    key = (config.arch, config.encoder, config.image_size)
    if _float32_twin is None or _float32_twin[0] != key:
        _float32_twin = (key, build_model(replace(config, weights="none"), mixed_precision=False))
    twin = _float32_twin[1]
    twin.set_weights(model.get_weights())
    return twin


def reset_optimizer(model: tf_keras.Model, lr: float) -> None:
    """Zero the optimizer's step counter and moment estimates, set its learning rate, and put a
    mixed-precision loss scale back to its initial value (a fresh process starts there too)."""
    import tensorflow as tf
    import tf_keras

    optimizer = model.optimizer
    for variable in optimizer.variables:  # a LossScaleOptimizer's are the inner optimizer's
        variable.assign(tf.zeros(variable.shape, variable.dtype))
    tf_keras.backend.set_value(optimizer.learning_rate, lr)
    if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer) and optimizer.dynamic:
        # Not among optimizer.variables: without this a fold would start from the scale the
        # previous fold of the process ended with. Keras has no public setter for it.
        state = optimizer._loss_scale
        state.current_loss_scale.assign(state.initial_loss_scale)
        state.counter.assign(0)


def reseed_random_layers(model: tf_keras.Model, seed: int, epoch: int) -> int:
    """Set every layer's random stream (dropout) to a state drawn from (seed, epoch, the layer's
    place in name order); return how many there are.

    Called as each epoch begins (trainer.training), so an epoch's dropout masks, like its shuffle
    and augmentations, depend on the seed and the epoch alone: not on what the process trained
    before, and not on whether the fold was resumed from a checkpoint.
    """
    layers = sorted((layer for layer in model.submodules if hasattr(layer, "_random_generator")),
                    key=lambda layer: layer.name)  # fmt: skip
    count = 0
    for place, layer in enumerate(layers):
        # tf_keras keeps a layer's stream in _random_generator (a BaseRandomLayer's); with the TF
        # random generator on (build_model) its tf.random.Generator is _generator, made on first use.
        stream = layer._random_generator
        if stream._rng_type == stream.RNG_STATELESS:
            continue  # no state: its draws depend on its seed alone
        stream._maybe_init()
        generator = stream._generator
        if generator is None:
            raise RuntimeError(
                f"layer {layer.name} draws from a legacy random op whose state cannot be reset; "
                "build models with trainer.models.build_model"
            )
        state = np.random.SeedSequence([seed & 0xFFFF_FFFF_FFFF_FFFF, epoch, place]).generate_state(1, np.uint64)
        generator.reset_from_seed(int(state[0] >> np.uint64(1)))  # a non-negative int64
        count += 1
    return count
