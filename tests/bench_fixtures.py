"""The small benchmark row of the framework benchmark tests (``tests/tf/test_bench_tf.py``,
``tests/torch/test_bench_torch.py``): one definition, so both sides measure the same thing.

Framework-free (``bench.measure`` only), so either test set imports it
(``from tests.bench_fixtures import ...``).
"""

from __future__ import annotations

from typing import Any

from bench import measure as bm

# 32 px, batch 2, one step a window: a whole row in seconds on two loaded cores.
SMALL = {"input": "synthetic", "batch": 2, "input_size": 32, "pooling": "global", "classes": 10,
         "arch": "resnet50", "precision": "fp32", "layout": "nhwc", "compile": "eager",
         "warmup": 1, "repeats": 5, "steps": 1, "memory_steps": 1, "device": "cpu"}


def small_row(framework: str, **changes: Any) -> dict[str, Any]:
    """A benchmark row of our model in training mode on the CPU, with ``changes``, and its id."""
    row = {"model": "ours", "mode": "train", "framework": framework, **SMALL, **changes}
    row["id"] = bm.row_id(row)
    return row
