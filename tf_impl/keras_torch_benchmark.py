"""Timed training and inference steps of the seed's Keras model on Keras 3's torch backend: ours
(``tf_impl.model``) and ``keras.applications.ResNet50(weights=None)``, as a Keras user runs them.

The worker side of ``twinbench bench --frameworks ...,keras-torch`` (task ``bench_row`` of
``tf_impl.keras_torch_worker``). The device, its sync, TF32 and the memory counters are torch's
(``torch_impl.benchmark``'s functions: no model code); the model and the step are Keras':
training is ``compile(Adam(), sparse_categorical_crossentropy)`` and ``train_on_batch`` (what
``fit`` runs per batch), inference ``model(x, training=False)`` without autograd. Only "eager":
Keras' ``jit_compile`` on torch (torch.compile under Keras) is not measured.

Mirrors: ``tf_impl/benchmark.py`` (the same Keras code on TensorFlow), ``torch_impl/benchmark.py``.
"""

from __future__ import annotations

import platform
import sys
from typing import Any, Callable

import keras
import torch

from bench.measure_backend import DeviceBackend
from tf_impl.keras_tasks import build_bench_model
# torch's device layer, shared with the port's benchmark (these import no model).
from torch_impl.benchmark import (check_precision, device_for, device_label, is_oom, make_sync,  # noqa: F401
                                  memory_counters, memory_in_use, op_profile, set_tf32, threads)
from torch_impl.benchmark import matmul_step as torch_matmul_step


def build_model(row: dict[str, Any]) -> tuple[keras.Model, str]:
    model, label = build_bench_model(row)
    return model, f"{label} on Keras' torch backend"


def synthetic_batch(row: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A device-resident batch of raw 0..255 pixels (NHWC, the Keras model's layout) and labels."""
    g = torch.Generator(device="cpu").manual_seed(int(row.get("seed", 0)))
    b, s = row["batch"], row["input_size"]
    return (torch.rand(b, s, s, 3, generator=g) * 255).to(device), torch.randint(0, row["classes"], (b,), generator=g).to(device)


def pipeline_batches(row: dict[str, Any], device: torch.device) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Batches from the manifest's torch pipeline (``torch_impl.data.make_loader``), NHWC, endlessly;
    full batches only (as the other two sides)."""
    from bench.dataset import PipelineOptions, load_manifest
    from torch_impl import data as td

    manifest = load_manifest(row["manifest"], data_root=row.get("data_root"), verify="size")
    options = PipelineOptions(image_size=row["input_size"], batch_size=row["batch"])
    row["pipeline"] = {**options.to_dict(), "loader": "torch DataLoader (NHWC for Keras)"}
    loader = td.make_loader(manifest, "training", options)

    def endless():
        while True:
            yield from loader

    batches = endless()

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            x, y = next(batches)
            if x.shape[0] == row["batch"]:
                return x.permute(0, 2, 3, 1).contiguous().to(device), y.to(device)
    return next_batch


def make_step(model: keras.Model, row: dict[str, Any], device: torch.device,
              batches: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], Any]:
    """One ``train_on_batch`` of the seed's compile, or one inference forward without autograd."""
    if row["mode"] == "infer":
        def infer_step():
            x, _ = batches()
            with torch.no_grad():
                return model(x, training=False)
        return infer_step
    optimizer = keras.optimizers.Adam()  # Keras defaults: lr 1e-3, epsilon 1e-7
    if row["precision"] == "fp16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")  # on the softmax, as the seed

    def train_step():
        x, y = batches()
        return model.train_on_batch(x, y)  # the loss as a Python float: the step is done
    return train_step


class Backend(DeviceBackend):
    """Keras-on-torch hooks for ``bench.measure``'s shared row and peak loops, on one torch device."""

    framework = "keras-torch"
    impl = sys.modules[__name__]

    def __init__(self, device: torch.device):
        super().__init__(device, gpu=device.type == "cuda")

    def skip_reason(self, row: dict[str, Any]) -> str | None:
        reason = check_precision(row["precision"], self.device)
        if reason is None and row["layout"] != "nhwc":
            reason = "the Keras model is NHWC (channels_last), as Keras builds it"
        if reason is None and row["compile"] != "eager":
            reason = "Keras' jit_compile on the torch backend is not measured (eager: what fit runs by default)"
        return reason

    def matmul_step(self, precision: str, n: int) -> Callable[[], torch.Tensor]:
        return torch_matmul_step(self.device, precision, n)


run_row = Backend.run_row
peak_flops = Backend.peak_flops
bench_row = Backend.bench_row


def versions() -> dict[str, Any]:
    return {"keras": keras.__version__, "backend": keras.backend.backend(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version()}


def environment(device: torch.device) -> dict[str, Any]:
    return {"framework": "keras-torch", "device": device_label(device), "threads": threads(), "versions": versions()}
