"""The torch-side parity switches: the backward-only BN ablations change gradients and nothing
else, and the aligned batch norm never takes their path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_impl import model as tm


def _bn(detach=()):
    torch.manual_seed(0)
    bn = tm.KerasBatchNorm2d(8, eps=1e-3, momentum=0.01, detach=detach).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def _run(bn, x, upstream):
    x = x.clone().requires_grad_(True)
    y = bn(x)
    y.backward(upstream)
    return y.detach(), x.grad, bn.weight.grad, bn.running_mean.clone(), bn.running_var.clone()


@pytest.mark.parametrize("detach, changes", [
    (("var",), ("dx",)), (("mean", "var"), ("dx",)), (("affine",), ("dgamma", "dbeta")),
])
def test_detached_batch_norm_keeps_forward_and_statistics_changes_gradients(detach, changes):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 5, 5, generator=g, dtype=torch.float64) * 3 + 1
    upstream = torch.randn(2, 8, 5, 5, generator=g, dtype=torch.float64)
    aligned, ablated = _bn(), _bn(detach)
    aligned.train(), ablated.train()
    y0, dx0, dg0, m0, v0 = _run(aligned, x, upstream)
    y1, dx1, dg1, m1, v1 = _run(ablated, x, upstream)
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)  # forward: the same function
    torch.testing.assert_close(m1, m0, rtol=1e-12, atol=1e-12)  # Keras' moving statistics too
    torch.testing.assert_close(v1, v0, rtol=1e-12, atol=1e-12)
    if "dx" in changes:
        assert (dx1 - dx0).norm() / dx0.norm() > 1e-2
    if "dgamma" in changes:
        assert dg1 is None and ablated.bias.grad is None and torch.allclose(dx1, dx0)


def test_aligned_batch_norm_has_no_detached_parts():
    spec_model = tm.build(__import__("bench.spec", fromlist=["build_spec"]).build_spec("resnet50", 10, 32, "global"))
    assert all(m.detach == () for m in spec_model.modules() if isinstance(m, tm.KerasBatchNorm2d))
    ablated = tm.build(spec_model.spec, tm.Alignment(bn_var_grad=False, bn_affine_grad=False))
    assert {m.detach for m in ablated.modules() if isinstance(m, tm.KerasBatchNorm2d)} == {("var", "affine")}


def test_eval_mode_detached_batch_norm_is_inference_batch_norm():
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    aligned, ablated = _bn().eval(), _bn(("var", "affine")).eval()
    with torch.no_grad():
        np.testing.assert_array_equal(ablated(x).numpy(), aligned(x).numpy())
