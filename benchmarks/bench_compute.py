"""Compute: how much of the CPU a fold's training uses, where the rest of a trial's time goes, and the levers.

In one run, each measurement in a fresh worker process (this script with ``--worker``; thread pools,
oneDNN and XLA auto-clustering are fixed when TensorFlow starts, so every setting needs its own process):

(a) the ceiling: dense float32 matmul FLOP/s of numpy and of TensorFlow (N x N, best of repeats), the
    higher of the two, with the worker's threads (numpy's BLAS threads follow the same count);
(b) the FLOPs of one training step of each model, counted by TensorFlow's profiler
    (``tf.compat.v1.profiler`` with ``float_operation`` options) on the graph of the model's traced
    ``train_step`` (a concrete function of the compiled model, fixed batch shape): a graph count of
    the ops the profiler has FLOP statistics for (convolutions and their gradients, matmuls,
    element-wise ops), not an analytic formula; forward alone likewise, and the FLOPs per op type;
(c) the achieved FLOP/s of ``trainer.training.fit`` on them: step FLOPs x steps / the time inside
    Keras' training steps (from a batch's begin to its end, epochs after the first, which traces),
    and ratio achieved / ceiling. Beside it ``train_on_batch`` on one fixed batch (compute alone).

Each training is one fold of ``trainer.cv.run_cv`` (one given train/validation split), the trainer's
own path: model build (``model_for_fold``), ``fit`` with its callbacks (BN re-estimation before each
validation, plateau rule, epoch recorder, epoch checkpoint with its own due rule), prediction and
MedAI scoring. The worker wraps those code paths to time them: the share of a steady epoch spent
outside training steps is split into validation, batch-norm re-estimation, checkpoint saves, the
other callbacks and the rest (Keras' loop); the data generator's busy time (on tf.data's thread,
overlapped by prefetch) is recorded apart. A trial's wall time (the worker process, TensorFlow's
start-up included) is set against the time of its training steps: the goal is <= 1.15x.

Levers, each against today's default (TensorFlow's own thread pools, oneDNN on, no XLA) in the
same run: XLA (``jit_compile=True`` on the compiled model; and auto-clustering,
``TF_XLA_FLAGS=--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit``), intra/inter-op threads, oneDNN off
(``TF_ENABLE_ONEDNN_OPTS=0``), batch size (images/s), bfloat16 compute (``--mixed-precision bf16``;
every other row pins float32, whatever ``auto`` resolves to here), and for K cores the layouts K
trials of 1 thread, K/2 of 2, 1 of K, in float32 and in bfloat16 (workers started together;
trial-minutes per trial, trials per hour, each against K x 1 float32: the sweep default before
bfloat16). ``--precision-only`` runs the float32 and bfloat16 rows alone.
Result check: every row's fold Dice against the default's; the thread-count noise is the largest
Dice difference among the layouts' thread counts (same configuration, only threads differ). A
lever that changes Dice by more than that noise changes results, not just speed (batch size
changes them by design).

The full mode takes about an hour on an idle 2-core machine; run it only on a quiet machine
(README). ``--quick`` (CI): one tiny model at 64 px, a few steps, the default, one thread and the
XLA lever. Ratio: achieved FLOP/s of fit / matmul ceiling, the first model at today's default.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common

NAME = "compute"
#: Hooks of a Keras callback whose time the worker counts as "callbacks".
_HOOKS = (
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_test_end",
    "on_train_begin",
    "on_train_end",
)
#: oneDNN's and XLA's switches, and the BLAS thread variables a worker's numpy ceiling follows.
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
#: The trainer's precision switch: every row names its precision (float32 unless the row is bfloat16's),
#: so a row measures the same thing whatever ``auto`` resolves to on the machine.
PRECISION_ENV = "SEGSWEEP_MIXED_PRECISION"
BF16 = {PRECISION_ENV: "bf16"}
XLA_AUTO_JIT = {"TF_XLA_FLAGS": "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"}
BLAS_THREAD_ENVS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class WorkerSpec:
    """One training measured in a fresh process: the model, the data, and the setting under test."""

    label: str
    encoder: str
    arch: str
    image_size: int
    batch_size: int
    epochs: int
    data_root: str
    cache_dir: str
    out_dir: str
    n_pairs: int
    n_val: int
    #: intra-op threads through SEGSWEEP_THREADS (inter then min(2, intra), as a sweep's trial sets); None: TF's.
    threads: int | None = None
    #: inter-op threads: with it, both pools are set directly before TensorFlow starts (no SEGSWEEP_THREADS).
    inter_op: int | None = None
    jit_compile: bool = False
    env: dict[str, str] = field(default_factory=dict)
    profile: bool = False
    ceiling_n: int = 0
    bare_steps: int = 0


# --- the worker: runs in its own process ---------------------------------------------------------------


def matmul_ceiling(n: int, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of an n x n float32 matmul (2 n^3 FLOPs), best of ``repeats``, for numpy and TensorFlow."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n**3

    def best(run: Callable[[], object]) -> float:
        run()  # warm-up: thread pools, kernel choice
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return flops / min(times)

    ta, tb = tf.constant(a), tf.constant(b)
    numpy_rate = best(lambda: a @ b)
    tf_rate = best(lambda: tf.linalg.matmul(ta, tb).numpy())
    return {"n": n, "numpy_flops": numpy_rate, "tensorflow_flops": tf_rate, "flops": max(numpy_rate, tf_rate)}


def profile_flops(model: Any, batch: int, size: int) -> dict[str, Any]:
    """FLOPs of one training step and of one forward pass, by TensorFlow's profiler on the traced graphs."""
    import tensorflow as tf

    x = tf.TensorSpec((batch, size, size, 3), tf.float32)
    y = tf.TensorSpec((batch, size, size, 1), tf.float32)
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()

    def count(graph: Any) -> tuple[int, dict[str, int]]:
        by_op = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
        # The op view nests each op type under the one before it (totals are cumulative): walk it for
        # each type's own count.
        per_type: dict[str, int] = {}
        nodes = list(by_op.children)
        while nodes:
            node = nodes.pop()
            if node.float_ops:
                per_type[node.name] = per_type.get(node.name, 0) + int(node.float_ops)
            nodes.extend(node.children)
        return int(by_op.total_float_ops), dict(sorted(per_type.items(), key=lambda kv: -kv[1]))

    # train_step is what Keras' train_function runs per batch (forward, loss, gradients, Adam, metrics).
    step = tf.function(lambda a, b: model.train_step((a, b))).get_concrete_function(x, y)
    forward = tf.function(lambda a: model(a, training=False)).get_concrete_function(x)
    step_flops, step_ops = count(step.graph)
    forward_flops, _ = count(forward.graph)
    return {"step_flops": step_flops, "forward_flops": forward_flops, "step_flops_by_op": step_ops}


class _Clock:
    """What the worker's wrappers add up, in seconds."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def add(self, key: str, seconds: float) -> None:
        self.totals[key] = self.totals.get(key, 0.0) + seconds

    def timed(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)  # copies Keras' _is_default marker too: default hooks stay skipped
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(key, time.perf_counter() - started)

        return wrapper


def _epoch_timers(epochs: list[dict[str, Any]], clock: _Clock) -> tuple[Any, Any]:
    """Two callbacks: the first of the list marks an epoch's start and a step's end, the last a step's
    start and the epoch's end, so a step is Keras' train function alone and an epoch everything.
    Each epoch also records what the wrapped code paths (``clock``) took during it."""
    import tf_keras

    state: dict[str, Any] = {}

    class First(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            state.update(begin=time.perf_counter(), steps=[], test_begin=None, test_end=None)
            state["clock"] = dict(clock.totals)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            state["steps"].append(time.perf_counter() - state["step_begin"])

        def on_test_begin(self, logs: Any = None) -> None:
            state["test_begin"] = time.perf_counter()

    class Last(tf_keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            state["step_begin"] = time.perf_counter()

        def on_test_end(self, logs: Any = None) -> None:
            state["test_end"] = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            test = (state["test_end"] or 0.0) - (state["test_begin"] or 0.0)
            during = {key: value - state["clock"].get(key, 0.0) for key, value in clock.totals.items()}
            epochs.append(
                {
                    "seconds": time.perf_counter() - state["begin"],
                    "steps": list(state["steps"]),
                    "test": test,
                    "clock": during,
                }
            )

    return First(), Last()


def run_worker(spec: WorkerSpec) -> dict[str, Any]:
    """Train ``spec``'s fold through trainer.cv.run_cv with its code paths timed; what it measured."""
    started = time.perf_counter()
    import numpy as np
    import tensorflow as tf

    if spec.inter_op is not None:
        tf.config.threading.set_inter_op_parallelism_threads(spec.inter_op)
    if spec.threads is not None and spec.inter_op is not None:
        tf.config.threading.set_intra_op_parallelism_threads(spec.threads)

    import trainer.batchnorm
    import trainer.callbacks
    import trainer.checkpoint
    import trainer.models
    import trainer.training
    from trainer.config import CVConfig
    from trainer.cv import run_cv
    from trainer.data import prepare_dataset
    from trainer.models import configure_tensorflow

    runtime = configure_tensorflow()
    imported = time.perf_counter() - started
    before = matmul_ceiling(spec.ceiling_n) if spec.ceiling_n else {}
    clock = _Clock()
    epochs: list[dict[str, Any]] = []
    models: list[Any] = []

    compile_model = trainer.models.compile_model

    def compile_with_jit(model: Any, config: Any, lr: float | None = None) -> None:
        compile_model(model, config, lr)
        if spec.jit_compile:
            model.jit_compile = True

    model_for_fold = trainer.models.model_for_fold

    def model_for_fold_kept(config: Any) -> Any:
        model = model_for_fold(config)
        models.append(model)
        return model

    fit_callbacks = trainer.callbacks.fit_callbacks

    def fit_callbacks_timed(*args: Any, **kwargs: Any) -> list[Any]:
        callbacks = fit_callbacks(*args, **kwargs)
        base = tf_keras_callback()
        for callback in callbacks:
            for hook in _HOOKS:
                if getattr(type(callback), hook, None) is not getattr(base, hook):
                    setattr(callback, hook, clock.timed("callbacks", getattr(callback, hook)))
        first, last = _epoch_timers(epochs, clock)
        return [first, *callbacks, last]

    epoch_of = trainer.training.BatchSource.epoch

    def epoch_timed(self: Any, number: int = 0) -> Iterator[tuple[Any, Any]]:
        produced = epoch_of(self, number)
        while True:
            begin = time.perf_counter()
            try:
                batch = next(produced)
            except StopIteration:
                return
            finally:
                clock.add("data_generator", time.perf_counter() - begin)
            yield batch

    trainer.models.compile_model = compile_with_jit
    trainer.training.model_for_fold = clock.timed("model_build", model_for_fold_kept)
    trainer.training.fit = clock.timed("fit", trainer.training.fit)
    trainer.callbacks.fit_callbacks = fit_callbacks_timed
    trainer.training.BatchSource.epoch = epoch_timed  # type: ignore[method-assign]
    trainer.batchnorm.reestimate_batchnorm = clock.timed("bn_reestimation", trainer.batchnorm.reestimate_batchnorm)
    trainer.checkpoint.EpochCheckpoint.save = clock.timed(  # type: ignore[method-assign]
        "checkpoint", trainer.checkpoint.EpochCheckpoint.save
    )

    data = prepare_dataset(
        spec.data_root, spec.image_size, limit=spec.n_pairs, cache_dir=spec.cache_dir, progress=False
    )
    config = CVConfig(
        encoder=spec.encoder,
        arch=spec.arch,
        weights="none",
        image_size=spec.image_size,
        batch_size=spec.batch_size,
        epochs=spec.epochs,
        seed=0,
        augment=True,
        loss="bce_dice",
    )
    val_stems = list(data.stems[-spec.n_val :])
    result: dict[str, Any] = {"label": spec.label, "imported_seconds": imported, "runtime": runtime.to_dict()}
    cv_started = time.perf_counter()
    try:
        cv = run_cv(config, data, spec.out_dir, val_stems=val_stems)
    except Exception as exc:  # a lever that does not run here (XLA on CPU) is a row that says why
        result["error"] = _error_line(exc)
        result["seconds_total"] = time.perf_counter() - started
        return result
    result["cv_seconds"] = time.perf_counter() - cv_started
    fold = cv.folds[0]
    result.update(dice=fold.dice, iou=fold.iou, n_train=fold.n_train, n_val=fold.n_val, epochs=epochs)
    result["clock"] = clock.totals
    model = models[-1]
    if spec.bare_steps:
        x = np.asarray(
            trainer.models.prepare_inputs(np.asarray(data.images[: spec.batch_size]), spec.encoder), np.float32
        )
        y = np.asarray(data.masks[: spec.batch_size], np.float32)
        model.train_on_batch(x, y)
        times = []
        for _ in range(spec.bare_steps):
            begin = time.perf_counter()
            model.train_on_batch(x, y)
            times.append(time.perf_counter() - begin)
        result["bare_step_seconds"] = statistics.median(times)
    if spec.ceiling_n:
        # Also measured before training: the ceiling is a maximum, and a shared machine's load changes.
        after = matmul_ceiling(spec.ceiling_n)
        result["ceiling"] = max(before, after, key=lambda c: c["flops"])
        result["ceiling_before_and_after"] = [before, after]
    if spec.profile:
        result["profile"] = profile_flops(model, spec.batch_size, spec.image_size)
    result["seconds_total"] = time.perf_counter() - started
    return result


def _error_line(exc: BaseException) -> str:
    """The line of an error that says what failed (TensorFlow's first line is often "Graph execution error:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if any(k in line for k in ("unsupported", "No registered", "not supported"))]
    return f"{type(exc).__name__}: {(telling or lines or [''])[0][:300]}"


def tf_keras_callback() -> Any:
    import tf_keras

    return tf_keras.callbacks.Callback


# --- the orchestrator ---------------------------------------------------------------------------------


def worker_env(spec: WorkerSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SEGSWEEP_THREADS", ONEDNN_ENV, "TF_XLA_FLAGS")}
    env["SEGSWEEP_CACHE"] = spec.cache_dir
    env[PRECISION_ENV] = "off"
    if spec.threads is not None:
        if spec.inter_op is None:  # else the worker sets both pools itself (SEGSWEEP_THREADS would reset inter)
            env["SEGSWEEP_THREADS"] = str(spec.threads)
        env.update({name: str(spec.threads) for name in BLAS_THREAD_ENVS})
    env.update(spec.env)
    return env


def start_worker(spec: WorkerSpec, result_path: Path) -> tuple[subprocess.Popen[bytes], float]:
    Path(spec.out_dir).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(spec)), str(result_path)]
    log = open(Path(spec.out_dir) / "worker.log", "wb")  # noqa: SIM115  (closed with the process below)
    proc = subprocess.Popen(command, env=worker_env(spec), stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc, time.perf_counter()


def run_group(specs: list[WorkerSpec], tmp: Path) -> list[dict[str, Any]]:
    """Start ``specs`` together, wait for all; each result with its process's wall time (``wall``)."""
    running = []
    for spec in specs:
        path = tmp / f"{spec.label}.{len(list(tmp.glob('*.json')))}.json".replace(" ", "_").replace("/", "-")
        running.append((spec, path, *start_worker(spec, path)))
    results = []
    for spec, path, proc, begun in running:
        code = proc.wait()
        wall = time.perf_counter() - begun
        if code != 0 or not path.is_file():
            log = (Path(spec.out_dir) / "worker.log").read_text(errors="replace").strip().splitlines()
            results.append(
                {"label": spec.label, "error": f"worker exit {code}: {(log or [''])[-1][:300]}", "wall": wall}
            )
            continue
        results.append({**json.loads(path.read_text()), "wall": wall})
    return results


def summarise(result: dict[str, Any], spec: WorkerSpec) -> dict[str, Any]:
    """Rates and shares of one worker's result (epochs after the first; the first traces)."""
    if "error" in result:
        return result
    steady = result["epochs"][1:] or result["epochs"]
    steps = [s for epoch in steady for s in epoch["steps"]]
    step_seconds = sum(steps)
    epoch_seconds = sum(e["seconds"] for e in steady)
    # The trial's training-step time: every step at the steady median (the first steps trace the graph,
    # which is start-up, not training).
    all_steps = statistics.median(steps) * sum(len(e["steps"]) for e in result["epochs"])
    n_epochs = len(steady)

    def mean(key: str) -> float:
        """Per steady epoch, seconds in a wrapped code path."""
        return statistics.fmean(e["clock"].get(key, 0.0) for e in steady)

    bn = mean("bn_reestimation")
    ckpt = mean("checkpoint")
    callbacks = mean("callbacks") - bn - ckpt  # both run inside callbacks
    validation = statistics.fmean(e["test"] for e in steady) - bn  # re-estimation runs as validation begins
    epoch_mean = epoch_seconds / n_epochs
    step_mean = step_seconds / n_epochs
    outside = epoch_mean - step_mean
    summary = {
        **result,
        "images_per_second": result["n_train"] * n_epochs / epoch_seconds,
        "train_images_per_second": spec.batch_size * len(steps) / step_seconds,
        "step_seconds": statistics.median(steps),
        "share_outside_steps": outside / epoch_mean,
        "split_seconds_per_epoch": {
            "epoch": epoch_mean,
            "training_steps": step_mean,
            "validation": validation,
            "bn_reestimation": bn,
            "checkpoint": ckpt,
            "other_callbacks": callbacks,
            "rest_keras_loop": outside - validation - bn - ckpt - callbacks,
            "data_generator_overlapped": mean("data_generator"),
        },
        "trial_over_steps": result["wall"] / all_steps,
    }
    if "profile" in result:
        flops = result["profile"]["step_flops"]
        summary["achieved_flops"] = flops / summary["step_seconds"]
        if "bare_step_seconds" in result:
            summary["bare_flops"] = flops / result["bare_step_seconds"]
    return summary


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        spec = WorkerSpec(**json.loads(argv[1]))
        Path(argv[2]).write_text(json.dumps(run_worker(spec), default=float))
        return
    p = _common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument(
        "--precision-only",
        action="store_true",
        help="full mode's float32 and bfloat16 rows alone: each model in both, and the layouts in both (~25 min)",
    )
    p.add_argument(
        "--dice-check",
        type=int,
        metavar="EPOCHS",
        default=0,
        help="only the result check: one fold of EPOCHS epochs in float32 and bfloat16 at 1 thread and at every "
        "core, run at once; ratio: bfloat16's largest Dice change / the thread-count noise",
    )
    p.add_argument(
        "--layers",
        action="store_true",
        help="only the first model's convolutions, each alone at its shapes (forward and both gradients), "
        "against the matmul ceiling; ratio: all of them together / the ceiling",
    )
    args = p.parse_args(argv)
    if args.layers:
        _layers(args, quick_plan() if args.quick else FULL)
        return
    run(args)


@dataclass(frozen=True)
class Plan:
    models: list[tuple[str, str]]
    image_size: int
    batch_size: int
    n_train: int
    n_val: int
    epochs: int
    ceiling_n: int
    batch_sizes: list[int]


FULL = Plan(
    models=[("resnet18", "unet"), ("seresnet18", "linknet")],
    image_size=128,
    batch_size=8,
    # One fold of the cpu space: 3-fold CV of Kvasir-SEG's 880 development pairs.
    n_train=587,
    n_val=293,
    epochs=3,
    ceiling_n=2048,
    batch_sizes=[4, 16],
)


def quick_plan() -> Plan:
    from tests.support import TINY_ENCODER

    return Plan(
        models=[(TINY_ENCODER, "unet")],
        image_size=64,
        batch_size=4,
        n_train=8,
        n_val=4,
        epochs=2,
        ceiling_n=512,
        batch_sizes=[],
    )


def run(args: argparse.Namespace) -> None:
    from trainer.data import prepare_dataset

    plan = quick_plan() if args.quick else FULL
    cores = os.cpu_count() or 1
    with _common.temporary_dir("compute") as tmp:
        root = _common.real_data(args)
        if root is None:
            root = _common.synthetic_dataset(tmp / "data", plan.n_train + plan.n_val, size=plan.image_size)
        cache = tmp / "cache"
        data = prepare_dataset(root, plan.image_size, limit=plan.n_train + plan.n_val, cache_dir=cache, progress=False)
        counter = iter(range(10_000))

        def spec(label: str, encoder: str, arch: str, **change: Any) -> WorkerSpec:
            values: dict[str, Any] = {
                "label": label,
                "encoder": encoder,
                "arch": arch,
                "image_size": plan.image_size,
                "batch_size": plan.batch_size,
                "epochs": plan.epochs,
                "data_root": str(root),
                "cache_dir": str(cache),
                "out_dir": str(tmp / f"run{next(counter):03d}"),
                "n_pairs": len(data),
                "n_val": plan.n_val,
            }
            values.update(change)
            return WorkerSpec(**values)

        rows: list[tuple[WorkerSpec, dict[str, Any]]] = []
        if args.dice_check:
            _dice_check(args, plan, spec, tmp, cores)
            return

        def measure(*specs: WorkerSpec) -> list[dict[str, Any]]:
            out = [summarise(r, s) for r, s in zip(run_group(list(specs), tmp), specs, strict=True)]
            for s, r in zip(specs, out, strict=True):
                rows.append((s, r))
                print(f"  {s.label}: {_one_line(r)}", flush=True)
            return out

        # (a)-(c) per model at the float32 default (segsweep's before bfloat16), with the profile and the ceiling.
        for encoder, arch in plan.models:
            measure(
                spec(
                    f"{encoder} {arch} default",
                    encoder,
                    arch,
                    profile=True,
                    ceiling_n=plan.ceiling_n,
                    bare_steps=3 if args.quick else 10,
                )
            )
        encoder, arch = plan.models[0]
        levers: list[WorkerSpec] = []
        if not args.precision_only:
            levers.append(spec("XLA jit_compile", encoder, arch, jit_compile=True))
        if not args.quick:
            # bfloat16 compute (the trainer's --mixed-precision bf16): each model beside its float32 row.
            levers += [spec(f"{e} {a} bfloat16", e, a, env=dict(BF16)) for e, a in plan.models]
        if not args.quick and not args.precision_only:
            levers += [
                spec("XLA auto-clustering", encoder, arch, env=dict(XLA_AUTO_JIT)),
                spec(f"threads intra {cores} inter 1", encoder, arch, threads=cores, inter_op=1),
                spec(f"threads intra {cores} inter 2", encoder, arch, threads=cores, inter_op=2),
                spec("oneDNN off", encoder, arch, env={ONEDNN_ENV: "0"}),
                spec("oneDNN on (explicit)", encoder, arch, env={ONEDNN_ENV: "1"}),
                *(spec(f"batch {b}", encoder, arch, batch_size=b) for b in plan.batch_sizes),
                spec(f"{encoder} {arch} default (again)", encoder, arch),  # drift across the run
            ]
        for lever in levers:
            measure(lever)
        # Layouts: K trials of 1 thread, K/2 of 2, 1 of K, started together; the same short training,
        # in float32 and in bfloat16.
        thread_counts = sorted({1, min(2, cores), cores})
        layouts = [(t, precision) for precision in ("float32", "bfloat16") for t in thread_counts]
        if args.quick:
            layouts = [(1, "float32")]  # one trial of one thread: the path, not the layout comparison
        layout_rows = []
        for threads, precision in layouts:
            trials = 1 if args.quick else cores // threads
            env = dict(BF16) if precision == "bfloat16" else {}
            group = [
                spec(f"layout {trials}x{threads} {precision} #{i + 1}", encoder, arch, threads=threads, env=env)
                for i in range(trials)
            ]
            results = measure(*group)
            layout_rows.append((threads, trials, precision, results))

    default = rows[0][1]
    baseline_dice = default.get("dice", float("nan"))
    # A step's FLOPs depend on the model and the batch shape only: rows without a profile (levers,
    # layouts) take them from the profiled row of the same model and batch.
    step_flops = {
        (s.encoder, s.arch, s.image_size, s.batch_size): r["profile"]["step_flops"] for s, r in rows if "profile" in r
    }
    ceiling = default.get("ceiling", {}).get("flops", float("nan"))
    for s, r in rows:
        flops = step_flops.get((s.encoder, s.arch, s.image_size, s.batch_size))
        if "step_seconds" in r and flops is not None:
            r.setdefault("achieved_flops", flops / r["step_seconds"])
            r["achieved_over_default_ceiling"] = r["achieved_flops"] / ceiling
    table_rows = []
    for s, r in rows:
        if "error" in r:
            table_rows.append([s.label, "fails", "", "", "", "", "", r["error"][:70]])
            continue
        table_rows.append(
            [
                s.label,
                r["images_per_second"],
                r["train_images_per_second"],
                r["share_outside_steps"],
                r["trial_over_steps"],
                r["dice"],
                r["dice"] - baseline_dice,
                f"{r['runtime']['mixed_precision_policy']}, "
                f"intra {r['runtime']['threads'] or 'TF'} inter {r['runtime']['inter_op_threads'] or 'TF'}"
                + (f"; {r['achieved_flops'] / ceiling:.2f} of the default's ceiling" if "achieved_flops" in r else ""),
            ]
        )
    print(
        _common.table(
            ["run", "images/s", "step images/s", "outside steps", "trial/steps", "Dice", "dDice", "note"], table_rows
        )
    )
    layouts_out = []
    for threads, trials, precision, results in layout_rows:
        ok = [r for r in results if "error" not in r]
        if not ok:
            continue
        walls = [r["wall"] for r in ok]
        layouts_out.append(
            {
                "layout": f"{trials}x{threads}",
                "precision": precision,
                "threads": threads,
                "trials": trials,
                "trial_minutes": statistics.fmean(walls) / 60,
                "trials_per_hour": trials * 3600 / max(walls),
                "dice": [r["dice"] for r in ok],
            }
        )
        print(
            f"layout {trials} trial(s) x {threads} thread(s), {precision}: {statistics.fmean(walls) / 60:.2f} "
            f"trial-minutes per trial, {trials * 3600 / max(walls):.1f} trials per hour"
        )
    # Today's sweep layout (K trials of 1 thread, float32) against each other layout: trials per hour.
    today = next((lay for lay in layouts_out if lay["threads"] == 1 and lay["precision"] == "float32"), None)
    for layout in layouts_out:
        if today is not None and layout is not today:
            layout["trials_per_hour_over_today"] = layout["trials_per_hour"] / today["trials_per_hour"]
            print(
                f"  {layout['layout']} {layout['precision']}: {layout['trials_per_hour_over_today']:.2f}x the trials "
                f"per hour of {today['layout']} float32 (today's sweep default)"
            )
    # Same configuration and precision, only the thread count differs: the default (TensorFlow's pools)
    # and each float32 layout.
    float32_layouts = [lay for lay in layouts_out if lay["precision"] == "float32"]
    thread_dice = [baseline_dice, *(d for layout in float32_layouts for d in layout["dice"])]
    noise = max(thread_dice) - min(thread_dice)
    print(f"thread-count noise (fold Dice range, default and layouts, same configuration): {noise:.4f}")
    for s, r in rows:
        if "dice" in r and s.batch_size == plan.batch_size and not s.label.startswith("layout"):
            change = abs(r["dice"] - baseline_dice)
            verdict = "within" if change <= noise else "beyond"
            print(f"  {s.label}: |dDice| {change:.4f} {verdict} thread-count noise")
    models_out = []
    for s, r in rows[: len(plan.models)]:
        if "error" in r or "profile" not in r:
            continue
        ratio_model = r["achieved_flops"] / r["ceiling"]["flops"]
        models_out.append({"model": s.label, "ratio": ratio_model})
        print(
            f"{s.label}: step {r['profile']['step_flops'] / 1e9:.2f} GFLOP (profiler; forward "
            f"{r['profile']['forward_flops'] / 1e9:.2f}), fit {r['achieved_flops'] / 1e9:.1f} GFLOP/s, "
            f"train_on_batch {r.get('bare_flops', float('nan')) / 1e9:.1f} GFLOP/s, ceiling "
            f"{r['ceiling']['flops'] / 1e9:.1f} GFLOP/s (numpy {r['ceiling']['numpy_flops'] / 1e9:.1f}, TF "
            f"{r['ceiling']['tensorflow_flops'] / 1e9:.1f}): {ratio_model:.3f} of the ceiling; "
            f"{r['share_outside_steps']:.1%} of a steady epoch outside training steps; "
            f"trial {r['trial_over_steps']:.2f}x its training steps"
        )
        by_op = r["profile"]["step_flops_by_op"]
        top = ", ".join(f"{op} {n / r['profile']['step_flops']:.0%}" for op, n in list(by_op.items())[:4])
        print(f"  step FLOPs by op type: {top}")
    ratio = models_out[0]["ratio"] if models_out else float("nan")
    _common.finish(
        NAME,
        args,
        ratio,
        {
            "data": str(root),
            "plan": asdict(plan),
            "runs": [{"spec": asdict(s), **r} for s, r in rows],
            "layouts": layouts_out,
            "thread_count_noise_dice": noise,
            "models": models_out,
            "goal": "fit >= 0.75 of the matmul ceiling; trial <= 1.15x its training steps",
        },
    )


def _dice_check(args: argparse.Namespace, plan: Plan, spec: Callable[..., WorkerSpec], tmp: Path, cores: int) -> None:
    """Fold Dice of the first model trained ``args.dice_check`` epochs (the cpu space's hand pick at
    12) in float32 and bfloat16, at 1 thread (a sweep trial) and at every core (cv, retrain).

    Timing plays no part (a fold's numbers depend on its threads, not on its speed), so the four
    run at once. The thread-count noise is float32's difference between the two thread counts;
    bfloat16 changes no result beyond it when its difference to float32 at each thread count is smaller.
    """
    encoder, arch = plan.models[0]
    specs = [
        spec(f"{precision} {threads} thread(s)", encoder, arch, epochs=args.dice_check, threads=threads,
             env=dict(BF16) if precision == "bfloat16" else {})
        for threads in sorted({1, cores}) for precision in ("float32", "bfloat16")
    ]  # fmt: skip
    results = run_group(specs, tmp)
    dice = {s.label: r.get("dice", float("nan")) for s, r in zip(specs, results, strict=True)}
    for label, value in dice.items():
        print(f"  {label}: fold Dice {value:.4f}")
    noise = abs(dice["float32 1 thread(s)"] - dice[f"float32 {cores} thread(s)"])
    changes = {t: abs(dice[f"bfloat16 {t} thread(s)"] - dice[f"float32 {t} thread(s)"]) for t in sorted({1, cores})}
    print(f"thread-count noise at {args.dice_check} epochs (float32, 1 vs {cores} threads): {noise:.4f}")
    for threads, change in changes.items():
        verdict = "within" if change <= noise else "beyond"
        print(f"  bfloat16 vs float32 at {threads} thread(s): |dDice| {change:.4f} {verdict} thread-count noise")
    _common.finish(
        NAME,
        args,
        max(changes.values()) / noise if noise else float("inf"),
        {"dice_check_epochs": args.dice_check, "dice": dice, "thread_count_noise_dice": noise,
         "bfloat16_change": {str(t): c for t, c in changes.items()},
         "runs": [{"spec": asdict(s), **r} for s, r in zip(specs, results, strict=True)]},
    )  # fmt: skip


def conv_layer_rates(model: Any, batch: int, repeats: int = 5) -> list[dict[str, Any]]:
    """Each Conv2D of ``model`` alone at its own shapes: the seconds of its forward pass and both of its
    gradients (input and kernel: what a training step does with it), its FLOPs (2 x outputs x kernel
    size x input channels, three times), and the FLOP/s; best of ``repeats`` after a warm-up."""
    import tensorflow as tf
    import tf_keras

    layers: list[Any] = []

    def walk(layer: Any) -> None:
        if isinstance(layer, tf_keras.layers.Conv2D) and not isinstance(layer, tf_keras.layers.DepthwiseConv2D):
            layers.append(layer)
        for inner in getattr(layer, "layers", ()):
            walk(inner)

    for layer in model.layers:
        walk(layer)
    # The graph's shapes leave the spatial sizes open: one pass of a zero image gives them.
    import numpy as np

    size = int(model.input.shape[1])
    probe = tf_keras.Model(model.input, [t for layer in layers for t in (layer.input, layer.output)])
    shapes = [tuple(int(d) for d in a.shape) for a in probe(np.zeros((1, size, size, 3), np.float32))]
    rows = []
    for place, layer in enumerate(layers):
        _, h, w, c_in = shapes[2 * place]
        _, h_out, w_out, c_out = shapes[2 * place + 1]
        kh, kw = layer.kernel_size
        x = tf.Variable(tf.random.normal((batch, h, w, c_in)))
        kernel = tf.Variable(tf.random.normal((kh, kw, c_in, c_out)) * 0.01)
        strides, padding = layer.strides, layer.padding.upper()

        @tf.function
        def step(x: Any = x, kernel: Any = kernel, strides: Any = strides, padding: str = padding) -> Any:
            with tf.GradientTape() as tape:
                y = tf.nn.conv2d(x, kernel, strides=strides, padding=padding)
                loss = tf.reduce_sum(y)
            return tape.gradient(loss, [x, kernel])

        step()  # trace and warm up
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            grads = step()
            _ = [g.numpy() for g in grads]
            best = min(best, time.perf_counter() - started)
        flops = 3 * 2 * batch * h_out * w_out * kh * kw * c_in * c_out
        rows.append({"layer": layer.name, "input": [h, w, c_in], "output": [h_out, w_out, c_out],
                     "kernel": [kh, kw], "stride": list(strides), "seconds": best, "flops": flops,
                     "flops_per_second": flops / best})  # fmt: skip
    return rows


def _layers(args: argparse.Namespace, plan: Plan) -> None:
    """``--layers``: the first model's convolutions, one by one, against the matmul ceiling."""
    from trainer.config import CVConfig
    from trainer.models import build_model, configure_tensorflow

    configure_tensorflow(mixed_precision="off")
    encoder, arch = plan.models[0]
    model = build_model(CVConfig(encoder=encoder, arch=arch, weights="none", image_size=plan.image_size))
    ceiling = matmul_ceiling(plan.ceiling_n)
    rows = conv_layer_rates(model, plan.batch_size)
    total_seconds = sum(r["seconds"] for r in rows)
    total_flops = sum(r["flops"] for r in rows)
    table = []
    for r in sorted(rows, key=lambda r: -r["seconds"]):
        table.append([r["layer"], "x".join(map(str, r["input"])), "x".join(map(str, r["output"])),
                      f"{r['kernel'][0]}x{r['kernel'][1]}/{r['stride'][0]}", r["flops"] / 1e9, r["seconds"] * 1e3,
                      r["seconds"] / total_seconds, r["flops_per_second"] / ceiling["flops"]])  # fmt: skip
    print(_common.table(["conv", "input", "output", "kernel/stride", "GFLOP", "ms", "share of time",
                         "of ceiling"], table))  # fmt: skip
    overall = total_flops / total_seconds / ceiling["flops"]
    print(f"{len(rows)} convolutions: {total_flops / 1e9:.1f} GFLOP in {total_seconds:.3f} s alone = "
          f"{overall:.2f} of the {ceiling['flops'] / 1e9:.0f} GFLOP/s matmul ceiling")  # fmt: skip
    _common.finish(NAME, args, overall, {"layers": rows, "ceiling": ceiling, "model": f"{encoder} {arch}",
                                         "image_size": plan.image_size, "batch_size": plan.batch_size})  # fmt: skip


def _one_line(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"fails: {result['error']}"
    return (
        f"{result['images_per_second']:.2f} images/s, {result['share_outside_steps']:.1%} outside steps, "
        f"Dice {result['dice']:.4f}, wall {result['wall']:.0f} s"
    )


if __name__ == "__main__":
    main()
