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


class TFBetaCorrection(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate that makes Keras' Adam on the torch backend take TF's float64 steps.

    Keras' Adam computes its bias correction ``sqrt(1 - beta_2**t) / (1 - beta_1**t)`` from
    ``ops.cast(beta, dtype)``; on TensorFlow a Python float becomes a float32 constant before the
    cast (beta_1 = 0.8999999761581421 in a float64 model; ``torch_impl.optim._keras_cast`` mirrors
    it), on torch it is cast exactly. In float64 that moves every update by ~1e-8 of itself (stem
    4.7e-9 of max|w| after one step at 64 px; the parity issue's float64 Adam tolerance is 1e-14).
    This schedule scales the learning rate by TF's correction over the exact one, step by step, so
    the torch backend's alpha equals TF's to a few ulps. Used by float64 parity only, and named in
    its record (``bench.parity``)."""

    def __init__(self, learning_rate: float, beta_1: float, beta_2: float):
        self.learning_rate, self.beta_1, self.beta_2 = learning_rate, beta_1, beta_2

    def __call__(self, step):
        t = keras.ops.cast(step, "float64") + 1.0

        def correction(b1: float, b2: float):
            return keras.ops.sqrt(1.0 - keras.ops.power(b2, t)) / (1.0 - keras.ops.power(b1, t))

        tf_betas = (float(np.float32(self.beta_1)), float(np.float32(self.beta_2)))
        return self.learning_rate * correction(*tf_betas) / correction(self.beta_1, self.beta_2)

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "beta_1": self.beta_1, "beta_2": self.beta_2}


def build(config: dict | None) -> keras.optimizers.Optimizer:
    """The Keras optimizer a config names (mirror of ``torch_impl.optim.build``); with
    ``tf_beta_correction`` (Adam) the learning rate is :class:`TFBetaCorrection`'s."""
    c = resolve(config)
    if c["name"] == "adam":
        lr = c["learning_rate"]
        if c.get("tf_beta_correction"):
            lr = TFBetaCorrection(lr, c["beta_1"], c["beta_2"])
        return keras.optimizers.Adam(learning_rate=lr, beta_1=c["beta_1"], beta_2=c["beta_2"], epsilon=c["epsilon"])
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
        out.append((keras.ops.convert_to_numpy(optimizer._momentums[index]),
                    keras.ops.convert_to_numpy(optimizer._velocities[index])))
    return out
