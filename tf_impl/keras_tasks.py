"""Worker tasks written against Keras alone (``keras.ops``, no ``tf.``), so that the same code
runs in the TensorFlow worker and in the Keras-on-torch worker (``tf_impl.keras_torch_worker``):
the model, its weights and what is read out of it are then the same code on both backends.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterable

import keras
import numpy as np

from bench.spec import ModelSpec, build_spec, spec_from_args
from tf_impl import model as tfm
from tf_impl import weights as tfw


def model_and_bundle(args) -> tuple[ModelSpec, keras.Model]:
    """Build the model named by ``args`` and load ``args['weights']`` (a bundle or other file)."""
    spec = spec_from_args(args)
    set_random_seed(int(args.get("seed", 0)))
    model = tfm.build(spec, dtype=args.get("dtype", "float32"))
    tfw.load_into(model, spec, args.get("weights"), skip_head=bool(args.get("skip_head")))
    return spec, model


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed``, except that on the torch backend it leaves TensorFlow alone:
    Keras 3.15 imports tensorflow there too, if installed, only to seed tf.data
    (keras/src/utils/rng_utils.py), and the keras-torch arm must not hold tensorflow."""
    if keras.backend.backend() != "torch":
        keras.utils.set_random_seed(seed)
        return
    import random

    import torch
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    global_state.set_global_attribute("global_random_seed", seed)  # what keras.utils.get_random_seed reads
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# twinbench's precision names -> Keras dtype policies (mixed: low-precision compute, fp32 variables).
POLICIES = {"fp32": "float32", "tf32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
TRAIN_POLICIES = {"fp32": "float32", "mixed_bf16": "mixed_bfloat16", "mixed_fp16": "mixed_float16"}  # --precision


@contextlib.contextmanager
def policy(precision: str):
    """Keras' global dtype policy while a model is built, restored afterwards."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[precision])
    try:
        yield POLICIES[precision]
    finally:
        keras.config.set_dtype_policy(before)


def build_bench_model(row: dict[str, Any]) -> tuple[keras.Model, str]:
    """A bench row's model under its policy: ours (from bench.spec) or keras.applications.ResNet50
    (weights=None), on whichever backend Keras runs."""
    set_random_seed(int(row.get("seed", 0)))
    with policy(row["precision"]) as dtype:
        if row["model"] == "ours":
            spec = build_spec(row.get("arch", "resnet50"), row["classes"], row["input_size"], row["pooling"])
            return tfm.build(spec, dtype=dtype), "ours (tf_impl.model)"
        s = row["input_size"]
        return (keras.applications.ResNet50(weights=None, input_shape=(s, s, 3), classes=row["classes"]),
                f"keras.applications.ResNet50 ({keras.__version__})")


def _count(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def forward(args, inputs, job_dir):
    """Inference forward pass: logits, probabilities, counts, names and probe-point shapes. In
    float64, Keras keeps float64 on every backend (``tf_impl.tape.exact_float64``)."""
    from tf_impl.tape import exact_float64

    patched = exact_float64() if args.get("dtype") == "float64" else False
    spec, model = model_and_bundle(args)
    x = keras.ops.convert_to_tensor(inputs["x"], dtype=args.get("dtype", "float32"))
    features = tfm.features_model(model, spec)(x, training=False)
    logits = tfm.logits(model, spec, features)
    probs = model(x, training=False)
    trainable, non_trainable = _count(model.trainable_weights), _count(model.non_trainable_weights)
    shapes = {p: list(model.get_layer(tfm.block_output_layer(spec, p)).output.shape[1:])
              for p in spec.probe_points if p != "logits"}
    result = {
        "params": {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable},
        "weighted_layers": [layer.name for layer in model.layers if layer.weights],
        "layers": [layer.name for layer in model.layers],
        "shapes": shapes,
        "backend": keras.backend.backend(),
        "float64_promotion_patched": patched,
    }
    arrays = {"logits": logits, "probs": probs, "features": features}
    return result, {k: keras.ops.convert_to_numpy(v) for k, v in arrays.items()}


def export(args, inputs, job_dir):
    """Build (Keras' own initialisers, or ``weights``) and write the model's bundle to ``out``."""
    spec, model = model_and_bundle(args)
    tfw.to_bundle(model, spec, source=args.get("weights") or "keras init").save(args["out"])
    return {"out": args["out"]}, None


# ---- what both Keras trainers do alike (tf_impl.train, tf_impl.keras_torch_train) -------------------
def bn_moments(model: keras.Model) -> Callable[[Any], tuple[Any, Any]]:
    """The step of :func:`estimate_bn`: a training-mode call of ``model`` on a batch with every BN
    layer's momentum 0, so that each layer's moving statistics become that batch's moments, then
    all of them as two flat tensors (means, variances). Momentum is read when the call runs (or is
    traced, so a caller may wrap this in ``tf.function``: it is traced inside estimate_bn)."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]

    def moments(x):
        model(x, training=True)
        return (keras.ops.concatenate([layer.moving_mean for layer in layers]),
                keras.ops.concatenate([layer.moving_variance for layer in layers]))

    return moments


def estimate_bn(model: keras.Model, batches: Iterable[Any],
                moments: Callable[[Any], tuple[Any, Any]] | None = None) -> None:
    """Evaluation "precise-bn": each BN layer's moving statistics from ``batches`` (images), in
    training mode with the current weights: the mean of the batch means and of the biased batch
    variances, summed in float64 (torch_impl computes the same with momentum 1/k). ``moments``:
    :func:`bn_moments` of ``model``, as the caller keeps it (the TF trainer traces it once);
    default a new, eager one."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    moments = moments or bn_moments(model)
    saved = [layer.momentum for layer in layers]
    sums: list[np.ndarray] = []
    count = 0
    try:
        for layer in layers:
            layer.momentum = 0.0
        for x in batches:
            batch = [keras.ops.convert_to_numpy(t).astype(np.float64) for t in moments(x)]
            sums = batch if not sums else [a + b for a, b in zip(sums, batch)]
            count += 1
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    if not count:
        return
    means, variances = (total / count for total in sums)
    start = 0
    for layer in layers:
        end = start + int(layer.moving_mean.shape[0])
        layer.moving_mean.assign(means[start:end].astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(variances[start:end].astype(layer.moving_variance.dtype))
        start = end


def save_checkpoint(model: keras.Model, spec: ModelSpec, stem: Path, source: str,
                    to_numpy: Callable[[Any], np.ndarray] = np.asarray) -> list[str]:
    """Weights as a bundle and the optimizer's variables, each written atomically; the file names."""
    from bench import atomic

    tfw.to_bundle(model, spec, source=source).save(stem.parent / f"{stem.name}.npz")
    arrays = {f"{i:04d}": to_numpy(v) for i, v in enumerate(model.optimizer.variables)}
    atomic.write_npz(stem.parent / f"{stem.name}.opt.npz", arrays)
    return [f"{stem.name}.npz", f"{stem.name}.opt.npz"]


def load_checkpoint(model: keras.Model, spec: ModelSpec, stem: Path) -> None:
    """What :func:`save_checkpoint` wrote, back into the model and its optimizer (one-line
    UserErrors for a checkpoint of another configuration)."""
    from bench.errors import UserError
    from bench.weights import WeightBundle

    bundle_path = stem.parent / f"{stem.name}.npz"
    tfw.from_bundle(model, spec, WeightBundle.load(bundle_path), source=str(bundle_path))
    with np.load(stem.parent / f"{stem.name}.opt.npz") as data:
        values = [data[k] for k in sorted(data.files)]
    variables = list(model.optimizer.variables)
    if len(values) != len(variables):
        raise UserError(f"{stem}.opt.npz holds {len(values)} optimizer variables, this optimizer has "
                        f"{len(variables)}: the checkpoint is from another configuration")
    for variable, value in zip(variables, values):
        if tuple(variable.shape) != value.shape:
            raise UserError(f"{stem}.opt.npz: {variable.path} has shape {value.shape}, expected "
                            f"{tuple(variable.shape)}")
        variable.assign(value)
