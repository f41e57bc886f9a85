"""The training split's orders that both frameworks' pipelines follow, a library (numpy only):
``manifest`` and ``fixed-batches``; ``native`` is each framework's own shuffling. What each order
means on each side: docs/records.md."""

from __future__ import annotations

from typing import Any

import numpy as np

ORDERS = ("native", "manifest", "fixed-batches")
MAX_SEED = 2**32 - 1  # numpy.random.RandomState accepts 0 .. 2**32 - 1


def epoch_permutation(manifest_or_seed: Any, split_size: int, epoch: int) -> np.ndarray:
    """The order of a split's files in ``epoch`` for ``order="manifest"``: numpy only, so the TF
    and the torch pipeline follow identical batches (``tf.data``'s shuffle cannot be reproduced
    outside TF). ``RandomState`` streams are frozen by NumPy (NEP 19), so the order is stable."""
    seed = int(getattr(manifest_or_seed, "seed", manifest_or_seed))  # a Manifest or a seed
    if epoch < 0 or split_size < 0:
        raise ValueError(f"epoch and split_size must be >= 0, received {epoch}, {split_size}")
    return np.random.RandomState([seed & MAX_SEED, int(epoch)]).permutation(split_size).astype(np.int64)


def fixed_batches_order(seed: int, split_size: int, batch_size: int, epoch: int) -> np.ndarray:
    """``order="fixed-batches"``: epoch 0's batches of the manifest order stay together in every
    epoch, visited in a new order from epoch 1 on (the short last batch stays last), as the seed's
    ``cache()`` after ``batch()`` keeps TF's; here both sides get the same batches (docs/records.md)."""
    base = epoch_permutation(seed, split_size, 0)
    full = split_size // batch_size  # PipelineOptions keeps batch_size >= 1
    if epoch == 0 or full < 2:
        return base
    visit = np.random.RandomState([int(seed) & MAX_SEED, int(epoch), 1]).permutation(full)
    groups = base[:full * batch_size].reshape(full, batch_size)[visit].reshape(-1)
    return np.concatenate([groups, base[full * batch_size:]])


def epoch_order(options: Any, split_size: int, epoch: int) -> np.ndarray:
    """The training split's shared order in ``epoch`` (``manifest`` or ``fixed-batches``)."""
    if options.order == "manifest":
        return epoch_permutation(options.seed, split_size, epoch)
    if options.order == "fixed-batches":
        return fixed_batches_order(options.seed, split_size, options.batch_size, epoch)
    raise ValueError(f"order {options.order!r} has no shared epoch order (each framework shuffles natively)")
