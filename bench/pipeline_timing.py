"""The timing loop of the workers' ``pipeline_speed`` task (``tf_impl.data``, ``torch_impl.data``):
training steps fed by the real input pipeline against the same kind of batches already in memory.

Blocks of ``steps`` synced training steps alternate (real, memory, real, memory, ...) so that drift
on a shared machine hits both alike; throughput = images / synced block time. Time spent waiting
for the next batch is recorded too: a pipeline that keeps up makes it ~0. Framework-free: each
worker supplies the step, the feeds and its device sync.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

Batch = tuple[Any, Any]


def alternate_feeds(train_step: Callable[[Any, Any], Any], next_real: Callable[[int], Batch],
                    memory: Sequence[Batch], *, steps: int, rounds: int, prefix: str, quiet: bool,
                    sync: Callable[[], None] = lambda: None) -> dict[str, list[dict[str, float]]]:
    """``rounds`` pairs of blocks (real, then memory): per block, images/s, the fraction of it spent
    waiting for data, and its seconds. ``train_step(x, y)`` must return once the step has finished;
    ``sync()`` brackets each block (a GPU's queue). Progress on stderr unless ``quiet``, each line
    starting with ``prefix``."""

    def block(feed: Callable[[int], Batch]) -> tuple[float, float, int]:
        sync()
        images, waited, start = 0, 0.0, time.perf_counter()
        for k in range(steps):
            t = time.perf_counter()
            x, y = feed(k)
            waited += time.perf_counter() - t
            train_step(x, y)
            images += int(x.shape[0])
        sync()
        return time.perf_counter() - start, waited, images

    runs: dict[str, list[dict[str, float]]] = {"real": [], "memory": []}
    for r in range(rounds):
        for mode, feed in (("real", next_real), ("memory", lambda k: memory[k % len(memory)])):
            seconds, waited, images = block(feed)
            runs[mode].append({"images_per_s": images / seconds, "wait_fraction": waited / seconds, "seconds": seconds})
            if not quiet:
                print(f"{prefix}round {r + 1}/{rounds} {mode:<6} {images / seconds:6.2f} img/s "
                      f"(waiting for data {100 * waited / seconds:.1f}%)", file=sys.stderr, flush=True)
    return runs
