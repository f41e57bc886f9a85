"""What the framework test sets share, so that both sides test the same thing: the small benchmark
row (``tests/tf/test_bench_tf.py``, ``tests/torch/test_bench_torch.py``), the format zoo and its
manifest (``test_tf_data.py``, ``test_torch_data.py``), and the learning-rate check
(``test_lr_schedule.py`` on both sides).

Framework-free (bench library modules and numpy only), so either test set imports it
(``from tests.bench_fixtures import ...``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench import measure as bm
from bench.dataset import Manifest, build_manifest
from bench.training import TrainConfig
from tests.data_fixtures import make_class_folder, make_format_zoo

# 32 px, batch 2, one step a window: a whole row in seconds on two loaded cores.
SMALL = {"input": "synthetic", "batch": 2, "input_size": 32, "pooling": "global", "classes": 10,
         "arch": "resnet50", "precision": "fp32", "layout": "nhwc", "compile": "eager",
         "warmup": 1, "repeats": 5, "steps": 1, "memory_steps": 1, "device": "cpu"}


def small_row(framework: str, **changes: Any) -> dict[str, Any]:
    """A benchmark row of our model in training mode on the CPU, with ``changes``, and its id."""
    row = {"model": "ours", "mode": "train", "framework": framework, **SMALL, **changes}
    row["id"] = bm.row_id(row)
    return row


# ---- the data pipelines' format zoo --------------------------------------------------------------
def format_zoo(root: Path) -> tuple[Path, dict[str, Path], Manifest]:
    """(root, the zoo's files by kind, its manifest: 30% validation, seed 11): every image format
    the pipelines read, written under ``root``."""
    files = make_format_zoo(root)
    return root, files, build_manifest(root, validation_split=0.3, seed=11)


# ---- the learning-rate schedule ------------------------------------------------------------------
SCHEDULE_SPEC = ("resnet50", 2, 32, "global")  # build_spec arguments: 2 classes, 32 px
SCHEDULE_BATCH = 4


def schedule_trainer_job(tmp_path: Path, save_init: Callable[[Path], None]) -> dict[str, Any]:
    """A Trainer's job: cosine schedule, batch 4, six images split in half, starting from the
    bundle ``save_init(path)`` writes."""
    save_init(tmp_path / "init.npz")
    build_manifest(make_class_folder(tmp_path / "data", {"a": 3, "b": 3}), validation_split=0.5,
                   seed=1).save(tmp_path / "manifest.json")
    config = TrainConfig(classes=2, input_size=32, pooling="global", batch_size=SCHEDULE_BATCH, lr_schedule="cosine")
    return {"config": dataclasses.asdict(config), "manifest": str(tmp_path / "manifest.json"),
            "init": str(tmp_path / "init.npz")}


def schedule_batch() -> tuple[np.ndarray, np.ndarray]:
    """(NHWC float32 images, labels) of the schedule check's training batch."""
    g = np.random.default_rng(0)
    return (g.standard_normal((SCHEDULE_BATCH, 32, 32, 3)) * 50).astype(np.float32), np.array([0, 1, 0, 1])


def check_learning_rate_takes_effect(trainer: Any, batch: Any, weights: Callable[[], list[np.ndarray]]) -> None:
    """After a first step at the configured rate, ``trainer.set_learning_rate(0.0)`` leaves every
    trainable weight (``weights()``, as numpy copies) where it is, and a rate moves over 100 of them."""
    trainer.train_step(batch)  # the first step at the configured rate (TF traces its step here)
    trainer.set_learning_rate(0.0)
    before = weights()
    trainer.train_step(batch)
    after = weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), "rate 0 moved a weight"
    trainer.set_learning_rate(1e-3)
    trainer.train_step(batch)
    moved = sum(float(np.abs(a - b).max()) > 0 for a, b in zip(before, weights()))
    assert moved > 100, f"rate 1e-3 after rate 0 moved only {moved} weight tensors"
