"""Keras-on-torch side of ``twinbench train``: the seed's Keras model and compile, run by Keras 3 on
its torch backend (``KERAS_BACKEND=torch``, set by ``tf_impl.keras_torch_worker``).

What a user gets by running the seed unchanged on PyTorch: the same functional model
(``tf_impl.model``), the same ``compile(optimizer=Adam, loss=sparse_categorical_crossentropy,
metrics=[accuracy])``, each step Keras' own ``train_on_batch``. The batches come from the torch
input pipeline (``torch_impl.data``: the pixels ``twinbench data check`` verifies against TF's,
and in manifest order the very batches both other sides see); never tf.data, never tensorflow,
never twinbench's torch model. The loop around the steps is ``bench.training.run_training``.

Mirror: ``tf_impl/train.py`` (the TensorFlow side of the same Keras code).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import torch

from bench.errors import UserError
from bench.training import TrainConfig, peak_rss, run_training, write_pid
from tf_impl.keras_tasks import TRAIN_POLICIES, set_random_seed



class Trainer:
    """The seed's compiled Keras model on the torch backend, with the hooks ``run_training`` calls."""

    framework = "keras-torch"
    is_main = True

    def __init__(self, job: dict[str, Any]):
        from bench.dataset import PipelineOptions, load_manifest
        from bench.spec import spec_from_args
        from bench.weights import WeightBundle
        from tf_impl import model as tfm
        from tf_impl import optim
        from tf_impl import weights as tfw

        self.config = config = TrainConfig(**job["config"])
        if config.devices > 1:
            raise UserError(f"--devices {config.devices}: the keras-torch arm trains on one device")
        self.cuda = torch.cuda.is_available()
        if config.precision == "mixed_fp16" and not self.cuda:
            raise UserError("--precision mixed_fp16 needs a GPU (fp16 on CPU is emulated and slow); "
                            "use mixed_bf16 on CPU")
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        set_random_seed(config.seed)  # keras.utils.set_random_seed without importing tensorflow
        keras.config.set_dtype_policy(TRAIN_POLICIES[config.precision])
        self.spec = spec_from_args(config.spec_args())
        self.tfm, self.tfw = tfm, tfw
        self.model = tfm.build(self.spec, dtype=TRAIN_POLICIES[config.precision])
        if job.get("init"):
            tfw.from_bundle(self.model, self.spec, WeightBundle.load(job["init"]), source=job["init"])
        optimizer = optim.build(config.optimizer_config())
        if config.precision == "mixed_fp16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        self.model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        size = config.input_size
        # Builds the compiled loss, metrics and optimizer variables now, as the TF side does.
        self.model._symbolic_build(data_batch=(np.zeros((1, size, size, 3), np.float32), np.zeros((1,), np.int32)))
        self.features = tfm.features_model(self.model, self.spec)
        self.manifest = load_manifest(job["manifest"], data_root=job.get("data_root"), verify="none")
        self.options = PipelineOptions(**config.pipeline_options())
        self.n_train = len(self.manifest.entries("training"))
        self._train = self._val = None
        self._bn_images: list[torch.Tensor] | None = None

    # ---- data ------------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.config.batch_size)

    def train_batches(self, epoch: int):
        from torch_impl.data import run_loader

        # One loader set to each epoch's order, seeded by (seed, epoch) as on the torch side.
        if self._train is None:
            self._train = run_loader(self.manifest, self.options)
        self._train.sampler.set_epoch(epoch)
        return self._train

    @staticmethod
    def _nhwc(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).contiguous()  # the loader's NCHW -> the Keras model's NHWC

    # ---- steps -----------------------------------------------------------------------------------
    def set_learning_rate(self, rate: float) -> None:
        self.model.optimizer.learning_rate.assign(rate)

    def train_step(self, batch) -> tuple[float, int, int]:
        x, y = batch
        n = int(y.shape[0])
        logs = self.model.train_on_batch(self._nhwc(x), y, return_dict=True)  # Keras' train_step, metrics reset
        return float(logs["loss"]), int(round(float(logs["accuracy"]) * n)), n

    @torch.no_grad()
    def _predict(self, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        features = self.features(self._nhwc(x), training=False)
        logits = self.tfm.logits(self.model, self.spec, keras.ops.cast(features, "float32"))
        losses = keras.losses.sparse_categorical_crossentropy(keras.ops.convert_to_tensor(y), logits, from_logits=True)
        return keras.ops.convert_to_numpy(keras.ops.softmax(logits)), keras.ops.convert_to_numpy(losses)

    @torch.no_grad()
    def estimate_bn(self) -> None:
        """Evaluation "precise-bn", as the TF side (``tf_impl.keras_tasks.estimate_bn``)."""
        from tf_impl.keras_tasks import estimate_bn
        from torch_impl.data import bn_batches

        if self._bn_images is None:  # decoded once, as on the torch side
            self._bn_images = [self._nhwc(x) for x in bn_batches(self.manifest, self.options,
                                                                 self.config.bn_estimate_images)]
        estimate_bn(self.model, self._bn_images)

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.tfw.to_bundle(self.model, self.spec).arrays

    def set_weights(self, arrays: dict[str, np.ndarray]) -> None:
        from bench.weights import WeightBundle

        self.tfw.from_bundle(self.model, self.spec, WeightBundle(arrays), source="weight average")

    def evaluate(self) -> tuple[np.ndarray, np.ndarray]:
        from torch_impl.data import make_loader

        if self.config.evaluation in ("precise-bn", "swa"):
            self.estimate_bn()
        if self._val is None:
            self._val = make_loader(self.manifest, "validation", self.options)
        probs, losses = [], []
        for x, y in self._val:
            p, loss = self._predict(x, y)
            probs.append(p)
            losses.append(loss)
        return np.concatenate(probs).astype(np.float32), np.concatenate(losses).astype(np.float64)

    def weight_sample(self, indices: dict[str, np.ndarray]) -> np.ndarray:
        """The chaos control's per-step sample: ``indices`` are flat indices in Keras layout."""
        parts = []
        for layer in self.spec.layers():
            k_layer = self.model.get_layer(layer.name)
            for name, variable in zip(layer.weight_names, k_layer.weights):
                key = f"{layer.name}/{name}"
                if key in indices:
                    flat = keras.ops.convert_to_numpy(keras.ops.cast(variable.value, "float32")).reshape(-1)
                    parts.append(flat[indices[key]])
        return np.concatenate(parts)

    # ---- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, stem: Path) -> list[str]:
        from tf_impl.keras_tasks import save_checkpoint

        return save_checkpoint(self.model, self.spec, stem, f"keras-torch {stem.name}",
                               to_numpy=lambda v: keras.ops.convert_to_numpy(v.value))

    def load_checkpoint(self, stem: Path) -> None:
        from tf_impl.keras_tasks import load_checkpoint

        load_checkpoint(self.model, self.spec, stem)

    # ---- the rest --------------------------------------------------------------------------------
    def memory(self) -> dict[str, Any]:
        rss = peak_rss()
        if self.cuda:
            return {"measure": "gpu_allocator_peak", "peak_bytes": int(torch.cuda.max_memory_allocated()),
                    "label": "torch allocator peak (max_memory_allocated) under Keras",
                    "cpu_peak_rss_bytes": rss["peak_bytes"]}
        return {"measure": "cpu_peak_rss", "peak_bytes": rss["peak_bytes"],
                "label": "peak resident set size of the Keras-on-torch worker process (VmHWM): runtime, model, "
                         "optimizer state, activations (loader workers are separate processes)"}

    def barrier(self) -> None:
        pass

    def info(self) -> dict[str, Any]:
        from tf_impl.keras_torch_worker import info

        out = info({}, {}, Path("."))[0]
        out["policy"] = TRAIN_POLICIES[self.config.precision]
        out["imported_during_training"] = {name: name in sys.modules for name in ("tensorflow", "torch_impl.model")}
        return out


def train(args: dict[str, Any], inputs: dict[str, np.ndarray], job_dir: Path):
    """Worker task "train": ``bench.training.run_training`` with a Keras-on-torch :class:`Trainer`."""
    started = time.monotonic()
    write_pid(Path(args["fw_dir"]))
    return run_training(Trainer(args), args, started=started), None
