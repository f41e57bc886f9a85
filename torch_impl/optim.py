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
     "beta_2": 0.999, "epsilon": 1e-7, "momentum": 0.0, "fused": True}

``fused`` exists on this side only (Keras ignores it): see :class:`KerasAdam`.

``torch-adam`` is ``torch.optim.Adam`` with the same learning rate and betas and eps =
``epsilon`` (the ablation passes torch's default 1e-8); it exists on this side only.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from bench.errors import UserError

# Keras defaults (keras.optimizers.Adam / SGD).
DEFAULTS: dict[str, Any] = {"name": "adam", "learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999,
                            "epsilon": 1e-7, "momentum": 0.0, "fused": True}
NAMES = ("adam", "sgd", "torch-adam")


class KerasAdam(torch.optim.Optimizer):
    """Adam as Keras computes it (epsilon-hat form, one shared step counter).

    ``fused=False`` runs the formula op for op (bit-identical to the per-tensor form);
    ``fused=True`` (the default, used for training) folds it into fewer passes (see ``_update``).

    State per parameter: ``momentum`` and ``velocity`` (Keras' names for m and v).
    The group key for the learning rate is ``lr`` so torch's LR schedulers work unchanged.
    """

    def __init__(self, params: Iterable, learning_rate: float = 1e-3, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, fused: bool = True):
        if learning_rate < 0 or epsilon < 0 or not (0.0 <= beta_1 < 1.0) or not (0.0 <= beta_2 < 1.0):
            raise ValueError(f"invalid Adam settings: learning_rate={learning_rate}, beta_1={beta_1}, "
                             f"beta_2={beta_2}, epsilon={epsilon}")
        super().__init__(params, {"lr": learning_rate, "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon})
        self.iterations = 0  # Keras: optimizer.iterations, incremented once per apply
        self.fused = fused

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # One list of (param, m, v, grad) per (device, dtype): each list is updated with
            # torch._foreach_* ops, the same element-wise operations in the same order as the
            # per-tensor formula in the module docstring, so the result is bit-identical to it
            # (tests/torch/test_optim.py) at a fraction of the kernel launches.
            buckets: dict[tuple, tuple[list, list, list, list]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ps, ms, vs, gs = buckets.setdefault((p.device, p.dtype), ([], [], [], []))
                ps.append(p)
                ms.append(state["momentum"])
                vs.append(state["velocity"])
                gs.append(p.grad.to(p.dtype))
            for (device, dtype), (ps, ms, vs, gs) in buckets.items():
                self._update(ps, ms, vs, gs, self._alpha(group, device, dtype), group)
        self.iterations += 1
        return loss

    def _alpha(self, group: dict, device: torch.device, dtype: torch.dtype) -> float:
        """``lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)`` computed in ``dtype`` as Keras does;
        returned as a Python float, which holds that ``dtype`` value exactly."""
        like = torch.empty((), dtype=dtype, device=device)
        lr = torch.tensor(group["lr"], dtype=dtype, device=device)
        local_step = torch.tensor(self.iterations + 1, dtype=dtype, device=device)
        beta_1_power = torch.pow(_keras_cast(group["beta_1"], like), local_step)
        beta_2_power = torch.pow(_keras_cast(group["beta_2"], like), local_step)
        return float(lr * torch.sqrt(1 - beta_2_power) / (1 - beta_1_power))

    def _update(self, ps: list, ms: list, vs: list, gs: list, alpha: float, group: dict) -> None:
        beta_1, beta_2, epsilon = group["beta_1"], group["beta_2"], group["epsilon"]
        if self.fused:
            # The same formula in 16 passes over the weights instead of 30: lerp computes
            # m + w * (g - m) for w < 0.5 and addcdiv p + (-alpha) * (m / d), with fused
            # multiply-adds. 2.7x faster on ResNet-50 here (0.058 s vs 0.15 s a step on
            # 2 cores); the moments differ from the op-for-op form by a few ulps of their largest
            # element (tests/torch/test_keras_adam.py). That is far below what parity tolerates.
            torch._foreach_lerp_(ms, gs, 1 - beta_1)
            torch._foreach_lerp_(vs, torch._foreach_mul(gs, gs), 1 - beta_2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_add_(denom, epsilon)
            torch._foreach_addcdiv_(ps, ms, denom, -alpha)
            return
        # Op for op (fused=False): m += (g - m) * (1 - beta_1)
        delta = torch._foreach_sub(gs, ms)
        torch._foreach_mul_(delta, 1 - beta_1)
        torch._foreach_add_(ms, delta)
        # v += (g*g - v) * (1 - beta_2)
        delta = torch._foreach_mul(gs, gs)
        torch._foreach_sub_(delta, vs)
        torch._foreach_mul_(delta, 1 - beta_2)
        torch._foreach_add_(vs, delta)
        # w -= (m * alpha) / (sqrt(v) + epsilon)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_add_(denom, epsilon)
        step = torch._foreach_mul(ms, alpha)
        torch._foreach_div_(step, denom)
        torch._foreach_sub_(ps, step)

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
                         epsilon=c["epsilon"], fused=bool(c["fused"]))
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
