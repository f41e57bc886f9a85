"""The TF-side facts the parity reference relies on, checked against real Keras (tiny models)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_impl import optim


def keras_adam_numpy(w, grads, dtype, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Keras' Adam.update_step in numpy (mirror of tests/torch/test_keras_adam.py)."""
    w = np.array(w, dtype=dtype)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, dtype=dtype)
        b1p = np.power(dtype(np.float32(beta_1)), dtype(t))
        b2p = np.power(dtype(np.float32(beta_2)), dtype(t))
        alpha = dtype(lr) * np.sqrt(dtype(1) - b2p) / (dtype(1) - b1p)
        m = m + (g - m) * dtype(1 - beta_1)
        v = v + (np.square(g) - v) * dtype(1 - beta_2)
        w = w - (m * alpha) / (np.sqrt(v) + dtype(epsilon))
    return w, m, v


@pytest.fixture
def floatx():
    before = keras.config.floatx()
    yield keras.config.set_floatx
    keras.config.set_floatx(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keras_adam_is_the_formula_with_float32_betas_in_the_powers(floatx, dtype):
    floatx(np.dtype(dtype).name)
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=256)
    grads = [rng.normal(size=256) * np.logspace(-9, 1, 256) for _ in range(3)]
    var = keras.Variable(w0.astype(dtype), dtype=np.dtype(dtype).name)
    opt = optim.build({"name": "adam"})
    for g in grads:
        opt.apply_gradients([(tf.constant(g.astype(dtype)), var)])
    ref_w, ref_m, ref_v = keras_adam_numpy(w0, grads, dtype)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(var.numpy(), ref_w, rtol=2 * eps, atol=2 * eps)
    ((m, v),) = optim.moments(opt, [var])
    np.testing.assert_allclose(m, ref_m, rtol=2 * eps)
    np.testing.assert_allclose(v, ref_v, rtol=2 * eps)
    if dtype is np.float64:
        # With exact betas the update would differ by ~7e-6 of the step: the cast is real.
        exact_w, _, _ = keras_adam_numpy(w0, grads[:1], np.float64, beta_2=float(np.float32(0.999)))
        assert not np.allclose(exact_w, keras_adam_numpy(w0, grads[:1], np.float64)[0], rtol=0, atol=1e-12)


def _softmax_model(dtype: str):
    """Dense(5, softmax) with fixed weights; labels are each row's least likely class."""
    x = keras.Input((4,), dtype=dtype)
    out = keras.layers.Dense(5, activation="softmax", dtype=dtype)(x)
    model = keras.Model(x, out)
    rng = np.random.default_rng(0)
    model.layers[-1].set_weights([rng.normal(size=(4, 5)) * 10, np.zeros(5)])
    inputs = rng.normal(size=(3, 4))
    logits = inputs @ model.layers[-1].kernel.numpy()
    labels = np.argmin(logits, axis=1)
    exact = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))
    assert exact > 16.2  # beyond -log(1e-7): clipped probabilities could not give it
    return model, inputs.astype(dtype), labels, exact


def test_keras_loss_on_softmax_is_the_exact_cross_entropy_of_the_logits(floatx):
    floatx("float32")
    model, x, y, exact = _softmax_model("float32")
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def graph_loss(x):
        return loss_fn(y, model(x, training=True))

    assert float(loss_fn(y, model(x))) == pytest.approx(exact, rel=1e-5)
    assert float(graph_loss(x)) == pytest.approx(exact, rel=1e-5)


def test_float64_model_needs_float64_floatx_for_the_exact_loss(floatx):
    """Keras losses compute in floatx: a float64 softmax cast to float32 loses ``_keras_logits``
    and falls back to log(clip(p, 1e-7)). tf_impl.probes therefore sets floatx to the dtype."""
    floatx("float32")
    model, x, y, exact = _softmax_model("float64")
    clipped = float(keras.losses.SparseCategoricalCrossentropy()(y, model(x)))
    floatx("float64")
    recovered = float(keras.losses.SparseCategoricalCrossentropy()(y, model(x)))
    assert clipped <= 16.2 < exact
    assert recovered == pytest.approx(exact, rel=1e-12)


def test_isolated_stages_reproduce_the_chained_reference():
    """tf_impl.probes.stages: sub-models between probe points share the model's layers; fed the
    chained outputs they give the chained outputs again, and the isolated float32 pass of the
    own-error measurement agrees with the chained float32 reference (same dtype: exactly)."""
    from bench.spec import build_spec
    from bench.weights import random_bundle
    from tf_impl import probes

    spec = build_spec("resnet50", 10, 32, "global")
    twin = probes.Twin(spec, random_bundle(spec, seed=0), "float32")
    rng = np.random.default_rng(0)
    inputs = {"x": rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32), "y": np.array([1, 2])}
    arrays = probes.passes(twin, inputs, {"forward", "train", "grad"}, {}, lambda name: None)
    parts = probes.stages(twin)
    assert [p for p, _, _ in parts] == ["stem"] + [b.id for b in spec.blocks] + ["pool"]
    iso = probes.isolated(twin, inputs, arrays, {"forward", "train", "grad"})
    for point in ("stem", "2a", "3a", "5c", "pool", "logits"):
        np.testing.assert_allclose(iso[f"iso/{point}"], arrays[f"fwd/{point}"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(iso[f"triso/{point}"], arrays[f"train/{point}"], rtol=1e-4, atol=1e-4)
    # The isolated backward (fed the chained upstream gradients) gives the chained gradients.
    for key in ("conv1/kernel", "2a_conv_block_conv1/kernel", "fc1000/kernel"):
        ref = arrays[f"grad/{key}"]
        np.testing.assert_allclose(iso[f"gradiso/{key}"], ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    np.testing.assert_allclose(iso["dxiso/2b"], arrays["dtrain/2a"], rtol=1e-3,
                               atol=1e-3 * np.abs(arrays["dtrain/2a"]).max())
