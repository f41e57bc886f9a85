"""The spec's FLOPs and parameters against torch's own counters, for resnet50 and resnet50_c3;
and the C3 stage's residual units (``C3Stage.unit_branches``) against its forward.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (shapes only,
no arithmetic): it counts convolutions and matmuls as 2 x MACs and leaves out BN, ReLU, adds,
pooling and biases, the convention bench.spec states.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.spec import build_spec
from torch_impl import model as tm

CASES = [(model, size, pooling) for model in ("resnet50", "resnet50_c3")
         for size, pooling in ((224, "avg7"), (64, "global"))]


def counted(model_name: str, size: int, pooling: str):
    spec = build_spec(model_name, input_size=size, pooling=pooling)
    with torch.device("meta"):
        model = tm.build(spec).eval()
        x = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return spec, model, counter


@pytest.mark.parametrize("model_name,size,pooling", CASES)
def test_spec_flops_equal_torch_flop_counter(model_name, size, pooling):
    spec, model, counter = counted(model_name, size, pooling)
    assert counter.get_total_flops() == spec.forward_flops()
    # Layer by layer and block by block too: a wrong size in one place cannot hide in the total.
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    for name, flops in spec.layer_flops().items():
        assert per_module[f"{root}.{tm.module_name(spec.layer(name))}"] == flops, name
    for block in spec.blocks:
        assert per_module[f"{root}.blocks.{block.id}"] == spec.block_flops()[block.id], block.id


@pytest.mark.parametrize("model_name", ["resnet50", "resnet50_c3"])
def test_spec_params_equal_torch_count(model_name):
    spec = build_spec(model_name)
    with torch.device("meta"):
        model = tm.build(spec)
    assert tm.param_count(model) == spec.param_counts()
    # Every weighted module is a spec layer, reached by the one name mapping.
    paths = {tm.module_name(layer) for layer in spec.layers()}
    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)
    weighted = {path for path, module in model.named_modules() if isinstance(module, kinds)}
    assert weighted == paths


def test_c3_unit_branches_rebuild_the_stage():
    spec = build_spec("resnet50_c3", input_size=64, pooling="global")
    torch.manual_seed(0)
    stage = tm.C3Stage(spec.blocks[1]).eval()  # stage 3: strided entry, 4 units
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        out, units = stage.unit_branches(x)
        assert [name for name, _, _ in units] == [f"3_c3_block_m{i}" for i in range(4)]
        assert units[0][2].shape == (2, 256, 4, 4)  # shortcut of unit 0 = cv1(x): c_ = 256, stride 2
        h = torch.relu(units[-1][1] + units[-1][2])
        rebuilt = stage.cv3(torch.cat((h, stage.cv2(x)), dim=1))
        for (_, y, shortcut), (_, _, next_shortcut) in zip(units, units[1:]):
            assert torch.equal(torch.relu(y + shortcut), next_shortcut)  # each unit feeds the next
        torch.testing.assert_close(rebuilt, stage(x), rtol=0, atol=0)
        torch.testing.assert_close(out, stage(x), rtol=0, atol=0)  # the output of the same pass
        assert float(units[0][1].norm()) > 0 and not torch.equal(units[0][1], units[0][2])
