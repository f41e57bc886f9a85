"""Keras model <-> WeightBundle. Keras layouts are the bundle's layouts: no transposes."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from bench.errors import UserError
from bench.spec import ModelSpec
from bench.weights import WeightBundle, load_weight_file


def to_bundle(model: keras.Model, spec: ModelSpec, source: str = "keras") -> WeightBundle:
    arrays: dict[str, np.ndarray] = {}
    for layer in spec.layers():
        values = model.get_layer(layer.name).get_weights()  # Keras order == layer.weight_names
        for name, value in zip(layer.weight_names, values):
            arrays[f"{layer.name}/{name}"] = np.asarray(value)
    return WeightBundle(arrays, {"model": spec.name, "classes": spec.classes, "source": source})


def from_bundle(model: keras.Model, spec: ModelSpec, bundle: WeightBundle, *, source: str = "weights",
                skip_head: bool = False) -> None:
    for layer, values in bundle.layers_to_load(spec, source=source, skip_head=skip_head):
        k_layer = model.get_layer(layer.name)
        dtype = k_layer.weights[0].dtype
        k_layer.set_weights([np.asarray(values[w], dtype=dtype) for w in layer.weight_names])


def load_file(path: str | Path, spec: ModelSpec, *, skip_head: bool = False) -> WeightBundle:
    """Any supported weight file -> bundle (a Keras 3 ``.weights.h5`` goes through a model)."""
    return load_weight_file(path, spec, skip_head=skip_head, own_format="keras_h5", load_own=_load_keras_h5)


def _load_keras_h5(path: str | Path, spec: ModelSpec) -> WeightBundle:
    from tf_impl.model import build

    model = build(spec)
    try:
        model.load_weights(str(path))
    except (ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: does not fit {spec.name} with {spec.classes} classes ({first}); "
                        f"nothing was written") from None
    return to_bundle(model, spec, source=str(path))


def save_file(bundle: WeightBundle, path: str | Path, spec: ModelSpec) -> None:
    """Bundle -> Keras 3 ``.weights.h5`` (written beside, then renamed)."""
    from bench.atomic import write_with
    from tf_impl.model import build

    model = build(spec)
    from_bundle(model, spec, bundle)
    # Keras insists on the '.weights.h5' ending, so the temporary name keeps it.
    write_with(path, lambda tmp: _save_weights(model, tmp))


def _save_weights(model: keras.Model, tmp: Path) -> None:
    named = tmp.with_name(tmp.name + ".weights.h5")
    try:
        model.save_weights(str(named))
        named.replace(tmp)
    finally:
        named.unlink(missing_ok=True)


def load_into(model: keras.Model, spec: ModelSpec, path: str | None, *, skip_head: bool = False) -> None:
    """``path``'s weights (any file :func:`load_file` reads) into ``model``; without a path, nothing."""
    if path:
        from_bundle(model, spec, load_file(path, spec, skip_head=skip_head), source=path, skip_head=skip_head)
