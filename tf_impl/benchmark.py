"""Timed training and inference steps in TensorFlow/Keras: our ResNet-50 and
``keras.applications.ResNet50(weights=None)``.

The worker side of ``twinbench bench`` (task ``bench_row``); mirror of ``torch_impl/benchmark.py``.
The loop, statistics and FLOPs are ``bench.benchmark``'s; this module supplies the model, the
step, the device sync, the precision policy and the memory counters.

"eager" here is ``tf.function`` without XLA: what Keras' ``fit`` runs on a CPU (Keras 3 turns
XLA on by itself only on GPUs, ``jit_compile="auto"``). Python-eager TF (``run_eagerly``) is
nobody's production path and would not be a fair baseline. "jit" is ``jit_compile=True``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from typing import Any, Callable

import tensorflow as tf

from bench import benchmark as bb
from bench.errors import UserError
from bench.spec import build_spec

POLICIES = {"fp32": "float32", "tf32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
MATMUL_DTYPES = {"fp32": tf.float32, "tf32": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}


# ---- device, sync, precision ----------------------------------------------------------------------
def device_for(requested: str = "auto") -> str:
    gpus = tf.config.list_logical_devices("GPU")
    if requested == "gpu" and not gpus:
        raise UserError("--device gpu: TensorFlow sees no GPU (tensorflow-cpu is installed by default)")
    return "/GPU:0" if requested in ("auto", "gpu") and gpus else "/CPU:0"


def device_label(device: str) -> str:
    if device.startswith("/GPU"):
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        return f"gpu:0 {details.get('device_name', 'GPU')}"
    return f"cpu {platform.processor() or platform.machine()}"


def make_sync(device: str) -> bb.Sync:
    """TF's own device sync: ``tf.test.experimental.sync_devices`` (TF >= 2.13) waits for every
    device; without it, fetching the step's output to the host (``.numpy()``) waits for it."""
    sync_devices = getattr(getattr(tf.test, "experimental", None), "sync_devices", None)

    def sync(out: Any) -> None:
        if sync_devices is not None:
            sync_devices()
        elif out is not None:
            tf.nest.map_structure(lambda t: t.numpy(), out)
    return sync


def set_tf32(enabled: bool) -> None:
    """TF enables TF32 by default on Ampere and later: a plain "fp32" TF GPU run is TF32 unless
    this turns it off (a classic unfair comparison)."""
    tf.config.experimental.enable_tensor_float_32_execution(enabled)


def check_precision(precision: str, device: str) -> str | None:
    if precision in bb.GPU_ONLY_PRECISIONS and not device.startswith("/GPU"):
        return f"{precision} needs a GPU (TF32 and fp16 tensor cores); this worker runs on the CPU"
    return None


@contextlib.contextmanager
def policy(precision: str):
    """Keras' global dtype policy while the model is built (mixed_bfloat16: bf16 compute, fp32
    variables), restored afterwards."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[precision])
    try:
        yield POLICIES[precision]
    finally:
        keras.config.set_dtype_policy(before)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, tf.errors.ResourceExhaustedError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "oom when allocating" in text


# ---- models ---------------------------------------------------------------------------------------
def build_model(row: dict[str, Any]):
    """Ours (from bench.spec) or keras.applications.ResNet50 (weights=None), under the row's policy."""
    import keras

    keras.utils.set_random_seed(int(row.get("seed", 0)))
    with policy(row["precision"]) as dtype:
        if row["model"] == "ours":
            from tf_impl import model as tfm

            spec = build_spec(row.get("arch", "resnet50"), row["classes"], row["input_size"], row["pooling"])
            return tfm.build(spec, dtype=dtype), "ours (tf_impl.model)"
        s = row["input_size"]
        return (keras.applications.ResNet50(weights=None, input_shape=(s, s, 3), classes=row["classes"]),
                f"keras.applications.ResNet50 ({keras.__version__})")


# ---- inputs and steps -------------------------------------------------------------------------------
def synthetic_batch(row: dict[str, Any], device: str) -> tuple[tf.Tensor, tf.Tensor]:
    """A device-resident batch of raw 0..255 pixels (the seed's input, NHWC) and labels."""
    b, s = row["batch"], row["input_size"]
    seed = int(row.get("seed", 0))
    with tf.device(device):
        x = tf.random.stateless_uniform((b, s, s, 3), (seed, 1), 0.0, 255.0)
        y = tf.random.stateless_uniform((b,), (seed, 2), 0, row["classes"], dtype=tf.int32)
    return x, y


def pipeline_batches(row: dict[str, Any], device: str) -> Callable[[], tuple[tf.Tensor, tf.Tensor]]:
    """Batches from the manifest's training pipeline (``tf_impl.data.make_dataset``, its default
    options at the row's size and batch: the seed's cache and shuffle), repeated endlessly: what
    end-to-end throughput includes. An epoch's last, partial batch is fetched (its time counts)
    but not fed, so every step trains on exactly the recorded batch (and nothing retraces)."""
    from bench.manifest import PipelineOptions, load_manifest
    from tf_impl import data as tfd

    manifest = load_manifest(row["manifest"], verify="size")  # the parent verified the hashes
    options = PipelineOptions(image_size=row["input_size"], batch_size=row["batch"])
    iterator = iter(tfd.make_dataset(manifest, "training", options).repeat())
    row["pipeline"] = {**options.to_dict(), "loader": "tf.data"}

    def next_batch() -> tuple[tf.Tensor, tf.Tensor]:
        while True:
            x, y = next(iterator)
            if x.shape[0] == row["batch"]:
                return x, y
            row["pipeline"]["partial_batches_skipped"] = row["pipeline"].get("partial_batches_skipped", 0) + 1
    return next_batch


def make_step(model, row: dict[str, Any], device: str,
              batches: Callable[[], tuple[tf.Tensor, tf.Tensor]]) -> Callable[[], Any]:
    """One training step (forward, sparse categorical cross-entropy on the softmax output,
    gradients, Adam with Keras defaults) or one inference forward, as a tf.function."""
    import keras

    jit = row["compile"] == "jit"
    if row["mode"] == "infer":
        @tf.function(jit_compile=jit)
        def infer(x):
            return model(x, training=False)

        def infer_step():
            x, _ = batches()
            with tf.device(device):
                return infer(x)
        return infer_step

    optimizer = keras.optimizers.Adam()  # Keras defaults: lr 1e-3, epsilon 1e-7
    if row["precision"] == "fp16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # what Keras' compile() adds
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()  # on the softmax, as the seed compiles it

    @tf.function(jit_compile=jit)
    def train(x, y):
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            loss = loss_fn(y, probs)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def train_step():
        x, y = batches()
        with tf.device(device):
            return train(x, y)
    return train_step


# ---- memory ---------------------------------------------------------------------------------------
def memory_counters(device: str) -> tuple[Callable[[], bool], Callable[[], dict[str, Any]]]:
    """(reset, read) of the peak: TF's GPU allocator (BFC) on a GPU, peak RSS on the CPU."""
    if device.startswith("/GPU"):
        name = device.strip("/")

        def reset() -> bool:
            tf.config.experimental.reset_memory_stats(name)
            return True

        def read() -> dict[str, Any]:
            info = tf.config.experimental.get_memory_info(name)
            return {"kind": "TF GPU allocator peak (get_memory_info)", "peak_bytes": info["peak"],
                    "current_bytes": info["current"]}
        return reset, read
    return bb.reset_peak_rss, bb.read_peak_rss


def memory_in_use(device: str) -> int | None:
    """Bytes in use now: TF's GPU allocator, or the process's RSS on the CPU (what a row's peak
    adds to: inputs, framework, anything earlier rows left behind)."""
    if device.startswith("/GPU"):
        return tf.config.experimental.get_memory_info(device.strip("/"))["current"]
    return bb.read_peak_rss().get("current_bytes")


# ---- one row ----------------------------------------------------------------------------------------
def run_row(row: dict[str, Any], progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure one configuration: warm-up, timed windows, then the memory loop."""
    device = device_for(row.get("device", "auto"))
    label = device_label(device)
    reason = check_precision(row["precision"], device)
    if reason:
        return bb.skipped_row(row, reason)
    if row["layout"] != "nhwc":
        return bb.skipped_row(row, "Keras on CPU convolves NHWC only and our Keras model is NHWC")
    if device.startswith("/GPU"):
        set_tf32(row["precision"] == "tf32")
    sync = make_sync(device)
    extra: dict[str, Any] = {}
    try:
        if row["input"] == "pipeline":
            batches = pipeline_batches(row, device)
            sync(None)
            t0 = time.perf_counter()
            first = batches()
            sync(first)
            extra["first_batch_s"] = time.perf_counter() - t0
        else:
            x, y = synthetic_batch(row, device)
            batches = lambda: (x, y)  # noqa: E731  (already on the device: compute-only)
            first = (x, y)
        batch_used = int(first[0].shape[0])
        before_model = memory_in_use(device)
        # after the inputs: a batch that cannot fit fails before a model is built
        model, model_label = build_model(row)
        step = make_step(model, row, device, batches)
        timing = bb.time_steps(step, sync, warmup=row["warmup"], repeats=row["repeats"], steps=row["steps"],
                               batch=batch_used, progress=progress)
        reset, read = memory_counters(device)
        memory = bb.measure_memory(step, sync, steps=row["memory_steps"], reset=reset, read=read)
        memory["before_model_bytes"] = before_model
    except Exception as exc:
        if not is_oom(exc):
            raise
        return bb.failed_row(row, bb.oom_message("tf", row["batch"], label, exc), oom=True, device=label)
    extra.update(threads=threads(), versions=versions(), model_label_full=model_label)
    return bb.finish_row(row, timing, memory, batch_used=batch_used, device=label, extra=extra)


# ---- machine peak -----------------------------------------------------------------------------------
def peak_flops(dtypes: tuple[str, ...], device: str, size: int = 0,
               progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """FLOP/s of a large square matmul per dtype (median of synced windows): the ceiling MFU
    divides by. fp32 runs with TF32 off, tf32 with it on (GPU)."""
    n = size or (8192 if device.startswith("/GPU") else 2048)
    sync = make_sync(device)
    out: dict[str, float] = {}
    for name in dtypes:
        if check_precision(name, device):
            continue
        if device.startswith("/GPU"):
            set_tf32(name == "tf32")
        with tf.device(device):
            a = tf.cast(tf.random.stateless_normal((n, n), (0, 1)), MATMUL_DTYPES[name])
            b = tf.cast(tf.random.stateless_normal((n, n), (0, 2)), MATMUL_DTYPES[name])

        def step():
            with tf.device(device):
                return tf.linalg.matmul(a, b)
        sync(step())
        t0 = time.perf_counter()
        sync(step())
        one = max(time.perf_counter() - t0, 1e-6)
        steps = max(1, min(50, int(0.2 / one)))  # windows of about 0.2 s
        timing = bb.time_steps(step, sync, warmup=2, repeats=bb.MIN_REPEATS, steps=steps, batch=1)
        out[name] = bb.matmul_flops(n) * timing["throughput"]["median"]
        if progress:
            progress(f"peak {name}: {out[name] / 1e9:,.0f} GFLOP/s ({n}x{n} matmul)")
    if device.startswith("/GPU"):
        set_tf32(False)
    return out


# ---- environment ------------------------------------------------------------------------------------
def threads() -> dict[str, int]:
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}


def versions() -> dict[str, Any]:
    import keras

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()}


def environment(device: str) -> dict[str, Any]:
    return {"framework": "tf", "device": device_label(device), "threads": threads(), "versions": versions(),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


# ---- worker task ------------------------------------------------------------------------------------
def _progress(message: str) -> None:
    print(f"    tf: {message}", file=sys.stderr, flush=True)


def bench_row(args: dict[str, Any], inputs: dict, job_dir) -> tuple[dict[str, Any], None]:
    """Worker task: optionally the matmul peak (before any model exists), then one row."""
    row = args["row"]
    device = device_for(row.get("device", "auto"))
    peak = None
    if args.get("peak") is not None:
        peak = peak_flops(("fp32", "tf32", "bf16", "fp16"), device, int(args["peak"].get("size", 0)), _progress)
    result = run_row(row, progress=_progress)
    return {"row": result, "peak": peak, "env": environment(device)}, None
