"""KerasAdam reproduces Keras 3.15's Adam (keras/src/optimizers/adam.py on the TF backend).

The reference here is Keras' formula written in numpy, operation for operation; the TF side of
the same formula is pinned against real Keras in tests/tf/test_tf_probes.py, and the two
optimizers meet on real gradients in tests/test_parity.py (the ``adam`` column).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_impl import optim


def keras_adam_numpy(w, grads, dtype, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Keras' Adam.update_step in numpy. ops.cast of a Python float goes through float32 on the
    TF backend, so the bias-correction powers use float32-rounded betas."""
    w = np.array(w, dtype=dtype)
    m, v = np.zeros_like(w), np.zeros_like(w)
    lr_t = dtype(lr)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, dtype=dtype)
        step = dtype(t)
        b1p = np.power(dtype(np.float32(beta_1)), step)
        b2p = np.power(dtype(np.float32(beta_2)), step)
        alpha = lr_t * np.sqrt(dtype(1) - b2p) / (dtype(1) - b1p)
        m = m + (g - m) * dtype(1 - beta_1)
        v = v + (np.square(g) - v) * dtype(1 - beta_2)
        w = w - (m * alpha) / (np.sqrt(v) + dtype(epsilon))
    return w, m, v


def run_torch(opt_config, w, grads, dtype):
    p = torch.nn.Parameter(torch.tensor(w, dtype=dtype))
    opt = optim.build(opt_config, [p])
    for g in grads:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return p.detach().numpy(), opt


@pytest.fixture
def problem():
    rng = np.random.default_rng(3)
    w = rng.normal(size=512)
    # Gradients from tiny (|g| << epsilon-hat, where the epsilon form matters) to large.
    grads = [rng.normal(size=512) * np.logspace(-9, 1, 512) for _ in range(5)]
    return w, grads


@pytest.mark.parametrize("np_dtype, torch_dtype", [(np.float32, torch.float32), (np.float64, torch.float64)])
def test_keras_adam_op_for_op_matches_keras_formula(problem, np_dtype, torch_dtype):
    """fused=False: every element within 2 ulps of itself (in practice identical)."""
    w, grads = problem
    ref_w, ref_m, ref_v = keras_adam_numpy(w, grads, np_dtype)
    got, opt = run_torch({"name": "adam", "fused": False}, w.astype(np_dtype), grads, torch_dtype)
    (p,) = opt.param_groups[0]["params"]
    m, v = optim.moments(opt, p)
    assert isinstance(opt, optim.KerasAdam) and not opt.fused and opt.iterations == 5
    eps = np.finfo(np_dtype).eps
    np.testing.assert_allclose(got, ref_w, rtol=2 * eps, atol=2 * eps)
    np.testing.assert_allclose(m.numpy(), ref_m, rtol=2 * eps, atol=0)
    np.testing.assert_allclose(v.numpy(), ref_v, rtol=2 * eps, atol=0)


@pytest.mark.parametrize("np_dtype, torch_dtype", [(np.float32, torch.float32), (np.float64, torch.float64)])
def test_keras_adam_fused_matches_keras_formula(problem, np_dtype, torch_dtype):
    """fused=True (the default): fused multiply-adds round differently, so elements near zero
    after cancellation (m = m + w (g - m)) move by a few ulps of the tensor's largest element;
    nothing moves further than 4 ulps of that scale, and the weights stay within 2 ulps."""
    w, grads = problem
    ref_w, ref_m, ref_v = keras_adam_numpy(w, grads, np_dtype)
    got, opt = run_torch({"name": "adam"}, w.astype(np_dtype), grads, torch_dtype)
    (p,) = opt.param_groups[0]["params"]
    m, v = optim.moments(opt, p)
    assert isinstance(opt, optim.KerasAdam) and opt.fused and opt.iterations == 5
    eps = np.finfo(np_dtype).eps
    np.testing.assert_allclose(got, ref_w, rtol=2 * eps, atol=2 * eps)
    for name, ours, ref in (("m", m.numpy(), ref_m), ("v", v.numpy(), ref_v)):
        scale_err = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
        assert scale_err <= 4 * eps, (name, scale_err / eps)
    # And it is not the op-for-op path in disguise: some moment element differs.
    assert not np.array_equal(m.numpy(), ref_m)


def test_torch_adam_differs_where_gradients_are_small(problem):
    """torch.optim.Adam (eps 1e-8 on the bias-corrected sqrt(v)) is a different update: it
    moves small-gradient weights much further than Keras (the adam-eps ablation)."""
    w, grads = problem
    grads = grads[:1]
    keras_w, _, _ = keras_adam_numpy(w, grads, np.float64)
    torch_w, _ = run_torch({"name": "torch-adam", "epsilon": 1e-8}, w, grads, torch.float64)
    small = np.abs(grads[0]) < 1e-7
    large = np.abs(grads[0]) > 0.5
    assert small.sum() > 10 and large.sum() > 10
    # Where |g| >> epsilon both take a step of ~lr (up to the float32-rounded betas of Keras'
    # bias correction: 7e-6 of the step); where |g| << epsilon-hat Keras barely moves.
    np.testing.assert_allclose(torch_w[large], keras_w[large], rtol=0, atol=3e-8)
    assert np.max(np.abs(torch_w[small] - keras_w[small])) > 1e-4


def test_no_constant_torch_eps_reproduces_keras(problem):
    """Keras' epsilon-hat equals torch's eps only as 1e-7 / sqrt(1 - beta_2**t), which changes
    every step: matched at step 1, torch drifts away from Keras at step 5."""
    w, grads = problem
    eps1 = 1e-7 / np.sqrt(1 - 0.999)
    one_keras, _, _ = keras_adam_numpy(w, grads[:1], np.float64)
    one_torch, _ = run_torch({"name": "torch-adam", "epsilon": eps1}, w, grads[:1], torch.float64)
    np.testing.assert_allclose(one_torch, one_keras, rtol=0, atol=2e-8)
    five_keras, _, _ = keras_adam_numpy(w, grads, np.float64)
    five_torch, _ = run_torch({"name": "torch-adam", "epsilon": eps1}, w, grads, torch.float64)
    assert np.max(np.abs(five_torch - five_keras)) > 1e-6


def test_state_dict_keeps_the_step_counter(problem):
    w, grads = problem
    _, opt = run_torch({"name": "adam"}, w, grads[:2], torch.float64)
    state = opt.state_dict()
    assert state["iterations"] == 2
    p = torch.nn.Parameter(torch.tensor(w))
    fresh = optim.KerasAdam([p])
    fresh.load_state_dict(state)
    assert fresh.iterations == 2
    assert torch.equal(fresh.moments(p)[0], opt.moments(opt.param_groups[0]["params"][0])[0])


def test_sgd_and_bad_names():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([1.0, -2.0, 0.5])
    opt = optim.build({"name": "sgd", "learning_rate": 0.1}, [p])
    opt.step()
    assert optim.moments(opt, p) is None
    np.testing.assert_allclose(p.detach().numpy(), [0.9, 1.2, 0.95], rtol=1e-7)
    from bench.errors import UserError
    with pytest.raises(UserError, match="unknown optimizer 'rmsprop'"):
        optim.build({"name": "rmsprop"}, [p])
