"""TensorFlow side of ``twinbench train``: the seed's Keras training, driven step by step.

The model is compiled as the seed compiles it and each step runs Keras' own ``Model.train_step``
in one ``tf.function``; the loop around it is ``bench.training.run_training``, shared with the
torch side. Why not ``fit``: docs/profiles.md (the TensorFlow worker).

Mirror: ``torch_impl/train.py``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from bench.errors import UserError
from bench.training import TrainConfig, peak_rss, run_training, write_pid
from tf_impl.keras_tasks import TRAIN_POLICIES



def make_strategy(devices: int) -> tf.distribute.Strategy:
    """One device: the default strategy. N: MirroredStrategy over N GPUs, or N logical CPU devices
    (configured here, before TensorFlow's runtime starts).

    What N replicas do, checked against one device (tests/test_train.py, 1 vs 2 devices): each gets
    its slice of the global batch in order (``experimental_distribute_dataset`` rebatches [0:B/N],
    [B/N:2B/N], ...; no auto-sharding on one worker), normalises with its own batch statistics,
    and Keras scales its mean loss by 1/N before the gradients are summed, so the step is the
    global batch's mean gradient (in float64 the 2-replica steps equal the 1-device ones). BN's
    moving statistics are Keras 3 variables with aggregation NONE: each replica updates its own
    copy and reads see replica 0's, as torch DDP keeps rank 0's buffers (docs/profiles.md)."""
    if devices == 1:
        return tf.distribute.get_strategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(gpus) < devices:
            raise UserError(f"--devices {devices}: TensorFlow sees {len(gpus)} GPU(s)")
        return tf.distribute.MirroredStrategy(devices=[f"/gpu:{i}" for i in range(devices)])
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError as exc:  # the runtime already started: a bug in the worker's start-up order
        raise RuntimeError(f"cannot split the CPU into {devices} logical devices: {exc}") from None
    return tf.distribute.MirroredStrategy(devices=[f"/cpu:{i}" for i in range(devices)])


class Trainer:
    """A Keras model, compiled as the seed does, with the hooks ``run_training`` calls."""

    framework = "tf"
    is_main = True

    def __init__(self, job: dict[str, Any]):
        import keras

        from bench.dataset import PipelineOptions, load_manifest
        from bench.spec import spec_from_args
        from bench.weights import WeightBundle
        from tf_impl import model as tfm
        from tf_impl import optim
        from tf_impl import weights as tfw

        self.config = config = TrainConfig(**job["config"])
        self.strategy = make_strategy(config.devices)  # first: logical devices need a fresh runtime
        self.devices = config.devices
        self.gpus = tf.config.list_physical_devices("GPU")
        if config.precision == "mixed_fp16" and not self.gpus:
            raise UserError("--precision mixed_fp16 needs a GPU (fp16 on CPU is emulated and slow); "
                            "use mixed_bf16 on CPU")
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(config.seed)
        policy = TRAIN_POLICIES[config.precision]
        # Global policy too, so that compile() wraps Adam in a LossScaleOptimizer for
        # mixed_float16 exactly as Keras does for a mixed_float16 model.
        keras.config.set_dtype_policy(policy)
        for gpu in self.gpus:
            tf.config.experimental.reset_memory_stats(f"GPU:{self.gpus.index(gpu)}")

        self.spec = spec_from_args(config.spec_args())
        self.tfm, self.tfw = tfm, tfw
        with self.strategy.scope():
            self.model = tfm.build(self.spec, dtype=policy)
            if job.get("init"):
                tfw.from_bundle(self.model, self.spec, WeightBundle.load(job["init"]), source=job["init"])
            optimizer = optim.build(config.optimizer_config())
            if config.precision == "mixed_fp16" and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            # The seed's compile, with our Keras-default optimizer object.
            self.model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            # What fit/train_on_batch do first (Keras-private): build the compiled loss, metrics
            # and optimizer variables now, outside any replica context and traced function.
            size = config.input_size
            self.model._symbolic_build(data_batch=(np.zeros((1, size, size, 3), np.float32),
                                                   np.zeros((1,), np.int32)))
            features = tfm.features_model(self.model, self.spec)

        self.manifest = load_manifest(job["manifest"], data_root=job.get("data_root"), verify="none")
        self.options = PipelineOptions(**config.pipeline_options())
        self.n_train = len(self.manifest.entries("training"))
        size = config.input_size
        x_spec = tf.TensorSpec([None, size, size, 3], tf.float32)
        y_spec = tf.TensorSpec([None], tf.int32)
        self._native: tf.data.Dataset | None = None
        self._native_epochs = 0
        self._val = None
        self._bn: tuple[list[tf.Tensor], Any] | None = None  # the precise-BN images and traced step
        if self.devices > 1:
            element_spec = self.strategy.experimental_distribute_dataset(self._dataset(0)).element_spec
        else:
            element_spec = (x_spec, y_spec)
        self._step = tf.function(self._one_step, input_signature=[element_spec])
        self._features = features
        self._predict = tf.function(self._predict_batch, input_signature=[x_spec, y_spec])

    # ---- data ------------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.config.batch_size)

    def _dataset(self, epoch: int) -> tf.data.Dataset:
        from tf_impl.data import make_dataset

        if self.options.order != "native":  # a shared order: each epoch's own dataset
            return make_dataset(self.manifest, "training", self.options, epoch=epoch)
        # Native order: one dataset iterated once per epoch, as fit does (its shuffles reshuffle
        # each iteration). A resumed run replays the epochs it skips, so the order is the same.
        if self._native is None:
            self._native = make_dataset(self.manifest, "training", self.options)
        return self._native

    def train_batches(self, epoch: int):
        ds = self._dataset(epoch)
        if self.options.order == "native":
            while self._native_epochs < epoch:  # resume: fast-forward through the skipped epochs
                for _ in ds:
                    pass
                self._native_epochs += 1
            self._native_epochs += 1
        if self.devices > 1:
            ds = self.strategy.experimental_distribute_dataset(ds)
        return ds

    # ---- steps -----------------------------------------------------------------------------------
    def _one_step(self, batch):
        for metric in self.model.metrics:
            metric.reset_state()
        self.strategy.run(self.model.train_step, args=(batch,))
        # Read in cross-replica context: the metrics' sum-on-read variables add up the replicas,
        # so these are sample means over the whole global batch.
        return self.model.get_metrics_result()

    def set_learning_rate(self, rate: float) -> None:
        # A float32 variable read inside the traced step: assigning it retraces nothing.
        self.model.optimizer.learning_rate.assign(rate)

    def train_step(self, batch) -> tuple[float, int, int]:
        logs = self._step(batch)
        n = sum(int(t.shape[0]) for t in self.strategy.experimental_local_results(batch[1]))
        loss = float(logs["loss"])  # reading the value waits for the step: the clock after it is synced
        return loss, int(round(float(logs["accuracy"]) * n)), n

    def _predict_batch(self, x, y):
        features = self._features(x, training=False)
        logits = self.tfm.logits(self.model, self.spec, tf.cast(features, tf.float32))
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32), logits=logits)
        return tf.nn.softmax(logits), losses

    def estimate_bn(self) -> None:
        """Evaluation "precise-bn" (``tf_impl.keras_tasks.estimate_bn``) on the configured training
        images in manifest order: decoded once, and the BN moments traced once (eager, the
        estimate took 6 s a validation at 32 px on 2 cores; traced, under 2 s)."""
        from tf_impl.data import make_dataset
        from tf_impl.keras_tasks import bn_moments, estimate_bn

        if self._bn is None:
            batches = math.ceil(self.config.bn_estimate_images / self.config.batch_size)
            ds = make_dataset(self.manifest, "training", self.options.replace(order="manifest"), epoch=0)
            size = self.config.input_size
            moments = tf.function(bn_moments(self.model), input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
            self._bn = ([x for x, _ in ds.take(batches)], moments)
        images, moments = self._bn
        estimate_bn(self.model, images, moments)

    def weight_sample(self, indices: dict[str, np.ndarray]) -> np.ndarray:
        """The chaos control's per-step sample: ``indices`` are flat indices in Keras layout."""
        if not hasattr(self, "_sample_fn"):
            pairs = []
            for layer in self.spec.layers():
                k_layer = self.model.get_layer(layer.name)
                for name, variable in zip(layer.weight_names, k_layer.weights):
                    key = f"{layer.name}/{name}"
                    if key in indices:
                        pairs.append((variable, tf.constant(indices[key], tf.int64)))

            @tf.function
            def sample():
                return tf.concat([tf.gather(tf.reshape(tf.cast(v.value, tf.float32), [-1]), i) for v, i in pairs], 0)

            self._sample_fn = sample
        return self._sample_fn().numpy()

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.tfw.to_bundle(self.model, self.spec).arrays

    def set_weights(self, arrays: dict[str, np.ndarray]) -> None:
        from bench.weights import WeightBundle

        self.tfw.from_bundle(self.model, self.spec, WeightBundle(arrays), source="weight average")

    def evaluate(self) -> tuple[np.ndarray, np.ndarray]:
        from tf_impl.data import make_dataset

        if self.config.evaluation in ("precise-bn", "swa"):
            self.estimate_bn()
        if self._val is None:
            self._val = make_dataset(self.manifest, "validation", self.options)
        probs, losses = [], []
        for x, y in self._val:
            p, loss = self._predict(x, y)
            probs.append(p.numpy())
            losses.append(loss.numpy())
        return np.concatenate(probs).astype(np.float32), np.concatenate(losses).astype(np.float64)

    # ---- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, stem: Path) -> list[str]:
        from tf_impl.keras_tasks import save_checkpoint

        return save_checkpoint(self.model, self.spec, stem, f"tf {stem.name}")

    def load_checkpoint(self, stem: Path) -> None:
        from tf_impl.keras_tasks import load_checkpoint

        load_checkpoint(self.model, self.spec, stem)

    # ---- the rest --------------------------------------------------------------------------------
    def memory(self) -> dict[str, Any]:
        rss = peak_rss()
        if self.gpus:
            info = tf.config.experimental.get_memory_info("GPU:0")
            return {"measure": "gpu_allocator_peak", "peak_bytes": int(info["peak"]),
                    "label": "TensorFlow allocator peak on GPU:0 (get_memory_info peak, memory growth on)",
                    "cpu_peak_rss_bytes": rss["peak_bytes"]}
        return {"measure": "cpu_peak_rss", "peak_bytes": rss["peak_bytes"],
                "label": "peak resident set size of the TensorFlow worker process (VmHWM): "
                         "framework runtime, model, optimizer state, activations and the tf.data pipeline "
                         "(threads of the same process)"}

    def barrier(self) -> None:
        pass

    def info(self) -> dict[str, Any]:
        from tf_impl.worker import info

        out = info({}, {}, Path("."))[0]
        out["strategy"] = type(self.strategy).__name__
        out["replicas"] = self.strategy.num_replicas_in_sync
        out["policy"] = TRAIN_POLICIES[self.config.precision]
        return out


def train(args: dict[str, Any], inputs: dict[str, np.ndarray], job_dir: Path):
    """Worker task "train": ``bench.training.run_training`` with a Keras :class:`Trainer`."""
    started = time.monotonic()
    write_pid(Path(args["fw_dir"]))
    return run_training(Trainer(args), args, started=started), None
