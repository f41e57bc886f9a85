"""Optimizers for the torch side, built from the same config dict as ``tf_impl.optim``.

:class:`KerasAdam` is Keras' Adam (``keras/src/optimizers/adam.py``, Keras 3.15), operation for
operation, in the parameter's dtype::

    alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
    m += (g - m) * (1 - beta_1)
    v += (g*g - v) * (1 - beta_2)
    w -= (m * alpha) / (sqrt(v) + epsilon)

``beta_1**t`` and ``beta_2**t`` take the betas rounded to float32 first, as Keras' ``ops.cast``
does on the TF backend (:func:`_keras_cast`); in float32 that changes nothing, in float64 it
moves the update by ~7e-6 of itself (measured against Keras 3.15).

``epsilon`` (default 1e-7) is Kingma & Ba's "epsilon hat": it is added to sqrt(v) of the
UNcorrected second moment. ``torch.optim.Adam`` adds its eps (default 1e-8) to the bias-corrected
sqrt(v_hat), so Keras' update equals torch's only with eps = 1e-7 / sqrt(1 - beta_2**t), which
changes every step: no constant torch eps reproduces Keras (at step 1 it is 3.2e-6, 316 x
torch's default). The ``adam-eps`` parity ablation measures what that costs.

Keras keeps one step counter for all variables (``optimizer.iterations``); so does KerasAdam
(:attr:`KerasAdam.iterations`). Python scalars enter the update the way TF converts them: as
constants of the variable's dtype. The learning rate lives in a variable of Keras' floatx; the
parity workers set floatx to the model dtype, so here it is the parameter's dtype too.

Config dict (shared with ``tf_impl.optim.build``)::

    {"name": "adam" | "sgd" | "torch-adam", "learning_rate": 1e-3, "beta_1": 0.9,
     "beta_2": 0.999, "epsilon": 1e-7, "momentum": 0.0}

``torch-adam`` is ``torch.optim.Adam`` with the same learning rate and betas and eps =
``epsilon`` (the ablation passes torch's default 1e-8); it exists on this side only.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from bench.errors import UserError

# Keras defaults (keras.optimizers.Adam / SGD).
DEFAULTS: dict[str, Any] = {"name": "adam", "learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999,
                            "epsilon": 1e-7, "momentum": 0.0}
NAMES = ("adam", "sgd", "torch-adam")


class KerasAdam(torch.optim.Optimizer):
    """Adam exactly as Keras computes it (epsilon-hat form, one shared step counter).

    State per parameter: ``momentum`` and ``velocity`` (Keras' names for m and v).
    The group key for the learning rate is ``lr`` so torch's LR schedulers work unchanged.
    """

    def __init__(self, params: Iterable, learning_rate: float = 1e-3, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7):
        if learning_rate < 0 or epsilon < 0 or not (0.0 <= beta_1 < 1.0) or not (0.0 <= beta_2 < 1.0):
            raise ValueError(f"invalid Adam settings: learning_rate={learning_rate}, beta_1={beta_1}, "
                             f"beta_2={beta_2}, epsilon={epsilon}")
        super().__init__(params, {"lr": learning_rate, "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon})
        self.iterations = 0  # Keras: optimizer.iterations, incremented once per apply

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta_1, beta_2, epsilon = group["beta_1"], group["beta_2"], group["epsilon"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v, g = state["momentum"], state["velocity"], p.grad.to(p.dtype)
                lr = torch.tensor(group["lr"], dtype=p.dtype, device=p.device)
                local_step = torch.tensor(self.iterations + 1, dtype=p.dtype, device=p.device)
                beta_1_power = torch.pow(_keras_cast(beta_1, p), local_step)
                beta_2_power = torch.pow(_keras_cast(beta_2, p), local_step)
                alpha = lr * torch.sqrt(1 - beta_2_power) / (1 - beta_1_power)
                m.add_((g - m) * (1 - beta_1))
                v.add_((torch.square(g) - v) * (1 - beta_2))
                p.sub_((m * alpha) / (torch.sqrt(v) + epsilon))
        self.iterations += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        # The shared step counter is part of the state (Keras saves optimizer.iterations too).
        return {**super().state_dict(), "iterations": self.iterations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.iterations = int(state_dict.pop("iterations", 0))
        super().load_state_dict(state_dict)

    def moments(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, v) of one parameter (zeros before its first step)."""
        state = self.state.get(p) or {}
        zeros = torch.zeros_like(p)
        return state.get("momentum", zeros), state.get("velocity", zeros)


def _keras_cast(value: float, like: torch.Tensor) -> torch.Tensor:
    """``keras.ops.cast(python_float, dtype)`` on the TF backend: the float becomes a float32
    tensor first (TF's default for Python floats), then the cast. So in a float64 model Keras'
    bias corrections use beta_1 = 0.8999999761581421 (measured), while the moment updates,
    which multiply a tensor by the Python float, use 0.9 exactly."""
    return torch.tensor(value, dtype=torch.float32, device=like.device).to(like.dtype)


def resolve(config: dict | None) -> dict[str, Any]:
    """The config with Keras' defaults filled in, validated."""
    merged = {**DEFAULTS, **(config or {})}
    if merged["name"] not in NAMES:
        raise UserError(f"unknown optimizer {merged['name']!r}: choose one of {', '.join(NAMES)}")
    return merged


def build(config: dict | None, params: Iterable) -> torch.optim.Optimizer:
    """The optimizer a config names (mirror of ``tf_impl.optim.build``)."""
    c = resolve(config)
    if c["name"] == "adam":
        return KerasAdam(params, learning_rate=c["learning_rate"], beta_1=c["beta_1"], beta_2=c["beta_2"],
                         epsilon=c["epsilon"])
    if c["name"] == "torch-adam":
        return torch.optim.Adam(params, lr=c["learning_rate"], betas=(c["beta_1"], c["beta_2"]), eps=c["epsilon"])
    # Keras SGD without momentum: w -= g * lr; torch SGD: w += -lr * g. Same operation.
    return torch.optim.SGD(params, lr=c["learning_rate"], momentum=c["momentum"])


def moments(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first, second) moment of ``p`` for either Adam; None for optimizers without moments."""
    if isinstance(optimizer, KerasAdam):
        return optimizer.moments(p)
    if isinstance(optimizer, torch.optim.Adam):
        state = optimizer.state.get(p) or {}
        if "exp_avg" in state:
            return state["exp_avg"], state["exp_avg_sq"]
        return torch.zeros_like(p), torch.zeros_like(p)
    return None
