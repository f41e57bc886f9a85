"""Optimizers for the TF side, built from the same config dict as ``torch_impl.optim``.

Keras' own optimizers, configured from the shared dict (see ``torch_impl.optim`` for the keys
and for why torch needs :class:`torch_impl.optim.KerasAdam`). :func:`moments` exposes Adam's
first and second moments per variable, so parity can compare them with the torch side's.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from bench.errors import UserError

# Keras defaults (keras.optimizers.Adam / SGD); mirror of torch_impl.optim.DEFAULTS.
DEFAULTS: dict[str, Any] = {"name": "adam", "learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999,
                            "epsilon": 1e-7, "momentum": 0.0}
NAMES = ("adam", "sgd")


def resolve(config: dict | None) -> dict[str, Any]:
    """The config with Keras' defaults filled in, validated."""
    merged = {**DEFAULTS, **(config or {})}
    if merged["name"] not in NAMES:
        raise UserError(f"optimizer {merged['name']!r} has no Keras counterpart: choose one of {', '.join(NAMES)}")
    return merged


def build(config: dict | None) -> keras.optimizers.Optimizer:
    """The Keras optimizer a config names (mirror of ``torch_impl.optim.build``)."""
    c = resolve(config)
    if c["name"] == "adam":
        return keras.optimizers.Adam(learning_rate=c["learning_rate"], beta_1=c["beta_1"], beta_2=c["beta_2"],
                                     epsilon=c["epsilon"])
    return keras.optimizers.SGD(learning_rate=c["learning_rate"], momentum=c["momentum"])


def moments(optimizer: keras.optimizers.Optimizer,
            variables: Sequence[keras.Variable]) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """(m, v) per variable, in the order given; None for optimizers without moments.

    Keras 3.15 keeps them in ``_momentums`` / ``_velocities``, indexed by
    ``_get_variable_index`` (private API: checked by tests/tf/test_tf_probes.py).
    """
    if not isinstance(optimizer, keras.optimizers.Adam):
        return None
    out = []
    for variable in variables:
        index = optimizer._get_variable_index(variable)
        out.append((np.asarray(optimizer._momentums[index]), np.asarray(optimizer._velocities[index])))
    return out
