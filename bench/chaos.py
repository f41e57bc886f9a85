"""The chaos control: how far two runs of ONE framework drift apart from a one-ulp change.

Training a deep network in float32 is chaotic: a difference of one unit in the last place (ulp)
in the starting weights grows, step by step, until two runs of the same code on the same batches
are as far apart as any two runs. A cross-framework difference is therefore only evidence of a
porting error when it is clearly larger than that self-divergence. The control trains torch a
second time from the shared bundle with every float moved by one ulp (``numpy.nextafter``
towards +inf), with the same batches (manifest order) and seed, and records per step the loss
and a sampled-weight distance for TF vs torch and torch vs torch-1ulp.

Worker side: :func:`sample_indices` says which elements of which weights each framework traces
per step (Keras layout, the same on both sides); the trace is written to ``trace.npz`` in the
framework's run directory. Parent side: :func:`perturb_bundle` and :func:`analyse`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bench import atomic

FORMAT = "twinbench.chaos"
VERSION = 1
TRACE_NAME = "trace.npz"
PER_TENSOR = 64  # sampled elements per weight tensor per step (~20k of ResNet-50's 25M)
# "Explained by rounding": the cross-framework distance within this factor of the 1-ulp self
# distance over the first ONSET_STEPS steps. Adam's first step already turns one ulp into ~3e-4
# (the sign of tiny gradients decides a full lr-sized update), and after ~30 steps any two runs
# are equally far apart, so only the onset tells a port bug from rounding. Measured on the demo,
# quick profile, 2 epochs, seed 123 (docs/profiles.md): the aligned port 0.9-1.0 at every step;
# a planted bn-eps bug 5.4 at step 1, 2.0 at step 2, 1.1 from step 12 on.
EXPLAINED_FACTOR = 2.0
ONSET_STEPS = 10


def trainable_keys(spec) -> list[str]:
    """Bundle keys of the trained weights (BN moving statistics are not trained)."""
    return [k for k in spec.weight_shapes() if not k.endswith(("/moving_mean", "/moving_variance"))]


def sample_indices(spec, per_tensor: int = PER_TENSOR) -> dict[str, np.ndarray]:
    """Bundle key -> flat indices in Keras layout: evenly spaced, all of a small tensor."""
    out, shapes = {}, spec.weight_shapes()
    for key in trainable_keys(spec):
        size = math.prod(shapes[key])
        count = min(size, per_tensor)
        out[key] = np.unique(np.linspace(0, size - 1, count).round().astype(np.int64))
    return out


def perturb_bundle(src: Path, dst: Path) -> dict[str, Any]:
    """Write ``dst``: the bundle ``src`` with every floating-point weight moved by one ulp."""
    from bench.weights import WeightBundle

    bundle = WeightBundle.load(src)
    arrays = {}
    for key, value in bundle.arrays.items():
        if np.issubdtype(value.dtype, np.floating):
            value = np.nextafter(value, np.array(np.inf, dtype=value.dtype))
        arrays[key] = value
    WeightBundle(arrays, {**bundle.meta, "source": f"{bundle.meta.get('source')} + 1 ulp"}).save(dst)
    return {"source": str(src), "path": str(dst), "tensors": len(arrays)}


def write_trace(fw_dir: Path, samples: list[np.ndarray]) -> None:
    if samples:
        atomic.write_npz(fw_dir / TRACE_NAME, {"weights": np.stack(samples).astype(np.float32)})


def read_trace(fw_dir: Path) -> np.ndarray | None:
    path = fw_dir / TRACE_NAME
    if not path.is_file():
        return None
    with np.load(path) as data:
        return np.asarray(data["weights"], dtype=np.float64)


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per step: ||a - b|| / ||a|| over the sampled weights."""
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-30)


def step_losses(run: dict[str, Any]) -> np.ndarray:
    return np.asarray([x for e in run.get("history") or [] for x in e.get("step_loss") or []], dtype=np.float64)


def analyse(traces: dict[str, np.ndarray | None], losses: dict[str, np.ndarray], *,
            reference: str = "tf", port: str = "torch", control: str = "torch-1ulp",
            factor: float = EXPLAINED_FACTOR) -> dict[str, Any]:
    """Per-step distances and the factor cross / self. ``traces`` and ``losses`` are keyed by run
    (``reference``, ``port``, ``control``)."""
    missing = [k for k in (reference, port, control) if traces.get(k) is None]
    if missing:
        return {"status": "incomplete", "message": f"no weight trace for {', '.join(missing)}"}
    steps = min(len(traces[k]) for k in (reference, port, control))
    if steps < 2:
        return {"status": "incomplete", "message": f"only {steps} traced step(s)"}
    ref, out, ctl = (traces[k][:steps] for k in (reference, port, control))
    cross = _distance(ref, out)
    self_ = _distance(out, ctl)
    n_loss = min(steps, *(len(losses.get(k, [])) for k in (reference, port, control)))
    loss = {k: losses[k][:n_loss] for k in (reference, port, control)}
    with np.errstate(divide="ignore", invalid="ignore"):
        loss_cross = np.abs(loss[reference] - loss[port]) / np.abs(loss[reference])
        loss_self = np.abs(loss[port] - loss[control]) / np.abs(loss[port])
    onset = slice(1, min(steps, ONSET_STEPS + 1))  # steps 1..10: before chaos saturates
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(self_ > 0, cross / np.maximum(self_, 1e-300), np.inf)
    ratio_onset = float(np.max(ratios[onset]))
    late = slice(steps // 2, steps)  # the second half: saturated, for information
    ratio_final = float(ratios[-1])
    ratio_late = float(np.median(cross[late]) / np.median(self_[late])) if np.median(self_[late]) > 0 else math.inf
    explained = ratio_onset <= factor
    return {
        "status": "complete", "steps": steps, "factor_threshold": factor,
        "weight_distance": {"cross": cross.tolist(), "self": self_.tolist()},
        "loss": {k: v.tolist() for k, v in loss.items()},
        "loss_rel_diff": {"cross": loss_cross.tolist(), "self": loss_self.tolist()},
        "factor": ratio_onset, "factor_steps": [onset.start, onset.stop - 1], "factor_late": ratio_late,
        "factor_final_step": ratio_final, "ratio_per_step": ratios.tolist(),
        "cross_final": float(cross[-1]), "self_final": float(self_[-1]),
        "explained": bool(explained),
        "summary": (f"over steps {onset.start}-{onset.stop - 1} the TF-torch weight distance is at most "
                    f"{ratio_onset:.3g}x the torch 1-ulp self-distance ({ratio_late:.3g}x over steps "
                    f"{late.start}-{steps - 1}); "
                    + ("the difference is explained by floating-point rounding alone" if explained else
                       f"more than {factor:g}x: not explained by rounding; look for a porting difference")),
    }
