"""Timed training and inference steps in TensorFlow/Keras: our ResNet-50 and
``keras.applications.ResNet50(weights=None)``.

The worker side of ``twinbench bench`` (task ``bench_row``); mirror of ``torch_impl/benchmark.py``.
The row and peak control flow, the loop, statistics and FLOPs are ``bench.measure``'s; this
module supplies (as :class:`Backend`) the model, the step, the device sync, the precision policy
and the memory counters.

"eager" here is ``tf.function`` without XLA: what Keras' ``fit`` runs on a CPU (Keras 3 turns
XLA on by itself only on GPUs, ``jit_compile="auto"``). Python-eager TF (``run_eagerly``) is
nobody's production path and would not be a fair baseline. "jit" is ``jit_compile=True``.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Callable

import tensorflow as tf

from bench import measure as bm
from bench.errors import UserError
from bench.measure_backend import DeviceBackend
from tf_impl.keras_tasks import build_bench_model

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


def make_sync(device: str) -> bm.Sync:
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
    if precision in bm.GPU_ONLY_PRECISIONS and not device.startswith("/GPU"):
        return f"{precision} needs a GPU (TF32 and fp16 tensor cores); this worker runs on the CPU"
    return None


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, tf.errors.ResourceExhaustedError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "oom when allocating" in text


# ---- models ---------------------------------------------------------------------------------------
def build_model(row: dict[str, Any]):
    """Ours (from bench.spec) or keras.applications.ResNet50 (weights=None), under the row's policy."""
    return build_bench_model(row)


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
    from bench.dataset import PipelineOptions, load_manifest
    from tf_impl import data as tfd

    manifest = load_manifest(row["manifest"], data_root=row.get("data_root"), verify="size")  # hashes: the parent
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
    return bm.reset_peak_rss, bm.read_peak_rss


def memory_in_use(device: str) -> int | None:
    """Bytes in use now: TF's GPU allocator, or the process's RSS on the CPU (what a row's peak
    adds to: inputs, framework, anything earlier rows left behind)."""
    if device.startswith("/GPU"):
        return tf.config.experimental.get_memory_info(device.strip("/"))["current"]
    return bm.read_peak_rss().get("current_bytes")


# ---- one row, the machine peak ------------------------------------------------------------------------
class Backend(DeviceBackend):
    """TF's hooks for ``bench.measure``'s shared row and peak loops, bound to one device: this
    module's functions (``bench.measure_backend``), plus what only TF does."""

    framework = "tf"
    impl = sys.modules[__name__]

    def __init__(self, device: str):
        super().__init__(device, gpu=device.startswith("/GPU"))

    def skip_reason(self, row: dict[str, Any]) -> str | None:
        reason = check_precision(row["precision"], self.device)
        if reason is None and row["layout"] != "nhwc":
            reason = "Keras on CPU convolves NHWC only and our Keras model is NHWC"
        return reason

    def cleanup(self, row: dict[str, Any]) -> None:
        """Nothing to free: a TF row runs in its own worker process (nothing in-process runs TF rows
        one after another, as torch_impl/gpu_check.py does with torch)."""

    def matmul_step(self, precision: str, n: int) -> Callable[[], tf.Tensor]:
        with tf.device(self.device):
            a = tf.cast(tf.random.stateless_normal((n, n), (0, 1)), MATMUL_DTYPES[precision])
            b = tf.cast(tf.random.stateless_normal((n, n), (0, 2)), MATMUL_DTYPES[precision])

        def step() -> tf.Tensor:
            with tf.device(self.device):
                return tf.linalg.matmul(a, b)
        return step


# One row on its device, the matmul peak, and the worker task ``bench_row`` (bench.measure_backend).
run_row = Backend.run_row
peak_flops = Backend.peak_flops
bench_row = Backend.bench_row


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
