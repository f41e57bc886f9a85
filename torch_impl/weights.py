"""PyTorch model <-> WeightBundle: OIHW <-> HWIO kernels, Linear (out, in) <-> Dense (in, out),
BN weight/bias/running_mean/running_var <-> gamma/beta/moving_mean/moving_variance."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench import atomic
from bench.errors import UserError
from bench.spec import ModelSpec
from bench.weights import WeightBundle, load_weight_file
from torch_impl.model import module_name

BN_TORCH = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def to_keras(kind: str, weight: str, value: torch.Tensor) -> np.ndarray:
    """One torch weight as Keras stores it (conv OIHW -> HWIO, dense (out, in) -> (in, out))."""
    array = value.detach().cpu().numpy()
    if weight == "kernel":
        array = array.transpose(2, 3, 1, 0) if kind == "conv" else array.T
    return np.ascontiguousarray(array)


def from_keras(kind: str, weight: str, value: np.ndarray) -> np.ndarray:
    """One Keras weight in torch's layout (the inverse of :func:`to_keras`)."""
    if weight == "kernel":
        value = value.transpose(3, 2, 0, 1) if kind == "conv" else value.T
    return np.ascontiguousarray(value)


def torch_attr(kind: str, weight: str) -> str:
    """The torch attribute holding Keras weight ``weight`` of a ``kind`` layer (gamma -> weight, ...)."""
    return BN_TORCH[weight] if kind == "bn" else ("weight" if weight == "kernel" else "bias")


def to_bundle(model: nn.Module, spec: ModelSpec, source: str = "torch") -> WeightBundle:
    arrays: dict[str, np.ndarray] = {}
    for layer in spec.layers():
        module = model.get_submodule(module_name(layer))
        for w in layer.weight_names:
            arrays[f"{layer.name}/{w}"] = to_keras(layer.kind, w, getattr(module, torch_attr(layer.kind, w)))
    return WeightBundle(arrays, {"model": spec.name, "classes": spec.classes, "source": source})


@torch.no_grad()
def from_bundle(model: nn.Module, spec: ModelSpec, bundle: WeightBundle, *, source: str = "weights",
                skip_head: bool = False) -> None:
    for layer, values in bundle.layers_to_load(spec, source=source, skip_head=skip_head):
        module = model.get_submodule(module_name(layer))
        for w in layer.weight_names:
            target = getattr(module, torch_attr(layer.kind, w))
            target.copy_(torch.from_numpy(from_keras(layer.kind, w, values[w])).to(target.dtype))


def load_file(path: str | Path, spec: ModelSpec, *, skip_head: bool = False) -> WeightBundle:
    """Any weight file this side can read -> bundle (.npz, legacy .h5, .pt state dict)."""
    return load_weight_file(path, spec, skip_head=skip_head, own_format="torch_pt", load_own=_load_state_dict)


def _load_state_dict(path: str | Path, spec: ModelSpec) -> WeightBundle:
    from torch_impl.model import build

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise UserError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}); export it again") from None
    model = build(spec)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise UserError(f"{path}: {'missing' if missing else 'unexpected'} tensor {first!r}: not a "
                        f"{spec.name} state dict; nothing was written")
    return to_bundle(model, spec, source=str(path))


def save_file(bundle: WeightBundle, path: str | Path, spec: ModelSpec) -> None:
    """Bundle -> ``.pt`` state dict of ``torch_impl.model`` (atomic)."""
    from torch_impl.model import build

    model = build(spec)
    from_bundle(model, spec, bundle)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic.write_bytes(path, buf.getvalue())


def load_into(model: nn.Module, spec: ModelSpec, path: str | None, *, skip_head: bool = False) -> None:
    """``path``'s weights (any file :func:`load_file` reads) into ``model``; without a path, nothing."""
    if path:
        from_bundle(model, spec, load_file(path, spec, skip_head=skip_head), source=path, skip_head=skip_head)
